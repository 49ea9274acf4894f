"""Evaluation metrics, computed the way the report-generation papers compute them.

- Language (NLG): BLEU-1..4, METEOR and ROUGE-L from ``pycocoevalcap``, called exactly
  like R2Gen's and PromptMRG's ``compute_scores``: one reference and one hypothesis per
  report, ``{i: [text]}`` dicts, no PTBTokenizer. Texts must already be normalised by the
  caller (lower case, punctuation split off); PromptMRG's extra ``". " -> " . "`` rewrite of
  its own generations is the caller's business too.
- Clinical efficacy (CE): CheXpert labels of reference and generated reports, counting
  only *positive* (1) as present; uncertain (-1), negative (0) and not mentioned (None) are
  all "not positive". The "P R F1" columns of the REVTAF paper (and of PromptMRG, whose
  code REVTAF reuses) are **example-based**: P/R/F1 per report, 0/0 counted as 0, then
  averaged over reports. Micro and macro are reported too, since other papers use them.
- Retrieval and grounding diagnostics for the LRE and MPSA parts of the model.
- The paper-shaped results table (9 columns and their mean).
"""
from __future__ import annotations

import shutil
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from pycocoevalcap.bleu.bleu import Bleu
from pycocoevalcap.meteor.meteor import Meteor
from pycocoevalcap.rouge.rouge import Rouge

from .observations import HEAD, OBSERVATIONS, TAIL, State, labels_to_states

NLG_KEYS: tuple[str, ...] = ("BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L")
CE_AVERAGINGS: tuple[str, ...] = ("micro", "macro", "example")
# Paper table column -> key in nlg_metrics() or in a clinical_efficacy() averaging block.
PAPER_COLUMNS: dict[str, str] = {
    "B1": "BLEU_1",
    "B2": "BLEU_2",
    "B3": "BLEU_3",
    "B4": "BLEU_4",
    "METEOR": "METEOR",
    "ROUGE-L": "ROUGE_L",
    "P": "precision",
    "R": "recall",
    "F1": "f1",
}


# --------------------------------------------------------------------------- language


def nlg_metrics(references: Sequence[str], hypotheses: Sequence[str]) -> dict[str, float]:
    """BLEU_1..BLEU_4, METEOR and ROUGE_L over a test set (R2Gen's ``compute_scores``).

    BLEU is corpus-level, METEOR is Meteor 1.5's aggregate and ROUGE_L is the mean of the
    per-report scores, as pycocoevalcap defines them. Runs of whitespace (newlines included)
    are collapsed to one space: a no-op on normalised text, and a newline would break
    METEOR's line protocol with its Java process. Empty hypotheses are kept and score 0 on
    every metric (pycocoevalcap 1.2 handles them), so a model that writes nothing is
    penalised rather than silently skipped. Raises RuntimeError when Java is missing.
    """
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("no reports to score")
    gts = {i: [" ".join(text.split())] for i, text in enumerate(references)}
    res = {i: [" ".join(text.split())] for i, text in enumerate(hypotheses)}
    meteor = _meteor_score(gts, res)  # first: fail fast when Java is missing
    bleu, _ = Bleu(4).compute_score(gts, res, verbose=0)
    rouge, _ = Rouge().compute_score(gts, res)
    return {**dict(zip(NLG_KEYS[:4], map(float, bleu))), "METEOR": meteor, "ROUGE_L": float(rouge)}


def _meteor_score(gts: dict[int, list[str]], res: dict[int, list[str]]) -> float:
    """Meteor 1.5 through pycocoevalcap, with its Java process always shut down afterwards.

    pycocoevalcap's ``Meteor`` starts ``java`` in its constructor and stops it only in
    ``__del__``; if ``compute_score`` fails it also leaves its lock held, so that
    ``__del__`` would deadlock. Here the lock is freed and the shutdown runs at once.
    """
    if shutil.which("java") is None:
        raise RuntimeError(
            "METEOR needs Java: no `java` executable on PATH "
            "(install a Java runtime, e.g. `apt-get install default-jre-headless`)"
        )
    meteor = Meteor()
    try:
        score, _ = meteor.compute_score(gts, res)
    except ValueError:  # float('') on an empty line: the Java process died
        code = meteor.meteor_p.poll()
        raise RuntimeError(f"METEOR's Java process stopped answering (exit code {code})") from None
    finally:
        if meteor.lock.locked():
            meteor.lock.release()
        meteor.__del__()  # the library's own shutdown; running it again at GC time is harmless
    return float(score)


# --------------------------------------------------------------------------- clinical efficacy


def clinical_efficacy(
    reference_labels: Sequence[Mapping[str, int | None]],
    predicted_labels: Sequence[Mapping[str, int | None]],
) -> dict[str, Any]:
    """Precision, recall and F1 of the *positive* findings over the 14 observations.

    Returns ``micro`` (counts pooled over reports and observations), ``macro`` (mean over
    the observations in ``macro_classes``: those positive in at least one reference or one
    prediction; an observation positive nowhere has no defined score and is left out),
    ``example`` (per report, then the mean: the paper's convention), ``per_class``
    (with ``support`` = positive references), and ``head`` / ``tail`` (micro over those
    groups). Every 0/0 counts as 0, as in PromptMRG's ``np.nan_to_num`` and sklearn's
    ``zero_division=0``; so a report with no positive in reference nor prediction scores 0
    in ``example``, exactly as PromptMRG scores it.
    """
    if len(reference_labels) != len(predicted_labels):
        raise ValueError(f"{len(reference_labels)} reference but {len(predicted_labels)} predicted label sets")
    if not reference_labels:
        raise ValueError("no reports to score")
    ref, pred = _positives(reference_labels), _positives(predicted_labels)
    tp, fp, fn = ref & pred, pred & ~ref, ref & ~pred

    per_class = _prf(tp.sum(0), fp.sum(0), fn.sum(0))
    defined = (ref | pred).any(0)
    example = _prf(tp.sum(1), fp.sum(1), fn.sum(1))
    groups = {
        group: np.isin(OBSERVATIONS, names) for group, names in (("head", HEAD), ("tail", TAIL))
    }
    return {
        "micro": _mean_prf(_prf(tp.sum(), fp.sum(), fn.sum())),
        "macro": _mean_prf(tuple(m[defined] for m in per_class)),
        "example": _mean_prf(example),
        "per_class": {
            name: {**_mean_prf(tuple(m[j] for m in per_class)), "support": int(ref[:, j].sum())}
            for j, name in enumerate(OBSERVATIONS)
        },
        **{
            group: _mean_prf(_prf(tp[:, cols].sum(), fp[:, cols].sum(), fn[:, cols].sum()))
            for group, cols in groups.items()
        },
        "macro_classes": [name for name, ok in zip(OBSERVATIONS, defined) if ok],
        "n_reports": len(ref),
    }


def _positives(labels: Sequence[Mapping[str, int | None]]) -> np.ndarray:
    """Bool [N, 14]: which observations each label dict marks positive (validates the dicts)."""
    return np.array([labels_to_states(one) for one in labels]) == State.POSITIVE


def _prf(tp: Any, fp: Any, fn: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Element-wise precision, recall and F1 from counts, with 0/0 = 0."""
    tp, fp, fn = (np.asarray(x, dtype=float) for x in (tp, fp, fn))

    def ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
        return np.divide(num, den, out=np.zeros_like(num), where=den > 0)

    return ratio(tp, tp + fp), ratio(tp, tp + fn), ratio(2 * tp, 2 * tp + fp + fn)


def _mean_prf(prf: tuple[np.ndarray, ...]) -> dict[str, float]:
    """Means of precision, recall and F1 arrays (0 for an empty array) as plain floats."""
    return {key: float(m.mean()) if m.size else 0.0 for key, m in zip(("precision", "recall", "f1"), prf)}


# --------------------------------------------------------------------------- retrieval


def retrieval_metrics(query_states: np.ndarray, top1_states: np.ndarray) -> dict[str, float]:
    """How well the top-1 retrieved report matches the query's label states.

    Inputs are [N, 14] State vectors. ``hamming`` is the mean number of observations whose
    state differs (the LRE training target's distance); ``precision_at_1`` the share of
    queries whose top-1 has exactly the same 14 states; ``positive_set_match`` the share
    whose top-1 has the same set of positive observations.
    """
    query, top1 = np.asarray(query_states), np.asarray(top1_states)
    if query.shape != top1.shape or query.ndim != 2 or query.shape[1] != len(OBSERVATIONS):
        raise ValueError(f"expected two [N, {len(OBSERVATIONS)}] arrays, got {query.shape} and {top1.shape}")
    if not len(query):
        raise ValueError("no queries to score")
    differing = (query != top1).sum(1)
    same_positives = ((query == State.POSITIVE) == (top1 == State.POSITIVE)).all(1)
    return {
        "hamming": float(differing.mean()),
        "precision_at_1": float((differing == 0).mean()),
        "positive_set_match": float(same_positives.mean()),
    }


# --------------------------------------------------------------------------- grounding


def grounding_metrics(
    items: Iterable[tuple[str, np.ndarray, list[np.ndarray]]], tolerance: float = 0
) -> dict[str, Any]:
    """Pointing game and mask IoU of attention heatmaps against finding masks.

    Each item is (finding, heatmap H x W, instance masks H x W); the masks of an item are
    united. Pointing game: a hit when the heatmap's argmax (the first one in row-major order
    on ties) lies within ``tolerance`` pixels (Euclidean) of the union. IoU: the heatmap is
    binarised by keeping its k highest pixels, k = the union's area (ties broken in row-major
    order), so the score does not depend on a threshold nor on the heatmap's scale.
    Returns ``overall`` (mean over items) and ``per_finding``, each with
    ``pointing_game``, ``iou`` and ``n``.
    """
    scores: dict[str, list[tuple[bool, float]]] = defaultdict(list)
    for finding, heatmap, masks in items:
        heat = np.asarray(heatmap, dtype=float)
        if not masks:
            raise ValueError(f"{finding}: no mask")
        union = np.logical_or.reduce([np.asarray(m, dtype=bool) for m in masks])
        if union.shape != heat.shape:
            raise ValueError(f"{finding}: heatmap {heat.shape} and mask {union.shape} differ in shape")
        if not union.any():
            raise ValueError(f"{finding}: the masks are empty")
        if not np.isfinite(heat).all():
            raise ValueError(f"{finding}: the heatmap has NaN or infinite values")
        scores[finding].append((_pointing_hit(heat, union, tolerance), _top_area_iou(heat, union)))
    if not scores:
        raise ValueError("no items to score")

    def summary(pairs: list[tuple[bool, float]]) -> dict[str, float]:
        hits, ious = zip(*pairs)
        return {"pointing_game": float(np.mean(hits)), "iou": float(np.mean(ious)), "n": len(pairs)}

    return {
        "overall": summary([pair for pairs in scores.values() for pair in pairs]),
        "per_finding": {finding: summary(pairs) for finding, pairs in scores.items()},
    }


def _pointing_hit(heat: np.ndarray, mask: np.ndarray, tolerance: float) -> bool:
    peak = np.unravel_index(np.argmax(heat), heat.shape)
    rows, cols = np.nonzero(mask)
    return bool(((rows - peak[0]) ** 2 + (cols - peak[1]) ** 2).min() <= tolerance**2)


def _top_area_iou(heat: np.ndarray, mask: np.ndarray) -> float:
    area = int(mask.sum())
    top = np.zeros(heat.size, dtype=bool)
    top[np.argsort(-heat, axis=None, kind="stable")[:area]] = True
    overlap = int((top & mask.ravel()).sum())
    return overlap / (2 * area - overlap)  # |top| = |mask| = area


# --------------------------------------------------------------------------- paper table


def paper_row(nlg: Mapping[str, float], ce: Mapping[str, Any], averaging: str = "example") -> dict[str, float]:
    """The 9 paper columns (B1..B4, METEOR, ROUGE-L, P, R, F1) and their mean ``avg``.

    ``averaging`` picks the CE block; the paper's P/R/F1 are example-based.
    """
    if averaging not in CE_AVERAGINGS:
        raise ValueError(f"averaging must be one of {CE_AVERAGINGS}, got {averaging!r}")
    sources = {**nlg, **ce[averaging]}
    row = {column: float(sources[key]) for column, key in PAPER_COLUMNS.items()}
    return {**row, "avg": float(np.mean(list(row.values())))}


def paper_average(nlg: Mapping[str, float], ce: Mapping[str, Any], averaging: str = "example") -> float:
    """Mean of the 9 paper columns: the "avg" the REVTAF paper ranks models by."""
    return paper_row(nlg, ce, averaging)["avg"]


def markdown_table(rows: Mapping[str, Mapping[str, float]]) -> str:
    """A paper-shaped Markdown table, 3 decimals, one row per model.

    Each row maps paper column names (``PAPER_COLUMNS`` and ``avg``, as ``paper_row``
    returns them) to values; a missing column prints as "-", and a missing ``avg`` is
    computed when all 9 columns are there.
    """
    columns = [*PAPER_COLUMNS, "avg"]
    lines = ["| model | " + " | ".join(columns) + " |", "| --- " * (len(columns) + 1) + "|"]
    for name, values in rows.items():
        unknown = set(values) - set(columns)
        if unknown:
            raise ValueError(f"row {name!r}: unknown column(s) {sorted(unknown)}; expected {columns}")
        values = dict(values)
        if "avg" not in values and all(c in values for c in PAPER_COLUMNS):
            values["avg"] = float(np.mean([values[c] for c in PAPER_COLUMNS]))
        cells = [f"{values[c]:.3f}" if c in values else "-" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)
