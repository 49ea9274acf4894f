"""(Re)build a model folder's reference index from a dataset split.

    python -m train.build_index --weights DIR --data DIR [--split train] [--no-texts] [--out DIR]

Training already saves an index with the best weights; this is for re-indexing with other
data (e.g. a larger training set) or dropping the report text before publishing weights
trained on data whose reports may not be redistributed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from rrg_core.datasets import load_split
from rrg_core.indexing import build_index
from rrg_core.model import REVTAF
from rrg_core.study_dataset import study_loader

from .options import add_data_options


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description="Build the reference index of a model folder.")
    parser.add_argument("--weights", required=True, help="model folder (the index is written into it unless --out)")
    add_data_options(parser, split="train")
    parser.add_argument("--no-texts", action="store_true", help="store embeddings, labels and ids but no report text")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--out", default=None, help="write the index here instead of into the weights folder")
    args = parser.parse_args(argv)

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = REVTAF.from_pretrained(args.weights, device=device, load_index=False)  # the old index may be stale or outdated
    studies = load_split(args.data, args.split)
    batches = study_loader(studies, model.config, model.tokenizer, dataset=args.dataset, batch_size=args.batch_size)
    index = build_index(model, batches, keep_texts=not args.no_texts)
    out = Path(args.out or args.weights)
    index.save(out)
    texts = "kept" if index.texts else "dropped"
    print(f"indexed {len(index)} studies from {args.data} [{args.split}] into {out} (texts {texts})")
    return out


if __name__ == "__main__":
    main()
