"""Time the SynthCXR generator on one core: phantoms (pixels, masks, report) and reports alone.

    python -m benchmarks.bench_phantoms [--n 300] [--size 256] [--seed 0]   (from the repo root)

The aim is >= 200 images/s at 256 px on one core, so a training loader can render
phantoms on the fly instead of reading them from disk.
"""
from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")  # numpy/scipy on one core, as in a loader worker

import numpy as np  # noqa: E402

from rrg_core.phantoms import PhantomConfig, make_phantom, sample_findings, write_report  # noqa: E402


def per_second(fn, n: int) -> float:
    """Calls per second of CPU time (process time), so other load on the machine does not count."""
    fn(-1)  # warm-up: grids and noise banks are built once per size
    start = time.process_time()
    for i in range(n):
        fn(i)
    return n / (time.process_time() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    config = PhantomConfig(size=args.size)

    images = per_second(lambda i: make_phantom(args.seed, i % 10**6, config), args.n)
    normal = PhantomConfig(size=args.size, prevalence={"No Finding": 1.0}, uncertain_rate=0.0)
    normals = per_second(lambda i: make_phantom(args.seed, i % 10**6, normal), args.n)

    def report(i: int) -> None:
        rng = np.random.default_rng([args.seed, i % 10**6])
        write_report(sample_findings(rng, config), rng)

    reports = per_second(report, 10 * args.n)
    print(f"size {args.size}px, one core (CPU time):")
    print(f"  phantoms (default prevalence): {images:7.1f} images/s  ({1000 / images:.2f} ms each)")
    print(f"  normal phantoms only:          {normals:7.1f} images/s")
    print(f"  reports only (no pixels):      {reports:7.0f} reports/s")


if __name__ == "__main__":
    main()
