"""app.py's reader-study options and what they set up, without Gradio (so a bad worklist or
database is refused before the page is built). The page itself is :mod:`demo.review`."""
from __future__ import annotations

import argparse
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

from rrg_core.hub import resolve_weights
from rrg_core.reader_study import ReaderStudy, WorkItem, default_path, weights_identity, worklist


@dataclass
class ReviewSetup:
    """A fixed worklist, the study file, and the weights every draft of this server comes from."""

    items: list[WorkItem]
    study: ReaderStudy
    reviewer: str  # the default name on the page ("" = each reader types theirs)
    blinded: bool  # the page runs the blinded comparison instead of the error review
    weights: str  # name
    revision: str
    source: str  # where the worklist comes from, for the page


def add_arguments(parser: argparse.ArgumentParser) -> None:
    env = os.environ.get
    group = parser.add_argument_group("reader study (a Review page at /review)")
    group.add_argument("--review", metavar="STUDY_FOLDER|DATASET_DIR", default=env("RRG_REVIEW"),
                       help="serve a Review page over this worklist: a dataset folder in R2Gen layout (with --split) "
                            "or a folder of image files, one study each (env RRG_REVIEW)")
    group.add_argument("--split", default="test", choices=("train", "val", "test", "all"),
                       help="the dataset split to review (default test)")
    group.add_argument("--review-sample", type=int, metavar="N",
                       help="review N studies drawn at random (fixed seed: the same N for every reader)")
    group.add_argument("--reviewer", default=env("RRG_REVIEWER", ""), metavar="NAME",
                       help="the reader's name, filled in on the page (env RRG_REVIEWER)")
    group.add_argument("--review-db", default=env("RRG_REVIEW_DB"), metavar="PATH",
                       help=f"the reader-study SQLite file (env RRG_REVIEW_DB; default {default_path()})")
    group.add_argument("--blinded", action="store_true",
                       help="blinded comparison: the draft and the dataset's report side by side in random order")


def prepare(args: argparse.Namespace) -> ReviewSetup | None:
    """The reader study ``args`` ask for (None without --review); raises ValueError or
    FileNotFoundError with one sentence for a worklist or database that cannot be used."""
    if not args.review:
        return None
    items = worklist(args.review, args.split, sample=args.review_sample)
    if args.blinded and all(item.reference is None for item in items):
        raise ValueError(f"--blinded compares drafts with the dataset's reports, and {args.review} has none "
                         "(a folder of images)")
    folder = resolve_weights(args.weights)
    name, revision = weights_identity(folder, args.weights)
    path = Path(args.review_db) if args.review_db else default_path()
    try:
        study = ReaderStudy(path)
    except (sqlite3.Error, OSError) as err:
        raise ValueError(f"cannot use the reader-study file {path}: {err}") from None
    source = f"{args.review} ({args.split} split)" if items[0].reference is not None else str(args.review)
    return ReviewSetup(items, study, args.reviewer.strip(), args.blinded, name, revision, source)
