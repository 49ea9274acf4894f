"""Time log_sinkhorn at the model's sizes: B=16 images, 4 heads, 256-1,600 patches, 34 prompts.

    python -m benchmarks.bench_sinkhorn [--threads 1] [--repeats 5] [--device cpu]   (from the repo root)

Three cost families: 1 - cosine of random 128-d vectors (costs bunched near 1, as at
initialisation), of random 8-d vectors (structured costs that converge slowly, like a trained
model's: the default's region costs need about 20 / 40 / 70 iterations at the three
tolerances below) and costs spread uniformly over [0, 2].
Each at the model's default relative tolerance (1e-2), at 1e-3, and at N * 1e-3: the
relative form of the absolute 1e-3 that the committed weights were trained with.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from rrg_core.sinkhorn import log_sinkhorn

BATCH, HEADS, PROMPTS = 16, 4, 34


def make_cost(kind: str, patches: int, device: torch.device) -> torch.Tensor:
    if kind == "uniform":
        return torch.rand(BATCH, HEADS, patches, PROMPTS, device=device) * 2
    dim = int(kind.removeprefix("cosine-"))
    q = F.normalize(torch.randn(BATCH, HEADS, patches, dim, device=device), dim=-1)
    k = F.normalize(torch.randn(BATCH, HEADS, PROMPTS, dim, device=device), dim=-1)
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


def time_sinkhorn(cost: torch.Tensor, tol: float, repeats: int, device: torch.device) -> tuple[int, float, float]:
    """Iterations, forward seconds and forward + backward seconds of one call at ``tol``."""
    n_iter = log_sinkhorn(cost, tol=tol).n_iter
    with torch.no_grad():
        forward = seconds_per_call(lambda: log_sinkhorn(cost, tol=tol), repeats, device)
    leaf = cost.clone().requires_grad_()
    backward = seconds_per_call(lambda: log_sinkhorn(leaf, tol=tol).plan.square().sum().backward(), repeats, device)
    return n_iter, forward, backward


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    print(f"device={device} threads={args.threads} B={BATCH} heads={HEADS} M={PROMPTS} epsilon=0.05")
    print(f"{'cost':>10} {'N':>5} {'tol':>6} {'iters':>5} {'forward ms':>11} {'fwd+bwd ms':>11}")
    for kind in ("cosine-128", "cosine-8", "uniform"):
        for patches in (256, 400, 1600):
            cost = make_cost(kind, patches, device)
            for tol in (1e-2, 1e-3, patches * 1e-3):
                n_iter, forward, backward = time_sinkhorn(cost, tol, args.repeats, device)
                print(f"{kind:>10} {patches:>5} {tol:>6.3g} {n_iter:>5} {forward * 1e3:>11.2f} {backward * 1e3:>11.2f}")


if __name__ == "__main__":
    main()
