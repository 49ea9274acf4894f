"""Command line (``rrg``, installed with the package, or ``python -m rrg_core``): draft reports for
X-ray files in a batch, label report texts, make phantoms, start the demo.

    rrg report FILE... [--weights ORG/REPO[@REV] | FOLDER] [--reference-data DIR]
                       [--json] [--beams N] [--max-length N] [--no-maps] [--state OBSERVATION=STATE ...]
    rrg label REPORTS.{json,csv} [--column report] [--id-column id]
    rrg review-export DB --out DIR [--bootstrap N] [--seed S]   (see rrg_core.reader_stats)
    rrg phantoms ...   (the options of python -m rrg_core.phantoms)
    rrg demo ...       (the options of python app.py; needs the demo extra: gradio)

Each file is one study (one view). With ``--json`` each file gives one line holding a JSON object
{"file", "report", "findings", "references", "overrides", "consistency", the input gate's fields
(rrg_core.outputs.Report.to_dict), "error"} (strict JSON: null for a non-finite number); otherwise a
short readable block. A file that cannot be read gets its ``error`` and the others still run: the
exit code is non-zero (2, with one sentence) only for bad options and weights that cannot be
loaded. Heatmaps are made at most ``MAX_MAP_SIDE`` pixels large, as in the demo; ``--no-maps``
skips them (the map sides come from the model's own resolution either way).
"""
from __future__ import annotations

import argparse
import csv
import json
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from .observations import OBSERVATIONS, STATE_NAMES, State
from .outputs import strict_json

TEXT_REFERENCES = 3
# Subcommands whose options their own parsers define.
FORWARDED = {
    "phantoms": "generate SynthCXR phantoms or a contact sheet (rrg phantoms --help)",
    "demo": "start the Gradio web demo, as python app.py does (rrg demo --help)",
}
# --no-maps: the maps are sampled at a single pixel (nothing to upsample) and dropped.
NO_MAP_SIDE = 1


def _positive_int(value: str) -> int:
    number = int(value)
    if number < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {number}")
    return number


def _state_override(value: str) -> tuple[str, str]:
    """'OBSERVATION=STATE', checked against the observations and states."""
    from .decisions import parse_overrides

    name, sep, state = value.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected OBSERVATION=STATE, e.g. 'Cardiomegaly=positive', got {value!r}")
    try:
        return next(iter(parse_overrides({name: state}).items()))
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rrg", description="REVTAF radiology report generation.")
    commands = parser.add_subparsers(dest="command", required=True)
    report = commands.add_parser("report", help="draft a report for each X-ray file (PNG, JPEG, TIFF, BMP, WebP, DICOM)")
    report.add_argument("files", nargs="+", metavar="FILE")
    report.add_argument("--weights", help="ORG/REPO[@REVISION] on the Hugging Face Hub or a local folder "
                                          "(default: the embedded SynthCXR weights)")
    report.add_argument("--reference-data", metavar="DIR", help="dataset folder that supplies the references' report texts")
    report.add_argument("--json", action="store_true", help="one JSON object per line and file")
    report.add_argument("--beams", type=_positive_int, help="beam size (default: the weights' config)")
    report.add_argument("--max-length", type=_positive_int, help="maximum new tokens (default: the weights' config)")
    report.add_argument("--state", action="append", default=[], type=_state_override, metavar="OBSERVATION=STATE",
                        help="draft as if OBSERVATION were STATE (positive | negative | uncertain | blank), e.g. "
                             "--state 'Pleural Effusion=positive'; repeatable; applies to every file")
    report.add_argument("--no-maps", dest="maps", action="store_false",
                        help="skip the attention maps (faster, less memory; the map sides, taken at the "
                             "model's own resolution, stay)")
    label = commands.add_parser("label", help="CheXpert-style labels of report texts, as CSV on stdout")
    label.add_argument("file", metavar="REPORTS", help="a CSV, a JSON list (of strings or objects), or an R2Gen "
                                                       "annotation.json")
    label.add_argument("--column", default="report", help="the field holding the report text")
    label.add_argument("--id-column", default="id", help="the field holding the id (default: row number)")
    export = commands.add_parser("review-export", help="a reader study's judgments as CSV, summary and figures")
    export.add_argument("db", metavar="DB", help="the reader-study SQLite file (app.py --review-db)")
    export.add_argument("--out", required=True, metavar="DIR", help="folder for the CSV, summary and figures")
    export.add_argument("--bootstrap", type=_positive_int, default=2000, help="bootstrap resamples (default 2000)")
    export.add_argument("--seed", type=int, default=0, help="bootstrap seed (default 0)")
    for name, summary in FORWARDED.items():  # listed here; main hands them their arguments
        commands.add_parser(name, help=summary, add_help=False)
    return parser


def read_reports(path: str, column: str, id_column: str) -> Iterator[tuple[str, str]]:
    """(id, text) pairs from a CSV, a JSON list, or an R2Gen-layout {split: [entries]} file."""
    source = Path(path)
    if source.suffix.lower() == ".csv":
        with source.open(newline="", encoding="utf-8") as f:
            rows = list(csv.DictReader(f))
    else:
        data = json.loads(source.read_text(encoding="utf-8"))
        rows = [e for entries in data.values() for e in entries] if isinstance(data, dict) else data
    for i, row in enumerate(rows):
        if isinstance(row, str):
            yield str(i), row
        elif column not in row:
            raise ValueError(f"{path}: row {i} has no {column!r} field (choose one with --column)")
        else:
            yield str(row.get(id_column, i)), row[column] or ""


def label_file(path: str, column: str, id_column: str, out=None) -> int:
    """Write id + the 14 observations (1, 0, -1, blank) as CSV; returns the number of reports."""
    from .labeler import label_report

    writer = csv.writer(out or sys.stdout)
    writer.writerow(["id", *OBSERVATIONS])
    n = 0
    for key, text in read_reports(path, column, id_column):
        labels = label_report(text)
        writer.writerow([key, *("" if labels[o] is None else labels[o] for o in OBSERVATIONS)])
        n += 1
    return n


def report_file(
    reporter, path: str, *, beams: int | None = None, max_length: int | None = None, maps: bool = True,
    states: dict | None = None,
) -> dict[str, Any]:
    """One file's record; an unreadable file gets ``error`` and empty results."""
    from .preprocessing import MAX_MAP_SIDE
    from .xray_io import UnreadableImage, read_xray

    try:
        xray = read_xray(path)
    except UnreadableImage as err:
        return {"file": path, "report": None, "findings": [], "references": [], "overrides": {}, "consistency": None,
                "error": str(err)}
    side = MAX_MAP_SIDE if maps else NO_MAP_SIDE
    report = reporter([xray], num_beams=beams, max_new_tokens=max_length, max_map_side=side, states=[states])[0]
    if not maps:
        report.attention = []
    return {"file": path, **report.to_dict(), "error": None}


def format_text(record: dict[str, Any]) -> str:
    """The readable form of one record."""
    lines = [record["file"]]
    if record["error"]:
        return "\n".join([*lines, f"  error: {record['error']}", ""])
    flagged = [f for f in record["findings"] if f["state"] in (STATE_NAMES[State.POSITIVE], STATE_NAMES[State.UNCERTAIN])]
    findings = "; ".join(
        f"{f['observation']} {f['state']} ("
        + ("set by the reader" if f.get("set_by") == "reader" else f"P(positive) {f['p_positive']:.2f}")
        + f"{_map_side(f['map_right_share'])})"
        for f in flagged
    )
    references = ", ".join(
        f"{r['study_id']} ({r['distance']:.4f}{', global prompt' if r['is_global_prompt'] else ''})"
        for r in record["references"][:TEXT_REFERENCES]
    )
    if record.get("out_of_distribution"):
        lines.append(f"  WARNING: {_gate_warning(record)}")
    lines += [
        f"  report: {record['report']}",
        f"  findings: {findings or 'none predicted positive or uncertain'}",
        f"  nearest references: {references or 'none'}",
        "",
    ]
    return "\n".join(lines)


def _gate_warning(record: dict[str, Any]) -> str:
    """Why the draft below should not be trusted (the input gate's verdict)."""
    if record["refusal"]:
        return record["refusal"].replace("no draft is shown", "the draft is meaningless")
    return (f"this image is unlike the images these weights were trained on ({record['trained_on']}; score "
            f"{record['ood_score']:.2f} > threshold {record['ood_threshold']:.2f}): the draft is not meaningful")


def _forwarded_main(command: str, parser: argparse.ArgumentParser) -> Callable[..., int]:
    """The main function of the phantom generator or of the demo; the demo is no part of rrg_core, so
    without it (or without gradio) the command ends with one sentence."""
    if command == "phantoms":
        from .phantoms.__main__ import main as phantoms_main

        return phantoms_main
    from importlib.util import find_spec

    missing = [name for name in ("gradio", "demo", "app") if find_spec(name) is None]
    if missing:
        parser.exit(2, f"{parser.prog}: error: {parser.prog} demo needs the web demo, which is not installed here "
                       f"({', '.join(missing)} missing): pip install 'rrg-core[demo]'\n")
    from app import main as demo_main

    return demo_main


def _map_side(right: float | None) -> str:
    """Where the finding's frontal map lies, to check the text's side against."""
    if right is None:
        return ""
    side, share = ("right", right) if right >= 0.5 else ("left", 1 - right)
    return f", map {100 * share:.0f} % on the patient's {side}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in FORWARDED:
        return _forwarded_main(argv[0], parser)(argv[1:], prog=f"{parser.prog} {argv[0]}")
    args = parser.parse_args(argv)
    if args.command == "label":
        try:
            label_file(args.file, args.column, args.id_column)
        except (OSError, ValueError, KeyError) as err:
            parser.error(str(err))
        return 0
    if args.command == "review-export":
        from .reader_stats import export, summary_markdown

        try:
            print(summary_markdown(export(args.db, args.out, n_boot=args.bootstrap, seed=args.seed)))
        except (OSError, ValueError) as err:
            parser.exit(2, f"{parser.prog}: error: {err}\n")
        return 0
    from .checkpoint import check_folder
    from .decisions import apply_overrides, coherent

    try:  # overrides that contradict each other whatever the model predicts are a usage error
        apply_overrides(coherent([State.BLANK] * len(OBSERVATIONS)), dict(args.state))
    except ValueError as err:
        parser.error(str(err))
    try:
        check_folder(args.weights)  # a broken folder is refused before torch is imported
    except ValueError as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")
    from .datasets import report_texts
    from .hub import WeightsUnavailable
    from .pipeline import load_pipeline

    try:
        texts = None
        if args.reference_data:
            texts = report_texts(args.reference_data)
        reporter = load_pipeline(args.weights, texts_from=texts)
    except (WeightsUnavailable, ValueError, FileNotFoundError) as err:
        parser.exit(2, f"{parser.prog}: error: {err}\n")  # one sentence, without the usage text of a bad option
    for path in args.files:
        record = report_file(reporter, path, beams=args.beams, max_length=args.max_length, maps=args.maps,
                             states=dict(args.state))
        line = json.dumps(strict_json(record), ensure_ascii=False, allow_nan=False) if args.json else format_text(record)
        print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
