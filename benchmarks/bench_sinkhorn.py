"""Time log_sinkhorn at the model's sizes: B=16 images, 4 heads, 49 or 98 patches, 32 prompts.

    python -m benchmarks.bench_sinkhorn [--threads 1] [--repeats 5] [--device cpu]   (from the repo root)

Two cost families: 1 - cosine of random 128-d vectors (costs bunched near 1, as at
initialisation) and costs spread uniformly over [0, 2] (peaked plans, as after training).
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rrg_core.sinkhorn import log_sinkhorn

BATCH, HEADS, PROMPTS, HEAD_DIM = 16, 4, 32, 128


def make_cost(kind: str, patches: int, device: torch.device) -> torch.Tensor:
    shape = (BATCH, HEADS, patches, PROMPTS)
    if kind == "uniform":
        return torch.rand(shape, device=device) * 2
    q = F.normalize(torch.randn(BATCH, HEADS, patches, HEAD_DIM, device=device), dim=-1)
    k = F.normalize(torch.randn(BATCH, HEADS, PROMPTS, HEAD_DIM, device=device), dim=-1)
    return 1 - q @ k.mT


def seconds_per_call(fn, repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - start) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} B={BATCH} heads={HEADS} M={PROMPTS} epsilon=0.05 tol=1e-3")
    print(f"{'cost':>8} {'N':>4} {'iters':>5} {'forward ms':>11} {'fwd+bwd ms':>11}")
    for kind in ("cosine", "uniform"):
        for patches in (49, 98):
            cost = make_cost(kind, patches, device)
            n_iter = log_sinkhorn(cost).n_iter
            with torch.no_grad():
                forward = seconds_per_call(lambda: log_sinkhorn(cost), args.repeats, device)
            leaf = cost.clone().requires_grad_()
            backward = seconds_per_call(lambda: log_sinkhorn(leaf).plan.square().sum().backward(), args.repeats, device)
            print(f"{kind:>8} {patches:>4} {n_iter:>5} {forward * 1e3:>11.2f} {backward * 1e3:>11.2f}")


if __name__ == "__main__":
    main()
