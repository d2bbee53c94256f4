"""Write a prompt bank for a dataset with any OpenAI-compatible chat API (``POST <base>/chat/completions``).

    python -m vmfcoop.tools.generate_prompts --dataset BTMRI --model gpt-4o --source gpt-4o
    python -m vmfcoop.tools.generate_prompts --dataset MySet --classnames "fatty liver" "healthy liver" \\
        --modality "liver MRI" --base-url http://localhost:8000/v1 --model qwen2.5-72b --out banks/MySet.json

Each class is asked the standard instruction ("Give N textual descriptions of visual discriminative
features for distinct medical cases of [CLASS] found in [MODALITY].") and asked again for the missing
ones until it has N distinct descriptions. Finished classes are kept in ``<out>.partial`` so an interrupted
run resumes; the bank is written atomically when every class is done.
Environment: OPENAI_API_KEY, OPENAI_BASE_URL (default https://api.openai.com/v1), VMFCOOP_LLM_MODEL.
"""
import argparse
import json
import os
import re
import sys
import time
import urllib.error
import urllib.request

from vmfcoop.datasets.prompt_bank import INSTRUCTION, PACKAGED_DIR
from vmfcoop.engine.utils import read_json, write_json

DEFAULT_BASE_URL = "https://api.openai.com/v1"
FORMAT_RULES = ("You write concise, visually specific descriptions for a medical image classifier. Answer with a "
                "JSON array of strings, one description per element, and nothing else.")
RETRYABLE_HTTP = {408, 409, 429, 500, 502, 503, 504}
ITEM_LINE = re.compile(r"^\s*(?:\d+\s*[.):\-]|[-*\u2022])\s+(.+?)\s*$")


class ChatAPIError(RuntimeError):
    pass


# ---------------------------------------------------------------- API

def chat_completion(base_url, api_key, model, messages, temperature=0.7, timeout=120, retries=4, backoff=2.0):
    """The assistant message text; retries rate limits and server errors with exponential backoff."""
    url = base_url.rstrip("/") + "/chat/completions"
    body = json.dumps({"model": model, "messages": messages, "temperature": temperature}).encode()
    headers = {"Content-Type": "application/json"}
    if api_key:
        headers["Authorization"] = f"Bearer {api_key}"
    for attempt in range(retries + 1):
        try:
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            with urllib.request.urlopen(request, timeout=timeout) as response:
                payload = json.loads(response.read().decode())
            return payload["choices"][0]["message"]["content"]
        except urllib.error.HTTPError as err:
            detail = err.read().decode(errors="replace")[:500]
            if err.code not in RETRYABLE_HTTP or attempt == retries:
                raise ChatAPIError(f"{url} answered HTTP {err.code}: {detail}") from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as err:
            if attempt == retries:
                raise ChatAPIError(f"Cannot reach {url}: {err}") from None
        except (KeyError, IndexError, TypeError, json.JSONDecodeError) as err:
            raise ChatAPIError(f"{url} returned an unexpected answer ({err!r}); is it OpenAI-compatible?") from None
        time.sleep(backoff * 2 ** attempt)


# ---------------------------------------------------------------- parsing

def strip_item(text):
    text = re.sub(r"^\*\*|\*\*$", "", text.strip()).strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'":
        text = text[1:-1]
    return text.strip()


def parse_json_list(text):
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return None
    try:
        value = json.loads(text[start:end + 1])
    except json.JSONDecodeError:
        return None
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return value
    return None


def parse_descriptions(text):
    """Descriptions from a JSON array, else from numbered or bulleted lines; preamble lines are ignored."""
    items = parse_json_list(text)
    if items is None:
        items = [match.group(1) for match in map(ITEM_LINE.match, text.splitlines()) if match]
    return [item for item in map(strip_item, items) if item]


def dedup_key(text):
    return re.sub(r"[\s.]+", " ", text.lower()).strip()


def merge_distinct(collected, new_items, limit):
    seen = {dedup_key(item) for item in collected}
    for item in new_items:
        if len(collected) >= limit:
            break
        if dedup_key(item) not in seen:
            seen.add(dedup_key(item))
            collected.append(item)
    return collected


# ---------------------------------------------------------------- generation

def request_messages(classname, modality, count, already):
    system = FORMAT_RULES
    if already:
        system += " Do not repeat or paraphrase any of these earlier descriptions:\n" + "\n".join(
            f"- {item}" for item in already)
    return [{"role": "system", "content": system},
            {"role": "user", "content": INSTRUCTION.format(n=count, classname=classname, modality=modality)}]


def describe_class(ask, classname, modality, n, max_rounds=8):
    """``n`` distinct descriptions of one class; ``ask(messages) -> text``."""
    collected = []
    for _ in range(max_rounds):
        missing = n - len(collected)
        merge_distinct(collected, parse_descriptions(ask(request_messages(classname, modality, missing, collected))), n)
        if len(collected) == n:
            return collected
    raise ChatAPIError(f"Only {len(collected)} distinct descriptions of {classname!r} after {max_rounds} requests.")


def generate_bank(dataset, classnames, modality, n, ask, generator, out_path, overwrite=False, log=print):
    partial_path = out_path + ".partial"
    done = {}
    if not overwrite:
        for previous in (out_path, partial_path):
            if os.path.isfile(previous):
                done.update(read_json(previous).get("prompts", {}))
    bank = {"dataset": dataset, "modality": modality, "generator": generator,
            "instruction": INSTRUCTION.format(n=n, classname="[CLASS]", modality="[MODALITY]"), "prompts": {}}
    for classname in classnames:
        if len(done.get(classname, [])) >= n:
            bank["prompts"][classname] = done[classname][:n]
            log(f"{classname}: kept {n} existing descriptions")
            continue
        bank["prompts"][classname] = describe_class(ask, classname, modality, n)
        write_json(bank, partial_path)
        log(f"{classname}: {n} descriptions")
    write_json(bank, out_path)
    if os.path.exists(partial_path):
        os.remove(partial_path)
    return bank


def dataset_defaults(name):
    """(class names, modality) declared by a registered dataset, or (None, "")."""
    import vmfcoop.datasets  # noqa: F401  (registers the datasets)
    from vmfcoop.engine.build import DATASET_REGISTRY

    if name not in DATASET_REGISTRY:
        return None, ""
    cls = DATASET_REGISTRY.get(name)
    return (list(cls.CLASSNAMES) if cls.CLASSNAMES else None), getattr(cls, "MODALITY", "")


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", required=True, help="dataset name (registry name or your own)")
    parser.add_argument("--classnames", nargs="+", help="class names in label order (default: the dataset's)")
    parser.add_argument("--modality", help="imaging modality, e.g. 'brain MRI' (default: the dataset's)")
    parser.add_argument("--n", type=int, default=50, help="descriptions per class")
    parser.add_argument("--model", default=os.environ.get("VMFCOOP_LLM_MODEL"), help="model name")
    parser.add_argument("--base-url", default=os.environ.get("OPENAI_BASE_URL", DEFAULT_BASE_URL),
                        help="API root including the version, e.g. https://api.openai.com/v1")
    parser.add_argument("--api-key", default=os.environ.get("OPENAI_API_KEY", ""))
    parser.add_argument("--temperature", type=float, default=0.7)
    parser.add_argument("--source", help="bank folder name (default: the model name)")
    parser.add_argument("--out", help="output JSON (default: datasets/prompts/<source>/<dataset>.json)")
    parser.add_argument("--overwrite", action="store_true", help="regenerate classes already in the output")
    args = parser.parse_args(argv)
    if not args.model:
        parser.error("--model (or VMFCOOP_LLM_MODEL) is required")
    default_classes, default_modality = dataset_defaults(args.dataset)
    args.classnames = args.classnames or default_classes
    args.modality = args.modality or default_modality
    if not args.classnames or not args.modality:
        parser.error(f"{args.dataset} declares no class names/modality: pass --classnames and --modality")
    source = args.source or re.sub(r"[^A-Za-z0-9._-]+", "-", args.model)
    args.out = args.out or os.path.join(PACKAGED_DIR, source, f"{args.dataset}.json")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)

    def ask(messages):
        return chat_completion(args.base_url, args.api_key, args.model, messages, args.temperature)

    try:
        generate_bank(args.dataset, args.classnames, args.modality, args.n, ask, args.model, args.out, args.overwrite)
    except ChatAPIError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"Wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
