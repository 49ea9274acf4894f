"""The retrieval index of the training set: LRE points, report sentences and labels per study.

At inference the LRE embeds the query image on the Poincaré ball and the nearest
training study's report (as sentence embeddings) becomes the global reference prompt;
the top-k neighbours feed the diagnosis branch's memory.

Search runs on faiss. For a fixed query x the Poincaré distance is monotone in
(||x||^2 - 2 x.y + ||y||^2) / (1 - c||y||^2), because
cosh d = 1 + 2c||x - y||^2 / ((1 - c||x||^2)(1 - c||y||^2)); that proxy is an inner product of
augmented vectors, [-||x||^2, -1, x] . [a_y, a_y ||y||^2, 2 a_y y] with a_y = 1 / (1 - c||y||^2),
to be maximised (cosine and L2 fit the same form with other per-reference terms). So faiss
finds 2k candidates by that float32 inner product, and exact float64 distances pick and order
the final top-k. Up to EXACT_UP_TO references the candidates come from an exact flat scan (the
result equals a brute-force float64 search); beyond, from an HNSW graph over the same vectors
with one more coordinate that turns the largest inner product into the nearest L2 neighbour
(benchmarks/bench_retrieval.py measures it against exact search: IVF and HNSW on the raw inner
product recalled far less).

Stored as ``reference_index.safetensors`` (tensors) + ``reference_index.json`` (ids,
optional report texts, curvature, metric, format version, shapes); never pickle. On disk
the sentence embeddings are deduplicated (a table of distinct sentence vectors plus, per
study, indices into it): radiology reports repeat the same sentences ("the lungs are
clear") so often that this shrinks the file several-fold.
"""
from __future__ import annotations

import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .hyperbolic import make_ball
from .observations import OBSERVATIONS, State

FORMAT_VERSION = 2
METRICS = ("hyperbolic", "cosine", "euclidean")
TENSORS_FILE = "reference_index.safetensors"
META_FILE = "reference_index.json"
_DTYPES = {
    "embeddings": torch.float32,
    "sentence_embeddings": torch.float16,
    "sentence_mask": torch.bool,
    "label_states": torch.int8,
}
# What the safetensors file holds: sentence vectors as a deduplicated table + indices.
_STORED = {
    "embeddings": torch.float32,
    "sentence_table": torch.float16,
    "sentence_index": torch.int32,  # [N, S], -1 where there is no sentence
    "label_states": torch.int8,
}
EXACT_UP_TO = 2_000_000  # larger indexes are searched approximately unless exact=True
# HNSW graph: links per node, and the candidate lists while building and searching (measured in
# benchmarks/bench_retrieval.py: recall@21 >= 0.99 against exact search on LRE-like points).
HNSW_M, HNSW_EF_CONSTRUCTION, HNSW_EF_SEARCH = 16, 40, 256
_ADD_ROWS = 1 << 18  # references augmented and added to faiss at a time
# From this many queries on, faiss's flat scan is a matrix product (BLAS): 3x faster than its
# per-query loop for 16 queries here, slower for one (faiss's default starts at 20; process-wide).
faiss.cvar.distance_compute_blas_threshold = 2


@dataclass(eq=False)
class ReferenceIndex:
    """Training studies to retrieve from. Tensors are converted to the documented dtypes on construction.

    Treat an instance as immutable (use ``dataclasses.replace``): search caches its faiss indexes.
    """

    embeddings: Tensor  # [N, H] float32, LRE points on the Poincaré ball
    sentence_embeddings: Tensor  # [N, S, D] float16, text-encoder embeddings of each report's sentences (padded)
    sentence_mask: Tensor  # [N, S] bool
    label_states: Tensor  # [N, 14] int8 (State values, OBSERVATIONS order)
    study_ids: list[str]
    texts: list[str] | None = None  # report text only where the data may be stored
    curvature: float = 0.01
    metric: str = "hyperbolic"  # "hyperbolic" | "cosine" | "euclidean" (supplementary Table 2)
    _searchers: dict[tuple[str, bool], faiss.Index] = field(default_factory=dict, init=False, repr=False)
    _build_lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False)
    _positions: dict[str, list[int]] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        for name, dtype in _DTYPES.items():
            setattr(self, name, getattr(self, name).to(dtype))
        self.study_ids = list(self.study_ids)
        self.texts = None if self.texts is None else list(self.texts)
        self._validate()
        # Padding slots hold no sentence: zero them, so what is saved is what is used.
        self.sentence_embeddings = self.sentence_embeddings.masked_fill(~self.sentence_mask[..., None], 0)

    def __len__(self) -> int:
        return self.embeddings.shape[0]

    def search(
        self,
        queries: Tensor,
        k: int,
        metric: str | None = None,
        exclude_ids: Sequence[str | None] | None = None,
        exact: bool | None = None,
    ) -> tuple[Tensor, Tensor]:
        """The ``k`` nearest references of each query [B, H], ascending: (distances [B, k], indices [B, k]).

        Distances are in ``metric`` (default: the index's): Poincaré distance, 1 - cosine
        similarity or L2. ``exclude_ids`` gives each query's own study id (or None) so that
        training queries never retrieve themselves. ``exact`` (default: up to EXACT_UP_TO
        references) scans every reference; otherwise an HNSW graph, built on first use, is
        searched. Results come back on the queries' device.
        """
        metric = metric or self.metric
        _check_metric(metric)
        if queries.ndim != 2 or queries.shape[1] != self.embeddings.shape[1]:
            raise ValueError(f"queries must be [B, {self.embeddings.shape[1]}], got {tuple(queries.shape)}")
        excluded = self._excluded(exclude_ids, queries.shape[0])
        if not 1 <= k <= len(self) - excluded.shape[1]:
            raise ValueError(f"k={k} is not in 1..{len(self) - excluded.shape[1]} for an index of {len(self)}")
        exact = len(self) <= EXACT_UP_TO if exact is None else exact
        x = queries.detach().to(self.embeddings.device, torch.float32)
        with torch.no_grad():
            # 2k candidates by the float32 proxy leave room for its rounding; exact distances decide.
            candidates = self._candidates(x, metric, min(len(self), 2 * k + excluded.shape[1]), exact)
            distances = self._exact_distances(x, candidates.clamp(min=0), metric)
            unwanted = (candidates.unsqueeze(-1) == excluded.unsqueeze(1)).any(-1) | (candidates < 0)
            distances, order = distances.masked_fill(unwanted, torch.inf).topk(k, dim=-1, largest=False, sorted=True)
            indices = candidates.gather(-1, order)
        return distances.float().to(queries.device), indices.to(queries.device)

    def save(self, directory: str | Path) -> None:
        """Write the folder that :meth:`load` reads; report texts go in only if this index holds them."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = _deduplicated(
            {name: getattr(self, name).detach().cpu().contiguous() for name in _DTYPES}
        )
        save_file(tensors, directory / TENSORS_FILE)
        meta = {
            "format_version": FORMAT_VERSION,
            "curvature": self.curvature,
            "metric": self.metric,
            "shapes": {name: list(t.shape) for name, t in tensors.items()},
            "study_ids": self.study_ids,
            "texts": self.texts,
        }
        (directory / META_FILE).write_text(json.dumps(meta, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: str | Path, *, texts_from: dict[str, str] | None = None) -> ReferenceIndex:
        """Read and validate an index folder; ``texts_from`` (study id -> report text) replaces the stored texts.

        Raises ``ValueError`` for anything missing, corrupt or incompatible.
        """
        directory = Path(directory)
        try:
            meta = json.loads((directory / META_FILE).read_text(encoding="utf-8"))
            tensors = load_file(directory / TENSORS_FILE)
        except (OSError, SafetensorError, json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{directory} is not a readable reference index: {err}") from err
        if not isinstance(meta, dict) or meta.get("format_version") != FORMAT_VERSION:
            found = meta.get("format_version") if isinstance(meta, dict) else None
            raise ValueError(f"{directory / META_FILE}: format version {found!r}, this code reads {FORMAT_VERSION}")
        missing = {"curvature", "metric", "shapes", "study_ids", "texts"} - set(meta)
        if missing:
            raise ValueError(f"{directory / META_FILE} lacks {sorted(missing)}")
        if not (isinstance(meta["shapes"], dict) and isinstance(meta["study_ids"], list)
                and isinstance(meta["texts"], (list, type(None)))):
            raise ValueError(f"{directory / META_FILE}: shapes must be an object, study_ids and texts lists")
        if set(tensors) != set(_STORED):
            raise ValueError(f"{directory / TENSORS_FILE} holds {sorted(tensors)}, expected {sorted(_STORED)}")
        for name, dtype in _STORED.items():
            if tensors[name].dtype != dtype:
                raise ValueError(f"{directory / TENSORS_FILE}: {name} is {tensors[name].dtype}, expected {dtype}")
            if list(tensors[name].shape) != meta["shapes"].get(name):
                raise ValueError(
                    f"{directory}: {name} has shape {list(tensors[name].shape)} but the json says "
                    f"{meta['shapes'].get(name)}"
                )
        tensors = _expanded(tensors, directory)
        texts = meta["texts"] if texts_from is None else _texts_for(meta["study_ids"], texts_from)
        return cls(**tensors, study_ids=meta["study_ids"], texts=texts, curvature=meta["curvature"], metric=meta["metric"])

    def _validate(self) -> None:
        n = len(self)
        if self.embeddings.ndim != 2 or not torch.isfinite(self.embeddings).all():
            raise ValueError(f"embeddings must be a finite [N, H] tensor, got shape {tuple(self.embeddings.shape)}")
        if self.sentence_embeddings.ndim != 3 or self.sentence_embeddings.shape[0] != n:
            raise ValueError(f"sentence_embeddings must be [{n}, S, D], got {tuple(self.sentence_embeddings.shape)}")
        if self.sentence_mask.shape != self.sentence_embeddings.shape[:2]:
            raise ValueError(
                f"sentence_mask {tuple(self.sentence_mask.shape)} does not match "
                f"sentence_embeddings {tuple(self.sentence_embeddings.shape)}"
            )
        if self.label_states.shape != (n, len(OBSERVATIONS)):
            raise ValueError(f"label_states must be [{n}, {len(OBSERVATIONS)}], got {tuple(self.label_states.shape)}")
        if n and not ((self.label_states >= 0) & (self.label_states < len(State))).all():
            raise ValueError(f"label_states must hold State values 0..{len(State) - 1}")
        if len(self.study_ids) != n or not all(isinstance(s, str) for s in self.study_ids):
            raise ValueError(f"study_ids must be {n} strings, got {len(self.study_ids)} entries")
        if self.texts is not None and (len(self.texts) != n or not all(isinstance(t, str) for t in self.texts)):
            raise ValueError(f"texts must be None or {n} strings, got {len(self.texts)} entries")
        if not isinstance(self.curvature, (int, float)) or not self.curvature > 0:
            raise ValueError(f"curvature must be a positive number, got {self.curvature!r}")
        _check_metric(self.metric)
        if self.metric == "hyperbolic":
            self._reference_terms("hyperbolic")  # checks that the points lie inside the ball

    def _reference_terms(self, metric: str) -> tuple[Tensor, Tensor]:
        """Per-reference (offset, scale) of the ranking proxy ``(offset - 2 x.y + q) * scale``, float64 [N].

        hyperbolic: (||y||^2, 1 / (1 - c||y||^2)) with q = ||x||^2; euclidean: (||y||^2, 1), q = 0;
        cosine: (0, 1 / (2||y||)), q = 0, i.e. -cos(x, y) * ||x||.
        """
        sq = torch.linalg.vector_norm(self.embeddings.detach().cpu(), dim=-1, dtype=torch.float64).square()
        if metric == "hyperbolic":
            room = 1 - self.curvature * sq
            if (room <= 0).any():
                raise ValueError(f"embeddings lie outside the Poincaré ball of curvature {self.curvature}")
            return sq, room.reciprocal()
        if metric == "euclidean":
            return sq, torch.ones_like(sq)
        return torch.zeros_like(sq), (2 * sq.sqrt()).clamp_min(1e-12).reciprocal()

    def _searcher(self, metric: str, exact: bool) -> faiss.Index:
        """The faiss index of the augmented references [scale, scale * offset, 2 * scale * y], built once
        (in slices of ``_ADD_ROWS``, so memory holds the index and one slice, never a float64 copy).

        The approximate one appends sqrt(R^2 - ||v||^2) (R the largest norm) to every vector v,
        so that the largest inner product with [query, 0] is the nearest neighbour in L2, which
        an HNSW graph finds well (on the inner product itself its recall was near zero).
        """
        key = (metric, exact)
        with self._build_lock:
            if key not in self._searchers:
                offset, scale = self._reference_terms(metric)
                y = self.embeddings.detach().cpu()
                sq_norms = scale.square() * (1 + offset.square() + 4 * y.square().sum(-1, dtype=torch.float64))
                if exact:
                    searcher = faiss.IndexFlatIP(y.shape[1] + 2)
                else:
                    searcher = faiss.IndexHNSWFlat(y.shape[1] + 3, HNSW_M)
                    searcher.hnsw.efConstruction = HNSW_EF_CONSTRUCTION
                for s in range(0, len(y), _ADD_ROWS):
                    part = slice(s, s + _ADD_ROWS)
                    columns = [scale[part, None], (scale * offset)[part, None], 2 * scale[part, None] * y[part]]
                    if not exact:
                        columns.append((sq_norms.max() - sq_norms[part, None]).clamp_min(0).sqrt())
                    searcher.add(torch.cat([c.float() for c in columns], 1).numpy())
                self._searchers[key] = searcher
            return self._searchers[key]

    def _candidates(self, x: Tensor, metric: str, n: int, exact: bool) -> Tensor:
        """Indices [B, n] (on the index's device) of the n smallest proxy scores; -1 where faiss found fewer."""
        searcher = self._searcher(metric, exact)
        x = x.cpu().double()
        query_term = x.square().sum(-1, keepdim=True) if metric == "hyperbolic" else x.new_zeros(len(x), 1)
        parts = [-query_term, -torch.ones_like(query_term), x] + ([] if exact else [torch.zeros_like(query_term)])
        augmented = np.ascontiguousarray(torch.cat(parts, 1).numpy(), np.float32)
        params = None if exact else faiss.SearchParametersHNSW(efSearch=max(HNSW_EF_SEARCH, n))
        _, indices = searcher.search(augmented, n, params=params)
        return torch.from_numpy(indices).to(self.embeddings.device)

    def _exact_distances(self, x: Tensor, indices: Tensor, metric: str) -> Tensor:
        """Distances in float64 between each query [B, H] and its references ``indices`` [B, n]."""
        x, y = x.double().unsqueeze(1), self.embeddings[indices].double()
        if metric == "hyperbolic":
            return make_ball(self.curvature).to(x.device, torch.float64).dist(x, y)
        if metric == "cosine":
            return (1 - F.cosine_similarity(x, y, dim=-1)).clamp(0, 2)
        return (x - y).norm(dim=-1)

    def _excluded(self, exclude_ids: Sequence[str | None] | None, batch: int) -> Tensor:
        """Index positions each query must not retrieve: [B, E] long, padded with -1."""
        if exclude_ids is None:
            return torch.empty(batch, 0, dtype=torch.long, device=self.embeddings.device)
        if len(exclude_ids) != batch:
            raise ValueError(f"exclude_ids has {len(exclude_ids)} entries for {batch} queries")
        if self._positions is None:
            self._positions = {}
            for i, study_id in enumerate(self.study_ids):
                self._positions.setdefault(study_id, []).append(i)
        rows = [self._positions.get(s, []) if s is not None else [] for s in exclude_ids]
        width = max(map(len, rows), default=0)
        padded = [r + [-1] * (width - len(r)) for r in rows]
        return torch.tensor(padded, dtype=torch.long, device=self.embeddings.device).reshape(batch, width)


def _check_metric(metric: str) -> None:
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; expected one of {METRICS}")


def _texts_for(study_ids: list[str], texts_from: dict[str, str]) -> list[str]:
    missing = [s for s in study_ids if s not in texts_from]
    if missing:
        raise ValueError(f"texts_from lacks {len(missing)} of the index's study ids, e.g. {missing[:3]}")
    return [texts_from[s] for s in study_ids]


def _deduplicated(tensors: dict[str, Tensor]) -> dict[str, Tensor]:
    """In-memory tensors -> stored ones: distinct sentence vectors once, referenced by index."""
    vectors, mask = tensors.pop("sentence_embeddings"), tensors.pop("sentence_mask")
    table, inverse = torch.unique(vectors[mask], dim=0, return_inverse=True)
    index = torch.full(mask.shape, -1, dtype=torch.int32)
    index[mask] = inverse.to(torch.int32)
    return {**tensors, "sentence_table": table.contiguous(), "sentence_index": index}


def _expanded(tensors: dict[str, Tensor], directory: Path) -> dict[str, Tensor]:
    """Stored tensors -> in-memory ones, checking that every index points into the table."""
    table, index = tensors.pop("sentence_table"), tensors.pop("sentence_index").long()
    if table.ndim != 2 or index.ndim != 2 or ((index < -1) | (index >= len(table))).any():
        raise ValueError(f"{directory / TENSORS_FILE}: sentence_index points outside sentence_table")
    mask = index >= 0
    vectors = table[index.clamp(min=0)] * mask[..., None]
    return {**tensors, "sentence_embeddings": vectors, "sentence_mask": mask}
