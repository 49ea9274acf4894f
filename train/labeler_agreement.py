"""How well our labeler agrees with the CheXpert labeler on the IU X-Ray reports.

    python -m train.labeler_agreement [--data ../shared/data/iu_xray] [--split test] [--out FILE] [--disagreements N]

The reference labels are the CheXpert labeler's own output, with its systematic
errors, so disagreements are to be read, not minimised blindly. Prints a Markdown
table: positives on each side, precision/recall/F1 of positives per observation (the
clinical-efficacy view) and 4-state accuracy per observation.
"""
from __future__ import annotations

import argparse
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rrg_core.labeler import label_report
from rrg_core.metrics import clinical_efficacy
from rrg_core.observations import OBSERVATIONS, labels_to_states

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "iu_xray"

Labels = Mapping[str, int | None]


def labelled_reports(data: Path, split: str | None = None) -> list[tuple[str, Labels]]:
    """(report, reference labels) of every study in ``annotation.json`` (or in one split) that has labels."""
    annotation = json.loads((data / "annotation.json").read_text())
    if split is not None and split not in annotation:
        raise ValueError(f"no split {split!r} in {data / 'annotation.json'}; it has {', '.join(annotation)}")
    splits = annotation.values() if split is None else [annotation[split]]
    return [(e["report"], e["labels"]) for entries in splits for e in entries if e.get("labels")]


def agreement(references: Sequence[Labels], ours: Sequence[Labels]) -> dict[str, object]:
    """Positive-class P/R/F1 (``rrg_core.metrics``, reference = CheXpert) and 4-state accuracy."""
    ce = clinical_efficacy(references, ours)
    same = np.array([labels_to_states(r) for r in references]) == np.array([labels_to_states(o) for o in ours])
    return {
        "per_class": ce["per_class"],
        "ours_positives": {name: sum(o[name] == 1 for o in ours) for name in OBSERVATIONS},
        "micro": ce["micro"],
        "accuracy": dict(zip(OBSERVATIONS, same.mean(0).tolist())),
        "overall_accuracy": float(same.mean()),
        "n_reports": len(references),
    }


def markdown(result: Mapping[str, object]) -> str:
    """The agreement as a Markdown table, one row per observation and a total row."""
    rows = [
        f"Agreement with the CheXpert labeler on {result['n_reports']} IU X-Ray reports "
        "(positives: reference = CheXpert).",
        "",
        "| observation | positives (CheXpert) | positives (ours) | precision | recall | F1 | 4-state accuracy |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in OBSERVATIONS:
        c = result["per_class"][name]
        rows.append(
            f"| {name} | {c['support']} | {result['ours_positives'][name]} | {c['precision']:.3f} "
            f"| {c['recall']:.3f} | {c['f1']:.3f} | {result['accuracy'][name]:.3f} |"
        )
    m = result["micro"]
    rows.append(
        f"| **micro / overall** | | | {m['precision']:.3f} | {m['recall']:.3f} | {m['f1']:.3f} "
        f"| {result['overall_accuracy']:.3f} |"
    )
    return "\n".join(rows)


def disagreements(
    reports: Sequence[str], references: Sequence[Labels], ours: Sequence[Labels], n: int, seed: int = 0
) -> str:
    """``n`` disagreements drawn at random (one per report), as Markdown list items."""
    found = [
        (report, name, mine[name], ref[name])
        for report, ref, mine in zip(reports, references, ours)
        for name in OBSERVATIONS
        if mine[name] != ref[name]
    ]
    by_report = {report: item for report, *item in found}
    picked = random.Random(seed).sample(sorted(by_report), min(n, len(by_report)))
    lines = [f"{len(found)} disagreements in {len(by_report)} reports; {len(picked)} of them:", ""]
    for report in picked:
        name, mine, theirs = by_report[report]
        lines.append(f"- **{name}**: ours {mine}, CheXpert {theirs}: {report}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="IU X-Ray folder with annotation.json")
    parser.add_argument("--split", help="only this split of annotation.json (train, val, test); default all")
    parser.add_argument("--out", type=Path, help="also write the Markdown here")
    parser.add_argument("--disagreements", type=int, default=0, metavar="N", help="print N disagreements")
    parser.add_argument("--seed", type=int, default=0, help="which disagreements are drawn")
    args = parser.parse_args(argv)

    pairs = labelled_reports(args.data, args.split)
    reports = [report for report, _ in pairs]
    references = [labels for _, labels in pairs]
    ours = [label_report(report) for report in reports]
    text = markdown(agreement(references, ours))
    if args.disagreements:
        text += "\n\n" + disagreements(reports, references, ours, args.disagreements, args.seed)
    print(text)
    if args.out:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
