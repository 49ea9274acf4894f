"""The report decoder's own cached beam search against transformers' ``generate``, and int8.

    python -m benchmarks.bench_decoder [--repeats 7] [--threads 1]   (from the repo root)

1. The committed default weights, one real film (assets/examples), beam 3 with the weights' own
   options: transformers' ``generate`` (what ReportDecoder.generate did before) against
   ReportDecoder.generate, which computes the memory's cross-attention keys/values once per study.
2. A paper-size decoder (12 layers, 768 wide, the paper preset's memory width; random weights, no
   Hub download), beam 3, exactly 100 new tokens: the same two, and the loop on the int8 copy
   (:func:`rrg_core.quantize.quantize_decoder`).

Medians of interleaved calls in one process, so machine load hits every variant alike; compare
the ratios. Also says whether each variant's texts equal transformers' (int8 changes the scores).
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from rrg_core.config import REVTAFConfig
from rrg_core.decoder import ReportDecoder
from rrg_core.pretrained import load_model
from rrg_core.quantize import quantize_decoder
from rrg_core.xray_io import read_xray
from tests.decoder_reference import decoder_inputs, transformers_generate

EXAMPLE = Path(__file__).resolve().parents[1] / "assets" / "examples" / "cardiomegaly.png"
PAPER_MEMORY_TOKENS = 98  # two fused 7 x 7 token sets of one 224-pixel view


def interleaved(variants: dict[str, Callable[[], list[list[str]]]], repeats: int) -> tuple[dict[str, float], dict]:
    """Median seconds per variant over ``repeats`` rounds (one call of each per round, after a
    warm-up round), and each variant's texts."""
    texts = {name: run() for name, run in variants.items()}
    times: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, run in variants.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}, texts


def report(title: str, medians: dict[str, float], texts: dict, reference: str) -> None:
    print(f"\n{title}\n| variant | median ms | speed-up vs {reference} | texts equal {reference}'s |\n| --- | --- | --- | --- |")
    for name, seconds in medians.items():
        print(f"| {name} | {seconds * 1000:.0f} | {medians[reference] / seconds:.2f}x | {texts[name] == texts[reference]} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = load_model().eval()
    decoder, c = model.decoder, model.config
    memory, states = decoder_inputs(model, [read_xray(EXAMPLE)])
    options = dict(num_beams=c.num_beams, max_new_tokens=c.max_new_tokens, min_new_tokens=c.min_new_tokens,
                   repetition_penalty=c.repetition_penalty, no_repeat_ngram_size=c.no_repeat_ngram_size)
    quantized = quantize_decoder(decoder)
    medians, texts = interleaved({
        "transformers generate": lambda: transformers_generate(decoder, memory, states, **options),
        "ReportDecoder.generate": lambda: decoder.generate(memory, states, **options),
        "ReportDecoder.generate, int8": lambda: quantized.generate(memory, states, **options),
    }, args.repeats)
    words = len(texts["ReportDecoder.generate"][0][0].split())
    report(f"Default weights, {EXAMPLE.name}, beam {c.num_beams}, memory {tuple(memory.shape[1:])}, best beam "
           f"{words} words, {args.threads} thread(s)", medians, texts, "transformers generate")

    paper = REVTAFConfig.preset("paper", decoder_hub_id=None, text_hub_id=None, backbone_hub_id=None,
                                vocab_size=len(decoder.tokenizer))
    big = ReportDecoder(paper, decoder.tokenizer).eval()
    memory = torch.randn(1, PAPER_MEMORY_TOKENS, paper.d_model)
    options = dict(num_beams=3, max_new_tokens=100, min_new_tokens=100)
    quantized = quantize_decoder(big)
    medians, texts = interleaved({
        "transformers generate": lambda: transformers_generate(big, memory, states, **options),
        "ReportDecoder.generate": lambda: big.generate(memory, states, **options),
        "ReportDecoder.generate, int8": lambda: quantized.generate(memory, states, **options),
    }, max(1, args.repeats // 2))
    report(f"Paper-size decoder ({paper.decoder_layers} layers, {paper.decoder_hidden} wide, vocabulary "
           f"{len(decoder.tokenizer)}, random weights), beam 3, 100 new tokens, memory ({PAPER_MEMORY_TOKENS}, "
           f"{paper.d_model}), {args.threads} thread(s)", medians, texts, "transformers generate")


if __name__ == "__main__":
    main()
