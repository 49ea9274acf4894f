"""Tune a weights folder's decision thresholds on validation data and write its decision.json.

    python -m train.fit_decisions --weights assets/weights/iu-xray-small --data ../shared/data/iu_xray --split val
    python -m train.fit_decisions --weights assets/weights/synthcxr --phantoms 300 --phantom-seed 11

Only the small sidecar is written, so thresholds can be (re)tuned without touching
``model.safetensors``. ``train.release`` does the same for a new run.
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

from rrg_core.evaluation import fit_decision_rule
from rrg_core.model import REVTAF
from rrg_core.phantoms import phantoms_or_split

from .options import add_data_options


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--weights", required=True, help="a local model folder (decision.json is written into it)")
    add_data_options(parser, split="val", required=False)
    parser.add_argument("--phantoms", type=int, default=0, help="or tune on N fresh SynthCXR phantoms")
    parser.add_argument("--phantom-seed", type=int, default=11,
                        help="their seed: neither the training seed (0) nor the evaluation seed (7)")
    args = parser.parse_args(argv)
    if bool(args.data) == bool(args.phantoms):
        parser.error("give either --data or --phantoms")

    folder = Path(args.weights)
    model = REVTAF.from_pretrained(folder)
    with tempfile.TemporaryDirectory() as tmp:
        studies, where = phantoms_or_split(tmp, phantoms=args.phantoms, seed=args.phantom_seed, data=args.data,
                                           split=args.split)
        rule = fit_decision_rule(model, studies, dataset=args.dataset, fitted_on=f"{where}, {len(studies)} studies")
    path = rule.save(folder)
    print(json.dumps(rule.thresholds, indent=2))
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
