"""How many CPU threads inference uses: torch's and faiss's pools alike (process-wide)."""
from __future__ import annotations

import faiss
import torch


def set_threads(n: int) -> None:
    """Use ``n`` threads for torch's intra-op work and faiss's scans, in every thread of the process."""
    if n < 1:
        raise ValueError(f"threads must be at least 1, got {n}")
    torch.set_num_threads(n)
    faiss.omp_set_num_threads(n)
