"""Parameter counts and CPU train-step / image warm-up step / generate times per preset, and what
the optional mask-supervised heatmap loss (``grounding_weight``) adds to a train step.

    python -m benchmarks.bench_model [--presets tiny small paper] [--batch 8] [--threads 2]

The paper preset is built with random weights and the same architecture (no Hub download):
ResNet-101, a 12-layer 768-wide text encoder and decoder, d_model 1024.
"""
from __future__ import annotations

import argparse
import time

import torch

from rrg_core.config import REVTAFConfig
from rrg_core.indexing import build_index
from rrg_core.model import REVTAF
from rrg_core.pipeline import ReportPipeline
from rrg_core.prompts import N_FINDING_PROMPTS
from rrg_core.tokenizer import train_tokenizer

TEXT = [
    "the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax .",
    "mild cardiomegaly . small left pleural effusion . no focal consolidation .",
]


def batch_for(config: REVTAFConfig, tokenizer, n: int) -> dict:
    reports = [TEXT[i % 2] for i in range(n)]
    enc = tokenizer(reports, add_special_tokens=False, padding=True, return_tensors="pt")
    states = torch.randint(0, 4, (n, 14))
    return {"images": torch.randn(n, config.vision.n_views, 1, config.vision.image_size, config.vision.image_size),
            "report_ids": enc["input_ids"], "report_mask": enc["attention_mask"], "states": states,
            "study_ids": [f"s{i}" for i in range(n)], "reports": reports}


def timed(fn, repeats: int = 2) -> float:
    fn()  # warm-up
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats


def preset_row(name: str, tokenizer, batch_size: int, max_tokens: int) -> str:
    """One preset's table row: its size, train-step times and generation time."""
    config = REVTAFConfig.preset(name, vision={"hub_id": None}, text={"hub_id": None}, retrieval={"top_k": 3},
                                 decoder={"hub_id": None, "vocab_size": len(tokenizer)})
    torch.manual_seed(0)
    model = REVTAF(config, tokenizer)
    batch = batch_for(config, tokenizer, batch_size)
    model.index = build_index(model, [batch])
    params = sum(p.numel() for p in model.parameters())
    masks = torch.zeros(batch_size, N_FINDING_PROMPTS, config.vision.image_size, config.vision.image_size)
    masks[..., : config.vision.image_size // 2, :] = 1  # every finding in the upper half

    def step(image_only: bool = False, grounded: bool = False):
        model.config = model.config.replace(fvtaf={"grounding_weight": float(grounded)})
        model.zero_grad()
        model({**batch, "masks": masks} if grounded else batch, image_only=image_only)["loss"].backward()

    repeats = {"paper": 1, "small": 3}.get(name, 10)
    train_s = timed(step, repeats)
    warmup_s = timed(lambda: step(image_only=True), repeats)
    grounded_s = timed(lambda: step(grounded=True), repeats)
    model.eval()
    tokens = min(max_tokens, config.decoder.max_report_tokens)
    reporter = ReportPipeline(model)
    gen_s = timed(lambda: reporter.generate(batch["images"], num_beams=3, min_new_tokens=tokens,
                                            max_new_tokens=tokens), repeats=1)
    return (f"| {name} | {params / 1e6:.1f} M | {train_s:.2f} s | {warmup_s:.2f} s | {train_s / warmup_s:.1f}x "
            f"| {grounded_s / train_s:.2f}x | {gen_s:.2f} s |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--presets", nargs="+", default=["tiny", "small", "paper"])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=60, help="generated tokens per report (forced)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    tokenizer = train_tokenizer(TEXT * 5, vocab_size=300, min_frequency=1)
    print(f"| preset | parameters | train step (fwd+bwd), batch {args.batch} | image warm-up step | full / warm-up "
          f"| with grounding loss / without | generate, batch {args.batch}, beam 3, {args.tokens} tokens |\n"
          "| --- | --- | --- | --- | --- | --- | --- |")
    for name in args.presets:
        print(preset_row(name, tokenizer, args.batch, args.tokens), flush=True)


if __name__ == "__main__":
    main()
