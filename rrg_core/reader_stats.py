"""A reader study's export: every judgment as CSV, a summary (JSON and Markdown) and figures.

Per weights (name and revision): mean ReXVal errors per report for each error type and
significance, with a bootstrap 95 % confidence interval that resamples *studies* (two readers of
one study are not independent); the share of acceptable drafts (accept as is or minor edits);
the unblinded outcome of the blinded comparisons; and, for every pair of readers who reviewed
the same studies, Cohen's kappa on acceptability (unweighted, and quadratic-weighted because
the scale is ordinal) and Spearman's rank correlation of their error counts per report.

    python -m rrg_core review-export DB --out DIR [--bootstrap 2000] [--seed 0]
"""
from __future__ import annotations

import csv
import json
import math
import os
import sqlite3
from collections import defaultdict
from collections.abc import Sequence
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from .outputs import strict_json
from .reader_study import ACCEPTABILITY, ACCEPTABLE, ERROR_COLUMNS, ERROR_TYPES, SIGNIFICANCE, ReaderStudy

BOOTSTRAP = 2000
LEVEL = 0.95
LEVELS: tuple[str, ...] = (*SIGNIFICANCE, "total")
PREFERENCES: tuple[str, ...] = ("draft", "equal", "reference")
DRAFT_COLUMNS = ["reviewer", "study_id", "weights", "revision", "options"]


# ---------------------------------------------------------------- statistics


def average_ranks(values: Sequence[float]) -> np.ndarray:
    """Ranks from 1, ties sharing the mean of the ranks they span."""
    values = np.asarray(values, dtype=np.float64)
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values))
    sorted_values = values[order]
    start = 0
    for end in range(1, len(values) + 1):
        if end == len(values) or sorted_values[end] != sorted_values[start]:
            ranks[order[start:end]] = (start + 1 + end) / 2  # mean of ranks start+1 .. end
            start = end
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman's rho: Pearson's correlation of the average ranks; NaN when either side is constant."""
    if len(x) != len(y):
        raise ValueError(f"spearman needs paired values; got {len(x)} and {len(y)}")
    rx, ry = average_ranks(x) - (len(x) + 1) / 2, average_ranks(y) - (len(y) + 1) / 2
    denominator = math.sqrt(float(rx @ rx) * float(ry @ ry))
    return float(rx @ ry) / denominator if denominator > 0 else math.nan


def cohen_kappa(a: Sequence[str], b: Sequence[str], categories: Sequence[str], weighting: str | None = None) -> float:
    """Cohen's kappa of two readers' ratings; ``weighting`` None (exact agreement), "linear" or
    "quadratic" (disagreement weighted by the distance between ordered categories). NaN when
    chance agreement is already perfect (both readers used one and the same category)."""
    if len(a) != len(b) or not a:
        raise ValueError(f"cohen_kappa needs paired ratings; got {len(a)} and {len(b)}")
    index = {c: i for i, c in enumerate(categories)}
    k = len(categories)
    observed = np.zeros((k, k))
    for x, y in zip(a, b):
        observed[index[x], index[y]] += 1
    observed /= observed.sum()
    expected = np.outer(observed.sum(1), observed.sum(0))
    distance = np.abs(np.subtract.outer(np.arange(k), np.arange(k))).astype(np.float64)
    weights = {None: (distance > 0).astype(np.float64), "linear": distance, "quadratic": distance ** 2}[weighting]
    chance = float((weights * expected).sum())
    return 1 - float((weights * observed).sum()) / chance if chance > 0 else math.nan


def bootstrap_mean(clusters: Sequence[Sequence[float]], n_boot: int = BOOTSTRAP, seed: int = 0,
                   level: float = LEVEL) -> dict[str, float]:
    """Mean of all values, with a percentile bootstrap interval that resamples whole clusters
    (studies) with replacement: {"mean", "low", "high"}."""
    sums = np.array([sum(c) for c in clusters], dtype=np.float64)
    counts = np.array([len(c) for c in clusters], dtype=np.float64)
    mean = float(sums.sum() / counts.sum())
    draws = np.random.default_rng(seed).integers(0, len(clusters), size=(n_boot, len(clusters)))
    means = sums[draws].sum(1) / counts[draws].sum(1)
    low, high = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return {"mean": mean, "low": float(low), "high": float(high)}


# ---------------------------------------------------------------- summary


def weights_label(row: dict[str, Any]) -> str:
    return f"{row['weights']} @ {row['revision']}"


def errors_of(row: dict[str, Any], kind: str, level: str) -> int:
    """A judgment's count of one error type (or "all") at one level (or "total")."""
    kinds = list(ERROR_TYPES) if kind == "all" else [kind]
    levels = SIGNIFICANCE if level == "total" else (level,)
    return sum(row[f"{k}_{lv}"] for k in kinds for lv in levels)


def summarise(judgments: list[dict[str, Any]], comparisons: list[dict[str, Any]], n_boot: int = BOOTSTRAP,
              seed: int = 0) -> dict[str, Any]:
    """The summary per weights (see the module's docstring); rows as ReaderStudy gives them."""
    by_weights: dict[str, dict[str, Any]] = {}
    for label, rows in _grouped(judgments).items():
        studies = _grouped(rows, key=lambda r: r["study_id"])
        clusters = list(studies.values())

        def ci(value, clusters=clusters) -> dict[str, float]:  # this label's clusters
            return bootstrap_mean([[value(r) for r in c] for c in clusters], n_boot, seed)

        by_weights[label] = {
            "reports": len(rows),
            "studies": len(studies),
            "readers": sorted({r["reviewer"] for r in rows}),
            "errors_per_report": {kind: {level: ci(lambda r, k=kind, lv=level: errors_of(r, k, lv)) for level in LEVELS}
                                  for kind in (*ERROR_TYPES, "all")},
            "acceptability": {a: sum(r["acceptability"] == a for r in rows) / len(rows) for a in ACCEPTABILITY},
            "acceptable": ci(lambda r: float(r["acceptability"] in ACCEPTABLE)),
            "agreement": _agreement(rows),
        }
    for label, rows in _grouped(comparisons).items():
        entry = by_weights.setdefault(label, {})
        entry["comparison"] = {
            "comparisons": len(rows),
            **{p: sum(r["preferred"] == p for r in rows) / len(rows) for p in PREFERENCES},
            "left_chosen": sum(r["choice"] == "left" for r in rows) / len(rows),  # a position bias shows here
        }
    return {"bootstrap": {"resamples": n_boot, "seed": seed, "level": LEVEL, "unit": "study"}, "weights": by_weights}


def _grouped(rows: list[dict[str, Any]], key=weights_label) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[key(row)].append(row)
    return dict(groups)


def _agreement(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per pair of readers, over the studies both reviewed (a reader's latest save of a study)."""
    latest = {(r["reviewer"], r["study_id"]): r for r in sorted(rows, key=lambda r: r["saved_at"])}
    readers = sorted({reader for reader, _ in latest})
    pairs = []
    for first, second in combinations(readers, 2):
        shared = sorted({s for reader, s in latest if reader == first} & {s for reader, s in latest if reader == second})
        if len(shared) < 2:
            continue
        a, b = [latest[first, s] for s in shared], [latest[second, s] for s in shared]
        pairs.append({
            "readers": [first, second],
            "studies": len(shared),
            "kappa_acceptability": cohen_kappa([r["acceptability"] for r in a], [r["acceptability"] for r in b],
                                               list(ACCEPTABILITY)),
            "weighted_kappa_acceptability": cohen_kappa([r["acceptability"] for r in a], [r["acceptability"] for r in b],
                                                        list(ACCEPTABILITY), weighting="quadratic"),
            **{f"spearman_{level}_errors": spearman([errors_of(r, "all", level) for r in a],
                                                    [errors_of(r, "all", level) for r in b]) for level in LEVELS},
            "total_errors": [[errors_of(r, "all", "total") for r in a], [errors_of(r, "all", "total") for r in b]],
        })
    return pairs


# ---------------------------------------------------------------- files


def export(db: str | os.PathLike, out: str | os.PathLike, n_boot: int = BOOTSTRAP, seed: int = 0) -> dict[str, Any]:
    """Write judgments.csv, comparisons.csv, summary.json, summary.md and the figures into ``out``;
    returns the summary. Raises FileNotFoundError for a missing database."""
    if not Path(db).is_file():
        raise FileNotFoundError(f"no reader-study database at {db}")
    try:
        study = ReaderStudy(db)
    except sqlite3.DatabaseError as err:
        raise ValueError(f"{db} is not a reader-study database ({err})") from None
    judgments, comparisons = study.judgment_rows(), study.comparison_rows()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    _write_csv(folder / "judgments.csv", judgments,
               [*DRAFT_COLUMNS, "acceptability", *ERROR_COLUMNS, "comments", "edited_report", "draft", "saved_at"])
    _write_csv(folder / "comparisons.csv", comparisons,
               [*DRAFT_COLUMNS, "draft_side", "choice", "preferred", "comments", "draft", "saved_at"])
    summary = summarise(judgments, comparisons, n_boot, seed)
    (folder / "summary.json").write_text(json.dumps(strict_json(summary), indent=2, allow_nan=False), "utf-8")
    (folder / "summary.md").write_text(summary_markdown(summary), "utf-8")
    for name, figure in figures(summary).items():
        figure.savefig(folder / f"{name}.png", dpi=120)
    return summary


def _write_csv(path: Path, rows: list[dict[str, Any]], columns: list[str]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def _ci(value: dict[str, float], digits: int = 2) -> str:
    return f"{value['mean']:.{digits}f} [{value['low']:.{digits}f}, {value['high']:.{digits}f}]"


def _number(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.2f}"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as Markdown tables, one section per weights."""
    boot = summary["bootstrap"]
    lines = ["# Reader study summary", "",
             f"Means per report with {100 * boot['level']:.0f} % bootstrap intervals ({boot['resamples']} resamples of "
             f"studies, seed {boot['seed']}). Acceptable = accept as is or minor edits.", ""]
    for label, entry in summary["weights"].items():
        lines += [f"## {label}", ""]
        if "errors_per_report" in entry:
            lines += [f"{entry['reports']} reviews of {entry['studies']} studies by {', '.join(entry['readers'])}.", "",
                      "| error type | significant | insignificant | total |", "| --- | --- | --- | --- |"]
            for kind, levels in entry["errors_per_report"].items():
                name = ERROR_TYPES.get(kind, "All error types")
                lines.append(f"| {name} | " + " | ".join(_ci(levels[level]) for level in LEVELS) + " |")
            shares = ", ".join(f"{ACCEPTABILITY[a].lower()} {100 * s:.0f} %" for a, s in entry["acceptability"].items())
            acceptable = {k: 100 * v for k, v in entry["acceptable"].items()}
            lines += ["", f"Acceptable: {_ci(acceptable, 0)} % ({shares}).", ""]
            for pair in entry["agreement"]:
                lines.append(
                    f"Agreement of {' and '.join(pair['readers'])} on {pair['studies']} studies: Cohen's kappa on "
                    f"acceptability {_number(pair['kappa_acceptability'])} (quadratic-weighted "
                    f"{_number(pair['weighted_kappa_acceptability'])}); Spearman of errors per report "
                    f"{_number(pair['spearman_total_errors'])} (significant only "
                    f"{_number(pair['spearman_significant_errors'])}).")
            lines.append("")
        if "comparison" in entry:
            c = entry["comparison"]
            lines += [f"Blinded comparison ({c['comparisons']}): draft better {100 * c['draft']:.0f} %, equal "
                      f"{100 * c['equal']:.0f} %, dataset report better {100 * c['reference']:.0f} % "
                      f"(left side chosen {100 * c['left_chosen']:.0f} %).", ""]
    return "\n".join(lines)


def figures(summary: dict[str, Any]) -> dict[str, Figure]:
    """errors (mean per report with intervals), acceptability, and where present the blinded
    comparison and the readers' agreement on errors per report."""
    reviewed = {label: e for label, e in summary["weights"].items() if "errors_per_report" in e}
    compared = {label: e["comparison"] for label, e in summary["weights"].items() if "comparison" in e}
    pairs = [(label, pair) for label, e in reviewed.items() for pair in e["agreement"]]
    made = {}
    if reviewed:
        made["errors"] = _errors_figure(reviewed)
        made["acceptability"] = _shares_figure({k: e["acceptability"] for k, e in reviewed.items()},
                                               list(ACCEPTABILITY.values()), "Overall acceptability")
    if compared:
        made["comparison"] = _shares_figure({k: {p: c[p] for p in PREFERENCES} for k, c in compared.items()},
                                            ["draft better", "equal", "dataset report better"],
                                            "Blinded comparison (unblinded)")
    if pairs:
        made["agreement"] = _agreement_figure(pairs)
    return made


def _figure(width: float, height: float, columns: int = 1) -> tuple[Figure, Any]:
    figure = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(figure)  # the object API: no pyplot state, safe in any thread
    return figure, figure.subplots(1, columns, squeeze=False)[0]


def _errors_figure(reviewed: dict[str, dict[str, Any]]) -> Figure:
    kinds = list(ERROR_TYPES)
    figure, axes = _figure(11, 1.2 + 0.5 * len(kinds) * max(1, len(reviewed)) / 2, columns=len(SIGNIFICANCE))
    height = 0.8 / len(reviewed)
    for ax, level in zip(axes, SIGNIFICANCE):
        for i, (label, entry) in enumerate(reviewed.items()):
            stats = [entry["errors_per_report"][k][level] for k in kinds]
            means = np.array([s["mean"] for s in stats])
            spread = np.array([[s["mean"] - s["low"] for s in stats], [s["high"] - s["mean"] for s in stats]])
            ax.barh(np.arange(len(kinds)) + i * height, means, height, xerr=spread, capsize=3, label=label)
        ax.set_yticks(np.arange(len(kinds)) + height * (len(reviewed) - 1) / 2,
                      [ERROR_TYPES[k] for k in kinds] if level == SIGNIFICANCE[0] else [""] * len(kinds), fontsize=8)
        ax.invert_yaxis()
        ax.set_xlabel("mean errors per report (95 % CI)")
        ax.set_title(f"clinically {level}")
    axes[0].legend(fontsize=8)
    return figure


def _shares_figure(shares: dict[str, dict[str, float]], names: list[str], title: str) -> Figure:
    figure, (ax,) = _figure(9, 1.2 + 0.6 * len(shares))
    left = np.zeros(len(shares))
    colours = ["#2e7d32", "#9ccc65", "#ffb74d", "#d32f2f"] if len(names) == 4 else ["#2e7d32", "#bdbdbd", "#1565c0"]
    for j, name in enumerate(names):
        values = np.array([100 * list(s.values())[j] for s in shares.values()])
        ax.barh(np.arange(len(shares)), values, left=left, label=name, color=colours[j])
        left += values
    ax.set_yticks(np.arange(len(shares)), list(shares), fontsize=8)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("% of reports")
    ax.set_title(title)
    figure.legend(ncols=len(names), fontsize=8, loc="outside lower center")
    return figure


def _agreement_figure(pairs: list[tuple[str, dict[str, Any]]]) -> Figure:
    figure, axes = _figure(4.2 * len(pairs), 4.2, columns=len(pairs))
    rng = np.random.default_rng(0)
    for ax, (label, pair) in zip(axes, pairs):
        first, second = (np.array(v, dtype=np.float64) for v in pair["total_errors"])
        jitter = rng.uniform(-0.12, 0.12, size=(2, len(first)))  # equal counts would hide each other
        ax.scatter(first + jitter[0], second + jitter[1], alpha=0.7)
        top = max(first.max(), second.max(), 1) + 0.5
        ax.plot([0, top], [0, top], color="grey", lw=0.8)
        ax.set_xlabel(f"errors per report: {pair['readers'][0]}")
        ax.set_ylabel(f"errors per report: {pair['readers'][1]}")
        ax.set_title(f"{label}\nSpearman {_number(pair['spearman_total_errors'])}, "
                     f"kappa {_number(pair['kappa_acceptability'])}", fontsize=9)
    return figure
