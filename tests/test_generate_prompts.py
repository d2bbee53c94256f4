"""generate_prompts against a local stub of an OpenAI-compatible chat API (127.0.0.1, in a thread)."""
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from vmfcoop.datasets.prompt_bank import load_prompt_bank
from vmfcoop.tools import generate_prompts
from vmfcoop.tools.generate_prompts import ChatAPIError, chat_completion, parse_descriptions

ASK = re.compile(r"^Give (\d+) textual descriptions of visual discriminative features for distinct medical cases "
                 r"of (.+) found in (.+)\.$")


class StubChat:
    """Answers like a sloppy LLM: round 1 a numbered list with a preamble and duplicates, then JSON."""

    def __init__(self):
        self.requests = []
        self.fail_first_with = None

    def answer(self, body):
        count, classname, _ = ASK.match(body["messages"][-1]["content"]).groups()
        count = int(count)
        round_index = sum(1 for r in self.requests if classname in r["messages"][-1]["content"])
        if round_index == 1:
            lines = ["Here are the descriptions:"] + [f"{i + 1}. **{classname} finding {i % (count - 5)}.**"
                                                      for i in range(count)]
            return "\n".join(lines)
        start = 1000 * round_index
        return "```json\n" + json.dumps([f"{classname} finding {start + i}" for i in range(count)]) + "\n```"


@pytest.fixture
def stub():
    chat = StubChat()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            body["authorization"] = self.headers.get("Authorization")
            body["path"] = self.path
            chat.requests.append(body)
            if chat.fail_first_with and len(chat.requests) == 1:
                self.send_response(chat.fail_first_with)
                self.end_headers()
                self.wfile.write(b'{"error": "slow down"}')
                return
            reply = {"choices": [{"message": {"role": "assistant", "content": chat.answer(body)}}]}
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    chat.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    yield chat
    server.shutdown()
    server.server_close()


def test_generates_a_bank_of_distinct_descriptions(stub, tmp_path):
    out = tmp_path / "stub-model" / "BUSI.json"
    code = generate_prompts.main(["--dataset", "BUSI", "--n", "12", "--model", "stub-model", "--api-key", "sk-test",
                                  "--base-url", stub.base_url, "--out", str(out)])
    assert code == 0
    bank = json.loads(out.read_text())
    assert bank["dataset"] == "BUSI" and bank["modality"] == "breast ultrasound" and bank["generator"] == "stub-model"
    assert list(bank["prompts"]) == ["benign tumor", "malignant tumor", "normal scan"]
    for classname, items in bank["prompts"].items():
        assert len(items) == 12 and len(set(items)) == 12
        assert items[0] == f"{classname} finding 0." and "**" not in "".join(items)
    # round 1 yields 7 distinct; round 2 asks for the 5 missing ones and lists the earlier ones to avoid
    asks = [ASK.match(r["messages"][-1]["content"]).group(1, 2) for r in stub.requests]
    assert asks[:2] == [("12", "benign tumor"), ("5", "benign tumor")] and len(asks) == 6
    assert "benign tumor finding 6." in stub.requests[1]["messages"][0]["content"]
    assert stub.requests[0]["authorization"] == "Bearer sk-test" and stub.requests[0]["path"] == "/v1/chat/completions"
    assert not (tmp_path / "stub-model" / "BUSI.json.partial").exists()
    loaded = load_prompt_bank("BUSI", ["normal scan"], sources=(str(out),), n_prompts=12)
    assert loaded[str(out)]["normal scan"] == bank["prompts"]["normal scan"]


def test_resume_skips_finished_classes(stub, tmp_path):
    out = tmp_path / "BUSI.json"
    done = {"prompts": {"benign tumor": [f"kept {i}" for i in range(4)]}}
    (tmp_path / "BUSI.json.partial").write_text(json.dumps(done))
    generate_prompts.main(["--dataset", "BUSI", "--n", "4", "--model", "m", "--base-url", stub.base_url,
                           "--out", str(out)])
    bank = json.loads(out.read_text())
    assert bank["prompts"]["benign tumor"] == done["prompts"]["benign tumor"]
    assert all("benign tumor" not in r["messages"][-1]["content"] for r in stub.requests)


def test_rate_limit_is_retried(stub):
    stub.fail_first_with = 429
    messages = [{"role": "user", "content": "Give 6 textual descriptions of visual discriminative features for "
                                            "distinct medical cases of drusen found in retinal OCT."}]
    text = chat_completion(stub.base_url, "", "m", messages, backoff=0)
    assert len(parse_descriptions(text)) == 6 and len(stub.requests) == 2


def test_client_error_is_reported(stub):
    stub.fail_first_with = 401
    with pytest.raises(ChatAPIError, match="HTTP 401"):
        chat_completion(stub.base_url, "", "m", [{"role": "user", "content": "x"}], backoff=0)


def test_custom_dataset_needs_classnames_and_modality(tmp_path):
    with pytest.raises(SystemExit):
        generate_prompts.main(["--dataset", "MySet", "--model", "m", "--out", str(tmp_path / "x.json")])


@pytest.mark.parametrize("answer, expected", [
    ('["a", "b"]', ["a", "b"]),
    ("Sure!\n1. first one\n2) second one\n- third\n\nHope this helps.", ["first one", "second one", "third"]),
    ('1. "quoted item"', ["quoted item"]),
])
def test_parse_descriptions(answer, expected):
    assert parse_descriptions(answer) == expected
