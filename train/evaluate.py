"""Evaluate weights on a dataset split and print a paper-shaped table.

    python -m train.evaluate --weights DIR_OR_HUB_ID --data DIR [--split test] [--limit N] --out results.json
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from rrg_core.datasets import load_split
from rrg_core.evaluation import evaluate
from rrg_core.metrics import markdown_table
from rrg_core.pipeline import ReportPipeline

from .options import add_data_options


def diagnosis_table(auroc: dict) -> str:
    """The diagnosis head's AUROC per observation, and their mean, as Markdown."""
    lines = ["| diagnosis head | positives | AUROC |", "| --- | ---: | ---: |"]
    for name, value in auroc["per_class"].items():
        lines.append(f"| {name} | {auroc['positives'][name]} | {'-' if value is None else f'{value:.3f}'} |")
    mean = "-" if auroc["mean"] is None else f"{auroc['mean']:.3f}"
    lines.append(f"| **mean** (>= {auroc['min_positives']} positives: {len(auroc['mean_over'])}) | | {mean} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description="Evaluate REVTAF weights (NLG, CE, retrieval, grounding).")
    parser.add_argument("--weights", default=None, help="model folder or ORG/REPO[@REV] (default: embedded)")
    add_data_options(parser, split="test")
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N studies only")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--beams", type=int, default=None, help="beam size (default: the model's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--out", default=None, help="write the results as JSON here")
    args = parser.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reporter = ReportPipeline.from_pretrained(args.weights, device=device)
    studies = load_split(args.data, args.split)[: args.limit]
    options = {"num_beams": args.beams} if args.beams else {}
    result = evaluate(reporter, studies, dataset=args.dataset, batch_size=args.batch_size, **options)
    result.update(weights=str(args.weights or "embedded default"), data=str(args.data), split=args.split, seed=args.seed)

    print(markdown_table({"this model": result["paper"]}))
    ce = result["ce"]
    print(f"\nCE F1 micro {ce['micro']['f1']:.3f}  macro {ce['macro']['f1']:.3f}  example {ce['example']['f1']:.3f}"
          f"  head {ce['head']['f1']:.3f}  tail {ce['tail']['f1']:.3f}")
    print("\n" + diagnosis_table(result["diagnosis"]["auroc"]))
    by_labeler = result["diagnosis"]["auroc_labeler"]
    print(f"(against our labeler on the reference text: mean {by_labeler['mean'] or float('nan'):.3f} "
          f"over {len(by_labeler['mean_over'])} findings)")
    r = result["retrieval"]
    a = result["abnormal_drafts"]
    print(f"abnormal drafts: {a['abnormal_drafted_abnormal']} of {a['abnormal']} abnormal studies, "
          f"{a['normal_drafted_abnormal']} of {a['normal']} normal ones")
    print(f"retrieval: mean Hamming {r['hamming']:.2f}, label-match P@1 {r['precision_at_1']:.3f}")
    if "grounding" in result:
        g = result["grounding"]["overall"]
        tolerant = result["grounding_15px"]["overall"]["pointing_game"]
        print(f"grounding: pointing game {g['pointing_game']:.3f} (within 15 px: {tolerant:.3f}), "
              f"IoU {g['iou']:.3f} over {g['n']} findings")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
