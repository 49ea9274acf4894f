"""The data options the training, evaluation and benchmark scripts share: which R2Gen-layout folder,
which split of it, and whose report-text normalisation."""
from __future__ import annotations

import argparse

from rrg_core.datasets import SPLITS
from rrg_core.report_text import DATASETS


def add_data_options(parser: argparse.ArgumentParser, *, split: str, required: bool = True) -> None:
    """--data, --split (default ``split``) and --dataset."""
    parser.add_argument("--data", required=required, help="dataset folder in the R2Gen layout")
    parser.add_argument("--split", default=split, choices=[*SPLITS, "all"], help=f"its split (default {split})")
    parser.add_argument("--dataset", default=DATASETS[0], choices=DATASETS,
                        help=f"whose report-text normalisation (default {DATASETS[0]})")
