"""Publish a model folder to the Hugging Face Hub.

    python -m train.push_to_hub --folder runs/synthcxr-small/best --repo ORG/REPO [--revision BRANCH] [--private]

The folder is loaded first (config, tokenizer, index, every tensor checked), so broken
weights are never published; it must carry a model card (README.md, see train.model_card).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rrg_core.hub import push_folder
from rrg_core.pipeline import ReportPipeline


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Upload a REVTAF model folder to the Hugging Face Hub.")
    parser.add_argument("--folder", required=True)
    parser.add_argument("--repo", required=True, help="ORG/REPO")
    parser.add_argument("--revision", default=None, help="branch to push to (created if needed)")
    parser.add_argument("--private", action="store_true")
    parser.add_argument("--token", default=None, help="Hub token (default: the logged-in one)")
    parser.add_argument("--message", default="Upload REVTAF weights")
    args = parser.parse_args(argv)

    model = ReportPipeline.from_pretrained(args.folder).model  # raises ValueError on anything broken
    card = Path(args.folder) / "README.md"
    # save_pretrained writes a placeholder card; a release's card says what the weights were trained on.
    if not card.is_file() or "**Training data:**" not in card.read_text(encoding="utf-8"):
        sys.exit(f"{args.folder} has no model card naming its training data (README.md): "
                 "write one with train.model_card (train.release does) before publishing")
    if model.index is not None and model.index.texts is not None:
        print("note: the reference index holds report text; drop it (train.build_index --no-texts) "
              "if the data's licence forbids redistribution", file=sys.stderr)
    url = push_folder(args.folder, args.repo, revision=args.revision, private=args.private or None,
                      token=args.token, commit_message=args.message)
    print(url)
    return url


if __name__ == "__main__":
    main()
