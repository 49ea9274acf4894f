"""ReferenceIndex.search (faiss) at MIMIC scale against faiss on raw vectors, and approximate search
at millions of references.

    python -m benchmarks.bench_retrieval [--threads 1] [--large 3000000]   (from the repo root)

1. Exact top-21 over 270,790 references (the MIMIC-CXR training set), H = 128, batches of 1 and
   16 queries: ``ReferenceIndex.search`` (augmented vectors, 2k candidates, float64 re-rank) per
   metric against a plain ``faiss.IndexFlatIP`` on the raw vectors in matrix-product (BLAS) mode,
   the floor for any exact scan. Medians of interleaved calls, so machine load hits both alike.
   The last column checks the hyperbolic top-21 against a float64 brute force over every reference.
2. ``--large N`` (off by default: it holds about 1.3 kB per reference, 4 GB at 3 M): approximate
   search (HNSW) over N LRE-like points, drawn from a Gaussian with the mean and covariance of the
   committed default index's points in the tangent space at 0 (trained LRE points span few
   directions: a participation ratio of about 6 of 128). Prints the build time, the memory the
   graph adds, one query's latency and recall@21 against exact search, per search depth.
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import faiss
import numpy as np
import torch

from benchmarks.timing import interleaved
from rrg_core import reference_index
from rrg_core.hub import named_weights
from rrg_core.hyperbolic import make_ball
from rrg_core.reference_index import ReferenceIndex

N_REFERENCES, K, CURVATURE, DIM = 270_790, 21, 0.01, 128
BATCHES = (1, 16)
REPEATS = 7  # interleaved timing rounds per batch size
LARGE_QUERIES = 100
EF_SEARCH = (64, 128, 256, 512)


def random_points(n: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """Points spread from the centre to near the edge of the ball, in every direction."""
    ball = make_ball(CURVATURE)
    tangent = torch.randn(n, dim, generator=generator) * torch.rand(n, 1, generator=generator) * 30 / dim**0.5
    return ball.expmap0(tangent).detach()


def lre_like_points(n: int, generator: torch.Generator, rows: int = 1 << 18) -> torch.Tensor:
    """n points from a Gaussian fitted to the default index's points in the tangent space at 0."""
    reference = ReferenceIndex.load(named_weights("synthcxr"))
    ball = make_ball(reference.curvature)
    tangent = ball.logmap0(reference.embeddings.double())
    mean, factor = tangent.mean(0), torch.linalg.cholesky(torch.cov(tangent.T) + 1e-9 * torch.eye(tangent.shape[1]))
    out = torch.empty(n, tangent.shape[1])
    for s in range(0, n, rows):
        m = min(rows, n - s)
        out[s : s + m] = ball.expmap0(mean + torch.randn(m, len(mean), generator=generator, dtype=torch.float64) @ factor.T)
    return out


def make_index(points: torch.Tensor) -> ReferenceIndex:
    n = len(points)
    return ReferenceIndex(
        embeddings=points,
        sentence_embeddings=torch.zeros(n, 1, 1),
        sentence_mask=torch.ones(n, 1, dtype=torch.bool),
        label_states=torch.zeros(n, 14),
        study_ids=[str(i) for i in range(n)],
        curvature=CURVATURE,
    )


def brute_force_top_k(index: ReferenceIndex, queries: torch.Tensor, rows: int = 1 << 16) -> torch.Tensor:
    """Indices of the k nearest references by float64 geoopt distances over every reference."""
    ball = make_ball(CURVATURE).to(dtype=torch.float64)
    x = queries.double()[:, None]
    distances = torch.cat([ball.dist(x, index.embeddings[None, s : s + rows].double())
                           for s in range(0, len(index), rows)], -1)
    return distances.topk(K, dim=-1, largest=False).indices


def flat_ip_blas(vectors: torch.Tensor) -> Callable[[np.ndarray], object]:
    """A plain faiss IndexFlatIP on raw vectors whose search always takes the matrix-product path."""
    flat = faiss.IndexFlatIP(vectors.shape[1])
    flat.add(vectors.numpy())

    def search(queries: np.ndarray):
        saved, faiss.cvar.distance_compute_blas_threshold = faiss.cvar.distance_compute_blas_threshold, 1
        try:
            return flat.search(queries, K)
        finally:
            faiss.cvar.distance_compute_blas_threshold = saved

    return search


def exact_at_mimic_scale(generator: torch.Generator) -> None:
    index = make_index(random_points(N_REFERENCES, DIM, generator))
    raw_search = flat_ip_blas(index.embeddings)
    print(f"\n## Exact top-{K} over {N_REFERENCES:,} references, H={DIM} (ms per call, medians of 7 interleaved)\n")
    print("| queries | faiss IndexFlatIP, raw vectors | hyperbolic | cosine | euclidean "
          "| hyperbolic / flat IP | same top-21 as float64 brute force |\n| --- | --- | --- | --- | --- | --- | --- |")
    for batch in BATCHES:
        queries = random_points(batch, DIM, generator)
        raw = queries.numpy()
        fns = {"flat": lambda raw=raw: raw_search(raw)}
        fns |= {m: (lambda m=m, queries=queries: index.search(queries, K, metric=m)) for m in reference_index.METRICS}
        ms = {name: 1000 * seconds for name, seconds in interleaved(fns, REPEATS)[0].items()}
        same = torch.equal(index.search(queries, K)[1].sort(-1).values, brute_force_top_k(index, queries).sort(-1).values)
        print(f"| {batch} | {ms['flat']:.1f} | {ms['hyperbolic']:.1f} | {ms['cosine']:.1f} | {ms['euclidean']:.1f} "
              f"| {ms['hyperbolic'] / ms['flat']:.2f}x | {'yes' if same else 'no'} |", flush=True)


def rss_gb() -> float:
    """Resident memory of this process (Linux)."""
    with open("/proc/self/status") as status:
        kb = next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))
    return kb / 2**20


def approximate_at_scale(n: int, generator: torch.Generator) -> None:
    print(f"\n## Approximate (HNSW, M={reference_index.HNSW_M}, efConstruction={reference_index.HNSW_EF_CONSTRUCTION}) "
          f"top-{K} over {n:,} LRE-like references, H={DIM}\n")
    points, queries = lre_like_points(n, generator), lre_like_points(LARGE_QUERIES, generator)
    start = time.perf_counter()
    exact = make_index(points).search(queries, K, exact=True)[1]  # its flat index is freed before the graph
    exact_s = time.perf_counter() - start
    index = make_index(points)
    before = rss_gb()
    start = time.perf_counter()
    index.search(queries[:1], K, exact=False)  # builds the graph
    build_s, graph_gb = time.perf_counter() - start, rss_gb() - before
    print(f"graph built in {build_s:.0f} s, adding {graph_gb:.2f} GB (process: {rss_gb():.1f} GB); "
          f"exact search, {LARGE_QUERIES} queries: {exact_s:.1f} s including its flat index\n")
    print("| efSearch | one query, ms (median) | recall@21 vs exact |\n| --- | --- | --- |")
    default_ef = reference_index.HNSW_EF_SEARCH
    for ef in EF_SEARCH:
        reference_index.HNSW_EF_SEARCH = ef
        times, found = [], []
        for q in queries.split(1):
            start = time.perf_counter()
            found.append(index.search(q, K, exact=False)[1])
            times.append(time.perf_counter() - start)
        recall = np.mean([len(set(a[0].tolist()) & set(b.tolist())) / K for a, b in zip(found, exact)])
        mark = " (default)" if ef == default_ef else ""
        print(f"| {ef}{mark} | {1000 * statistics.median(times):.2f} | {recall:.4f} |", flush=True)
    reference_index.HNSW_EF_SEARCH = default_ef


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch and faiss threads")
    parser.add_argument("--large", type=int, default=0, metavar="N",
                        help="also measure approximate search over N references (3000000 for the issue's figure)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    print(f"threads={args.threads}, c={CURVATURE}")
    generator = torch.Generator().manual_seed(0)
    exact_at_mimic_scale(generator)
    if args.large:
        approximate_at_scale(args.large, generator)


if __name__ == "__main__":
    main()
