"""Queries/s of ReferenceIndex.search at MIMIC scale versus brute-force geoopt distances.

    python -m benchmarks.bench_retrieval [--dims 128,512] [--threads 1]   (from the repo root)

Builds random Poincaré-ball indexes of 270,790 references (the MIMIC-CXR training set)
and times top-21 search for query batches of 1 and 64, against computing every geoopt
distance (in chunks, to bound memory) and taking the top-k. Both run in the same process
on the same data. The last column is the share of the brute-force top-k that the index
also returns; the few misses are near-ties that float32 geoopt orders differently (the
index decides by float64 distances; tests/test_reference_index.py checks it against a
float64 brute force).
"""
from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch

from rrg_core.hyperbolic import make_ball
from rrg_core.reference_index import ReferenceIndex

N_REFERENCES, K, CURVATURE = 270_790, 21, 0.01


def random_points(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Points spread from the centre to near the edge of the ball, like trained LRE outputs."""
    ball = make_ball(CURVATURE)
    tangent = torch.randn(n, dim, generator=generator) * torch.rand(n, 1, generator=generator) * 30 / dim**0.5
    return ball.expmap0(tangent).detach()


def brute_force(index: ReferenceIndex, queries: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Every geoopt distance, 2^20 (query, reference, feature) elements at a time (the fastest
    chunk size measured here: larger temporaries cost page faults), then top-k."""
    ball = make_ball(index.curvature)
    rows = max(1, (1 << 20) // (queries.shape[0] * queries.shape[1]))
    with torch.no_grad():
        distances = torch.cat(
            [ball.dist(queries[:, None], index.embeddings[None, s : s + rows]) for s in range(0, len(index), rows)], -1
        )
    return distances.topk(k, dim=-1, largest=False)


def seconds_per_call(fn: Callable[[], object]) -> float:
    """Mean over at least one second of calls, after a warm-up (which pays the index's one-off norms)."""
    fn()
    calls, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < 1.0 or calls == 0:
        fn()
        calls += 1
    return elapsed / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dims", default="128,512", help="comma-separated embedding sizes")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    print(f"N={N_REFERENCES} top-{K} c={CURVATURE} threads={args.threads}")
    print(f"{'H':>4} {'batch':>5} {'index q/s':>10} {'brute q/s':>10} {'speed-up':>8} {'overlap':>8}")
    for dim in map(int, args.dims.split(",")):
        index = ReferenceIndex(
            embeddings=random_points(N_REFERENCES, dim, generator),
            sentence_embeddings=torch.zeros(N_REFERENCES, 1, 1),
            sentence_mask=torch.ones(N_REFERENCES, 1, dtype=torch.bool),
            label_states=torch.zeros(N_REFERENCES, 14),
            study_ids=[str(i) for i in range(N_REFERENCES)],
            curvature=CURVATURE,
        )
        for batch in (1, 64):
            queries = random_points(batch, dim, generator)
            fast = seconds_per_call(lambda: index.search(queries, K))
            start = time.perf_counter()
            brute = brute_force(index, queries, K).indices
            slow = time.perf_counter() - start
            found = index.search(queries, K)[1]
            overlap = (found.unsqueeze(-1) == brute.unsqueeze(-2)).any(-1).float().mean().item()
            print(f"{dim:>4} {batch:>5} {batch / fast:>10.1f} {batch / slow:>10.1f} {slow / fast:>7.1f}x {overlap:>8.2%}")
        del index


if __name__ == "__main__":
    main()
