"""Do the drafts say what the findings say? Each part of rrg_core.faithful measured on real data.

    python -m benchmarks.bench_faithful --weights assets/weights/iu-xray-small --data ../shared/data/iu_xray --split test
    python -m benchmarks.bench_faithful --weights assets/weights/synthcxr --phantoms 300 --phantom-seed 7

One generation per study gives three texts: the decoder's best beam (what the drafts were
before), the beam rrg_core.faithful chose, and the repaired draft users get. For each it prints:

- table/text agreement: the share of (study, observation) pairs where "positive in the table"
  equals "positive in the text" by our labeler;
- BLEU-1..4, METEOR, ROUGE-L and CE micro/macro F1 against the reference reports;
- on phantoms, laterality: of the positive findings lying on one side (>= 90 % of the mask),
  the share whose text names that side only, among those the text calls positive;
- forced-state following on the first ``--forced`` studies: each of seven findings forced
  positive (the text must call it positive) and negative (it must not), per finding.
``--legacy-rule`` ignores the weights' decision.json (the argmax rule of the diagnosis head).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np
import torch

from rrg_core.evaluation import generate_for, table_text_agreement
from rrg_core.faithful import named_sides
from rrg_core.labeler import label_report
from rrg_core.metrics import clinical_efficacy, nlg_metrics
from rrg_core.phantoms import phantoms_or_split
from rrg_core.pipeline import ReportPipeline
from rrg_core.report_text import normalize_report, split_sentences, to_prose
from rrg_core.study_dataset import read_masks, study_loader
from train.options import add_data_options

FORCED = ("Cardiomegaly", "Pleural Effusion", "Pneumothorax", "Lung Opacity", "Atelectasis", "Edema", "Support Devices")
ONE_SIDED = 0.9  # a mask with at least this share on one side of the image lies on that side


def texts_of(reports) -> dict[str, list[str]]:
    """The three texts per study, as prose."""
    return {
        "decoder best beam": [to_prose(r.consistency.decoder_text) for r in reports],
        "chosen beam": [to_prose(r.consistency.chosen_text) for r in reports],
        "consistent draft": [r.text for r in reports],
    }


def laterality(studies, texts: list[str]) -> tuple[float, int, int]:
    """(share naming the mask's side only, findings named positive, one-sided findings)."""
    correct = named = total = 0
    for study, text in zip(studies, texts):
        for name, masks in read_masks(study).items():
            if study.labels.get(name) != 1 or not masks:
                continue
            union = np.logical_or.reduce(masks)
            columns = union.sum(0)
            right = columns[: len(columns) // 2].sum() / max(1, columns.sum())  # patient's right = image left
            if max(right, 1 - right) < ONE_SIDED:
                continue
            total += 1
            side = "right" if right >= 0.5 else "left"
            sentences = [s for s in split_sentences(text) if label_report(s)[name] == 1]
            sides = set().union(*map(named_sides, sentences)) if sentences else set()
            if sides:
                named += 1
                correct += sides == {side}
    return correct / max(1, named), named, total


@torch.no_grad()
def forced_following(reporter: ReportPipeline, studies, dataset: str) -> dict[str, dict[str, tuple[float, float]]]:
    """Per finding and forced state: (decoder best beam, consistent draft) share that follows."""
    hits = {o: {"positive": [0, 0], "negative": [0, 0]} for o in FORCED}
    variants = [(o, s) for o in FORCED for s in ("positive", "negative")]
    loader = study_loader(studies, reporter.config, reporter.model.tokenizer, dataset=dataset, batch_size=1)
    for batch in loader:
        images = batch["images"].expand(len(variants), *batch["images"].shape[1:])
        reports = reporter.generate(images, states=[{o: s} for o, s in variants])
        for (name, state), report in zip(variants, reports):
            for k, text in enumerate((report.consistency.decoder_text, report.text)):
                positive = label_report(text)[name] == 1
                hits[name][state][k] += positive if state == "positive" else not positive
    n = len(studies)
    return {o: {s: (v[0] / n, v[1] / n) for s, v in by_state.items()} for o, by_state in hits.items()}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", default=None)
    add_data_options(parser, split="test", required=False)
    parser.add_argument("--phantoms", type=int, default=0)
    parser.add_argument("--phantom-seed", type=int, default=7)
    parser.add_argument("--limit", type=int, default=None)
    parser.add_argument("--forced", type=int, default=30, help="studies for forced-state following (0: skip)")
    parser.add_argument("--legacy-rule", action="store_true", help="ignore decision.json")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None, help="also write the figures as JSON")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = ReportPipeline.from_pretrained(args.weights)
    if args.legacy_rule:
        model.decision = None

    with tempfile.TemporaryDirectory() as tmp:
        studies = phantoms_or_split(tmp, phantoms=args.phantoms, seed=args.phantom_seed, data=args.data,
                                    split=args.split)[0][: args.limit]
        references, reports, _ = generate_for(model, studies, dataset=args.dataset)
        reference_labels = [label_report(t) for t in references]
        result: dict = {"weights": str(args.weights or "embedded default"), "n": len(studies),
                        "decision": "argmax (legacy)" if model.decision is None else "thresholds (decision.json)",
                        "repaired": float(np.mean([bool(r.consistency.edits) for r in reports])), "texts": {}}
        for name, texts in texts_of(reports).items():
            labels = [label_report(t) for t in texts]
            ce = clinical_efficacy(reference_labels, labels)
            row = {
                "agreement": table_text_agreement([r.states for r in reports], labels),
                **nlg_metrics(references, [normalize_report(t, args.dataset) for t in texts]),
                "CE micro-F1": ce["micro"]["f1"], "CE macro-F1": ce["macro"]["f1"],
            }
            if args.phantoms:
                row["laterality"], row["sided findings named"], row["one-sided findings"] = laterality(studies, texts)
            result["texts"][name] = row
        if args.forced:
            result["forced"] = forced_following(model, studies[: args.forced], args.dataset)

    print(f"{result['weights']}: {result['n']} studies, decision by {result['decision']}, "
          f"{100 * result['repaired']:.0f} % of drafts edited by the consistency step")
    keys = list(next(iter(result["texts"].values())))
    print("| text | " + " | ".join(keys) + " |\n|---|" + "---|" * len(keys))
    for name, row in result["texts"].items():
        print(f"| {name} | " + " | ".join(f"{v:.3f}" if isinstance(v, float) else str(v) for v in row.values()) + " |")
    if args.forced:
        print(f"\nforced-state following on {args.forced} studies (decoder best beam -> consistent draft)")
        for name, by_state in result["forced"].items():
            print(f"  {name:18s} " + "  ".join(f"{s}: {a:.2f} -> {b:.2f}" for s, (a, b) in by_state.items()))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
