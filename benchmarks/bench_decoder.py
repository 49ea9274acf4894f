"""The report decoder's own cached beam search against transformers' ``generate``, and int8.

    python -m benchmarks.bench_decoder [--repeats 7] [--threads 1] [--quality 200]   (from the repo root)

1. The committed default weights, one real film (assets/examples), beam 3 with the weights' own
   options: transformers' ``generate`` (what ReportDecoder.generate did before) against
   ReportDecoder.generate, which computes the memory's cross-attention keys/values once per study.
2. The alternative design, per decoding step of 3 beams: transformers' own forward with an
   encoder-decoder cache whose cross-attention part is computed once and shared by the beams (an
   expanded view, possible for one study only) and whose self-attention part is reordered, against
   :class:`rrg_core.cached_bert.CachedBert` with its self-attention cache reordered the same way.
3. A paper-size decoder (12 layers, 768 wide, the paper preset's memory width; random weights, no
   Hub download), beam 3, exactly 100 new tokens: transformers' ``generate`` and the loop, each on
   the float model and on its int8 copy (:func:`rrg_core.quantize.quantize_decoder`).
4. ``--quality N`` (off by default): what int8 costs in quality. The committed IU X-Ray weights on
   the first N test studies of ../shared/data/iu_xray, evaluated with the float decoder and with
   its int8 copy (the user's consistent drafts, the weights' own options): BLEU-4, METEOR and
   clinical efficacy F1 against the reference reports, and how many drafts are identical.

Medians of interleaved calls in one process, so machine load hits every variant alike; compare
the ratios. Also says whether each variant's texts equal transformers' (int8 changes the scores).
"""
from __future__ import annotations

import argparse
from dataclasses import asdict
from pathlib import Path

import torch
from torch import Tensor
from transformers import DynamicCache, EncoderDecoderCache

from benchmarks.timing import interleaved
from rrg_core.cached_bert import CachedBert
from rrg_core.config import REVTAFConfig
from rrg_core.datasets import load_split
from rrg_core.decoder import ReportDecoder
from rrg_core.evaluation import evaluate
from rrg_core.model import load_model
from rrg_core.pipeline import load_pipeline
from rrg_core.quantize import quantize_decoder
from rrg_core.xray_io import read_xray
from tests.decoder_reference import decoder_inputs, transformers_generate

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "assets" / "examples" / "cardiomegaly.png"
IU_XRAY = ROOT.parent / "shared" / "data" / "iu_xray"
PAPER_MEMORY_TOKENS = 98  # two fused 7 x 7 token sets of one 224-pixel view


def report(title: str, medians: dict[str, float], texts: dict | None = None) -> None:
    """A markdown table of the medians, with speed-ups (and text equality) against the first variant."""
    reference = next(iter(medians))
    same = f" texts equal {reference}'s |" if texts else ""
    print(f"\n{title}\n| variant | median ms | speed-up vs {reference} |{same}\n| --- | --- | --- |{' --- |' * bool(texts)}")
    for name, seconds in medians.items():
        same = f" {texts[name] == texts[reference]} |" if texts else ""
        print(f"| {name} | {seconds * 1000:.1f} | {medians[reference] / seconds:.2f}x |{same}")


def step_variants(decoder: ReportDecoder, memory: Tensor, states: Tensor, steps: int) -> dict:
    """The prompt and ``steps`` decoding steps of 3 beams, reordered after each step, through
    transformers' forward with a shared cross-attention cache and through CachedBert."""
    prompt = decoder.prefix(states).expand(3, -1)
    hidden = decoder.memory_projection(memory).expand(3, -1, -1)
    tokens = torch.randint(5, len(decoder.tokenizer), (steps, 3, 1))
    reorder = torch.tensor([0, 0, 1])
    model = CachedBert(decoder.bert)

    def transformers_steps() -> None:
        config = decoder.bert.config
        cache = EncoderDecoderCache(DynamicCache(config=config), DynamicCache(config=config))
        decoder.bert(input_ids=prompt, encoder_hidden_states=hidden, cache=cache)
        for layer in cache.cross_attention_cache.layers:  # one study: its beams share one copy
            layer.keys, layer.values = layer.keys[:1].expand_as(layer.keys), layer.values[:1].expand_as(layer.values)
        for step in tokens:
            decoder.bert(input_ids=step, encoder_hidden_states=hidden, cache=cache)
            cache.self_attention_cache.reorder_cache(reorder)

    def cached_bert_steps() -> None:
        keys_values = model.memory_keys_values(decoder.memory_projection(memory))
        _, cache = model.forward(prompt, keys_values, None)
        for step in tokens:
            hidden_states, cache = model.forward(step, keys_values, cache)
            model.logits(hidden_states[:, -1])
            cache.select(reorder)

    return {"transformers forward, shared cross cache": transformers_steps, "CachedBert.forward": cached_bert_steps}


def int8_quality(n: int) -> None:
    """Float against int8 decoder of the IU weights on the first ``n`` IU X-Ray test studies."""
    reporter = load_pipeline(ROOT / "assets" / "weights" / "iu-xray-small")
    studies = load_split(IU_XRAY, "test")[:n]
    results = {"float": evaluate(reporter, studies, progress=False, samples=n)}
    reporter.model.decoder = quantize_decoder(reporter.model.decoder)
    results["int8"] = evaluate(reporter, studies, progress=False, samples=n)
    same = sum(a["generated"] == b["generated"] for a, b in zip(results["float"]["samples"], results["int8"]["samples"]))
    print(f"\nIU X-Ray weights, {len(studies)} IU test studies: {same} of {len(studies)} drafts identical\n"
          "| decoder | BLEU-4 | METEOR | CE F1 (example) | CE F1 (micro) |\n| --- | --- | --- | --- | --- |")
    for name, r in results.items():
        print(f"| {name} | {r['nlg']['BLEU_4']:.4f} | {r['nlg']['METEOR']:.4f} | {r['ce']['example']['f1']:.4f} "
              f"| {r['ce']['micro']['f1']:.4f} |")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--quality", type=int, default=0, metavar="N", help="IU test studies for int8 vs float quality")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    model = load_model().eval()
    decoder = model.decoder
    memory, states = decoder_inputs(model, [read_xray(EXAMPLE)])
    options = asdict(model.config.generation)
    quantized = quantize_decoder(decoder)
    medians, texts = interleaved({
        "transformers generate": lambda: transformers_generate(decoder, memory, states, **options),
        "ReportDecoder.generate": lambda: decoder.generate(memory, states, **options),
        "ReportDecoder.generate, int8": lambda: quantized.generate(memory, states, **options),
    }, args.repeats)
    words, beams = len(texts["ReportDecoder.generate"][0][0].split()), options["num_beams"]
    report(f"Default weights, {EXAMPLE.name}, beam {beams}, memory {tuple(memory.shape[1:])}, best beam "
           f"{words} words, {args.threads} thread(s)", medians, texts)

    with torch.no_grad():
        medians = interleaved(step_variants(decoder, memory, states, steps=words + 1), args.repeats)[0]
    report(f"The prompt and {words + 1} decoding steps of 3 beams, default weights", medians)

    paper = REVTAFConfig.preset("paper", decoder={"hub_id": None}, text={"hub_id": None}, vision={"hub_id": None})
    big = ReportDecoder(paper, decoder.tokenizer).eval()
    memory = torch.randn(1, PAPER_MEMORY_TOKENS, paper.d_model)
    options = dict(num_beams=3, max_new_tokens=100, min_new_tokens=100)
    quantized = quantize_decoder(big)
    medians, texts = interleaved({
        "transformers generate": lambda: transformers_generate(big, memory, states, **options),
        "ReportDecoder.generate": lambda: big.generate(memory, states, **options),
        "transformers generate, int8": lambda: transformers_generate(quantized, memory, states, **options),
        "ReportDecoder.generate, int8": lambda: quantized.generate(memory, states, **options),
    }, max(1, args.repeats // 2))
    report(f"Paper-size decoder ({paper.decoder.layers} layers, {paper.decoder.hidden} wide, vocabulary "
           f"{len(decoder.tokenizer)}, random weights), beam 3, 100 new tokens, memory ({PAPER_MEMORY_TOKENS}, "
           f"{paper.d_model}), {args.threads} thread(s)", medians, texts)
    if args.quality:
        int8_quality(args.quality)


if __name__ == "__main__":
    main()
