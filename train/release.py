"""Turn a training run into a shippable weights folder: evaluated, carded, compact.

    python -m train.release --run runs/synthcxr-small --out assets/weights/synthcxr \
        --eval-phantoms 300 --eval-seed 7 --half --title "..." --training-data "..." --license apache-2.0 \
        --trained-on "synthetic phantoms"

Loads ``RUN/best``, evaluates it (on fresh SynthCXR phantoms of another seed, or on a
dataset split), saves it (float16 weights with --half; the index without report text with
--no-texts), writes the model card with the measured metrics and the commands, and fits the
input gate and the calibration (``train.fit_gate``: on fresh phantoms of seeds 11 and 12 for
phantom-trained weights, else on the dataset's train and val splits; measured on the evaluation
set).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rrg_core.datasets import load_split
from rrg_core.evaluation import evaluate, fit_decision_rule
from rrg_core.phantoms import phantoms_or_split
from rrg_core.pipeline import ReportPipeline

from .config import TrainConfig
from .fit import resolve_data
from .fit_gate import build_parser as gate_parser
from .fit_gate import fit_gate
from .model_card import write_model_card


def headline(result: dict) -> dict[str, float]:
    """The numbers a model card shows."""
    out = {k: v for k, v in result["paper"].items()}
    out["CE micro-F1"] = result["ce"]["micro"]["f1"]
    out["CE macro-F1"] = result["ce"]["macro"]["f1"]
    auroc = result["diagnosis"]["auroc"]
    if auroc["mean"] is not None:
        out[f"diagnosis AUROC (mean over findings with >= {auroc['min_positives']} positives)"] = auroc["mean"]
    drafts = result["abnormal_drafts"]
    out["abnormal studies drafted abnormal"] = f"{drafts['abnormal_drafted_abnormal']} of {drafts['abnormal']}"
    out["normal studies drafted abnormal"] = f"{drafts['normal_drafted_abnormal']} of {drafts['normal']}"
    out["retrieval label-match P@1"] = result["retrieval"]["precision_at_1"]
    if "grounding" in result:
        out["pointing game"] = result["grounding"]["overall"]["pointing_game"]
        out["pointing game, 15 px tolerance"] = result["grounding_15px"]["overall"]["pointing_game"]
        out["grounding IoU"] = result["grounding"]["overall"]["iou"]
    out["evaluated studies"] = result["n"]
    return out


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--run", required=True, help="a train.fit run folder (with best/ and train_config.json)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--eval-phantoms", type=int, default=0, help="evaluate on N fresh SynthCXR phantoms")
    parser.add_argument("--eval-seed", type=int, default=7, help="their seed (not the training seed)")
    parser.add_argument("--eval-data", default=None, help="or evaluate on this dataset folder")
    parser.add_argument("--eval-split", default="test")
    parser.add_argument("--half", action="store_true", help="store float16 weights")
    parser.add_argument("--no-texts", action="store_true", help="drop report text from the reference index")
    parser.add_argument("--title", required=True)
    parser.add_argument("--training-data", required=True, help="one line: what it was trained on")
    parser.add_argument("--license", default="apache-2.0")
    parser.add_argument("--notes", default="")
    parser.add_argument("--trained-on", required=True,
                        help='what the input gate tells users these weights saw, e.g. "synthetic phantoms"')
    args = parser.parse_args(argv)

    run = Path(args.run)
    train_config = json.loads((run / "train_config.json").read_text())
    reporter = ReportPipeline.from_pretrained(run / "best")
    model = reporter.model
    if args.no_texts and model.index is not None:
        model.index.texts = None
    # Tune each observation's decision threshold on the run's validation split (decision.json).
    val = load_split(resolve_data(TrainConfig.from_dict(train_config)), "val")[: train_config.get("max_val_studies")]
    reporter.decision = fit_decision_rule(model, val, dataset=train_config["dataset"],
                                          fitted_on=f"the validation split of {run} ({len(val)} studies)")
    print("decision thresholds:", json.dumps(reporter.decision.thresholds))
    out = Path(args.out)
    if args.half:
        model.half()  # a file half the size; loading restores float32
    reporter.save_pretrained(out)
    # Evaluate what was saved (float16 weights included), so train.evaluate reproduces it.
    reporter = ReportPipeline.from_pretrained(out)
    with tempfile.TemporaryDirectory() as tmp:
        studies, where = phantoms_or_split(tmp, phantoms=args.eval_phantoms, seed=args.eval_seed,
                                           data=args.eval_data, split=args.eval_split)
        result = evaluate(reporter, studies, dataset=train_config["dataset"])
    if args.no_texts:  # the samples quote reference reports, which may not be redistributed either
        result.pop("samples", None)
    (out / "eval_results.json").write_text(json.dumps({**result, "evaluated_on": where}, indent=2))
    # Runs from before TrainConfig.origin: assume the config was named after the run folder.
    origin = train_config.get("origin") or f"--config {Path(train_config.get('out_dir', run.name)).name}"
    command = (
        f"python -m train.fit {origin}\n"
        f"python -m train.release --run {run} --out {out} "
        + (f"--eval-phantoms {args.eval_phantoms} --eval-seed {args.eval_seed} " if args.eval_phantoms
           else f"--eval-data {args.eval_data} --eval-split {args.eval_split} ")
        + ("--half " if args.half else "") + ("--no-texts " if args.no_texts else "")
        + f'--title "{args.title}" --training-data "{args.training_data}" --license {args.license} '
        + f'--trained-on "{args.trained_on}"'
    )
    write_model_card(
        out,
        title=args.title,
        training_data=args.training_data,
        license=args.license,
        command=command,
        metrics={**headline(result), "evaluated on": where},
        training_time=_training_time(run),
        notes=args.notes,
    )
    print(json.dumps(headline(result), indent=2))
    gate = _gate_arguments(args, train_config)
    print(json.dumps(fit_gate(reporter.model, out, gate_parser().parse_args(gate)), indent=2))
    return out


def _gate_arguments(args: argparse.Namespace, train_config: dict) -> list[str]:
    """train.fit_gate's arguments for this release: the in-distribution data the run was trained
    on (fresh phantoms, or the dataset's train/val splits) and the evaluation set as test set."""
    gate = ["--weights", args.out, "--trained-on", args.trained_on]
    if train_config.get("data") == "synthcxr":
        gate += ["--phantoms", "600"]
    else:
        gate += ["--data", str(resolve_data(TrainConfig.from_dict(train_config)))]
    if args.eval_phantoms:
        gate += ["--test-phantoms", str(args.eval_phantoms), "--test-seed", str(args.eval_seed)]
    elif args.eval_split == "test":
        gate += ["--test-data", args.eval_data]
    return gate


def _training_time(run: Path) -> str | None:
    """Wall time and epochs of the run, from its validation log."""
    log = run / "val.csv"
    if not log.is_file():
        return None
    rows = [line.split(",") for line in log.read_text().splitlines()]
    header, last = rows[0], rows[-1]
    seconds = float(last[header.index("elapsed_s")])
    return f"{seconds / 60:.0f} min for {last[header.index('epoch')]} epochs on the training machine"

if __name__ == "__main__":
    main()
