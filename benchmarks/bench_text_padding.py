"""Text-encoder cost of padding prompts to the tokenizer's context length vs trimming them.

Runs one CoOp-style step (forward of C class prompts with learned context spliced in, backward
into the context only) on the real-size architecture with random weights; speed does not depend
on the weight values. Each repetition times the trimmed and the padded step back to back, so both
see the same machine load, and the ratio of the medians is printed.

    python benchmarks/bench_text_padding.py [--backbone BiomedCLIP] [--classes 4] [--repeats 5]
"""
import argparse
import statistics
import time

import torch
from vmfcoop.clip_backbones import build_backbone

CLASSNAMES = [
    "glioma tumor", "meningioma tumor", "no tumor", "pituitary tumor", "benign", "malignant",
    "normal", "covid", "lung opacity", "viral pneumonia", "cyst", "kidney stone", "melanoma",
    "basal cell carcinoma", "actinic keratoses", "dermatofibroma",
]


def coop_step_seconds(backbone, ids, mask, ctx, trim):
    """Wall time of forward + backward with ``ctx`` spliced after the start token."""
    start = time.perf_counter()
    embeds = backbone.token_embedding(ids)
    n_ctx = ctx.shape[0]
    prompts = torch.cat([embeds[:, :1], ctx.expand(len(ids), -1, -1), embeds[:, 1 + n_ctx:]], dim=1)
    features = backbone.encode_prompt(prompts, mask, trim=trim)
    features.square().sum().backward()
    ctx.grad = None
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="BiomedCLIP")
    parser.add_argument("--classes", type=int, default=4, help=f"prompts per step (<= {len(CLASSNAMES)})")
    parser.add_argument("--n-ctx", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    backbone = build_backbone(args.backbone, pretrained=False)
    prompts = [" ".join(["X"] * args.n_ctx) + f" {name}." for name in CLASSNAMES[: args.classes]]
    ids, mask = backbone.tokenize(prompts)
    padding = backbone.context_length - ids.shape[1]
    padded_ids = torch.nn.functional.pad(ids, (0, padding), value=backbone.pad_token_id)
    padded_mask = torch.nn.functional.pad(mask, (0, padding), value=0)
    ctx = (torch.randn(args.n_ctx, backbone.ctx_dim) * 0.02).requires_grad_()

    coop_step_seconds(backbone, ids, mask, ctx, trim=True)  # warm-up: allocator, lazy kernels
    coop_step_seconds(backbone, padded_ids, padded_mask, ctx, trim=False)
    trimmed, padded = [], []
    for _ in range(args.repeats):
        trimmed.append(coop_step_seconds(backbone, ids, mask, ctx, trim=True))
        padded.append(coop_step_seconds(backbone, padded_ids, padded_mask, ctx, trim=False))

    t_trim, t_pad = statistics.median(trimmed), statistics.median(padded)
    print(f"{args.backbone} text encoder (random weights), {args.classes} prompts, {args.n_ctx} context "
          f"vectors, forward+backward, {args.threads} threads, median of {args.repeats}")
    print(f"  trimmed to L={ids.shape[1]:<4d} {t_trim * 1000:8.1f} ms")
    print(f"  padded to  L={padded_ids.shape[1]:<4d} {t_pad * 1000:8.1f} ms")
    print(f"  padded / trimmed: {t_pad / t_trim:.1f}x")


if __name__ == "__main__":
    main()
