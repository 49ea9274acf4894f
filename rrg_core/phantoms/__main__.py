"""python -m rrg_core.phantoms --out DIR --n N --seed S [--size 256] [--dicom] [--workers W]
                             [--contact-sheet FILE.png [--per-finding]]"""
from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence

from .config import PhantomConfig
from .dataset import write_dataset
from .sheet import contact_sheet


def main(argv: Sequence[str] | None = None, prog: str = "python -m rrg_core.phantoms") -> int:
    parser = argparse.ArgumentParser(
        prog=prog, description="Generate SynthCXR phantoms (R2Gen layout) or a contact sheet."
    )
    parser.add_argument("--out", help="dataset directory to write")
    parser.add_argument("--n", type=int, default=16, help="number of phantoms (default 16)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (default 256)")
    parser.add_argument("--dicom", action="store_true", help="also write dicom/<id>.dcm")
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--contact-sheet", metavar="FILE.png", help="render a grid of phantoms with mask outlines")
    parser.add_argument("--per-finding", action="store_true",
                        help="contact sheet: each observation on the same patient, without and with it")
    args = parser.parse_args(argv)
    if not args.out and not args.contact_sheet:
        parser.error("nothing to do: give --out and/or --contact-sheet")
    if args.n < 1 or args.workers < 1:
        parser.error("--n and --workers must be at least 1")
    config = PhantomConfig(size=args.size)
    if args.out:
        start = time.perf_counter()
        root = write_dataset(args.out, args.n, args.seed, size=args.size, dicom=args.dicom, config=config,
                             workers=args.workers)
        print(f"wrote {args.n} phantoms to {root} in {time.perf_counter() - start:.1f} s")
    if args.contact_sheet:
        path = contact_sheet(args.contact_sheet, args.seed, n=args.n, per_finding=args.per_finding, config=config)
        print(f"wrote contact sheet {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
