"""Ablations of the paper's supplementary Tables 1-3 and Figure 3, at small scale.

    python -m train.ablations --config synthcxr-ablation --seeds 0 1 2 --out docs/ablations-synthcxr.md

Every variant is trained with ``train.fit`` and evaluated with ``rrg_core.evaluation`` on the
test split, once per seed; the Markdown report gives mean +- std over seeds. Finished runs
(``results.json`` present) are reused, so an interrupted ablation continues where it stopped.
``--jobs N`` trains N runs at once, each in its own process (log in its run folder): on a CPU
each gets its share of the cores, on a machine with GPUs each its own GPU in turn.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import queue
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from rrg_core.config import merge_overrides
from rrg_core.datasets import load_split
from rrg_core.evaluation import evaluate
from rrg_core.metrics import PAPER_COLUMNS
from rrg_core.observations import HEAD, TAIL
from rrg_core.pipeline import ReportPipeline

from .config import TrainConfig
from .fit import fit, resolve_data

VARIANTS: dict[str, dict] = {
    "baseline (PromptMRG-like)": {"lre": {"enabled": False}, "fvtaf": {"enabled": False}},
    "+LRE": {"lre": {"enabled": True}, "fvtaf": {"enabled": False}},
    "+FVTAF": {"lre": {"enabled": False}, "fvtaf": {"enabled": True}},
    "REVTAF (LRE + FVTAF)": {},
    "REVTAF, cosine retrieval": {"retrieval": {"metric": "cosine"}},
    "REVTAF, euclidean retrieval": {"retrieval": {"metric": "euclidean"}},
    "REVTAF, softmax cross-attention": {"fvtaf": {"mpsa": False}},
}
TABLES = {
    "Table 1: components": ["baseline (PromptMRG-like)", "+LRE", "+FVTAF", "REVTAF (LRE + FVTAF)"],
    "Table 2: retrieval metric": ["REVTAF (LRE + FVTAF)", "REVTAF, cosine retrieval", "REVTAF, euclidean retrieval"],
    "Table 3: attention": ["REVTAF (LRE + FVTAF)", "REVTAF, softmax cross-attention"],
}
FIGURE3 = {"baseline": "baseline (PromptMRG-like)", "REVTAF": "REVTAF (LRE + FVTAF)", "REVTAF w/o LRE": "+FVTAF"}


def slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-").replace("--", "-")


def results_file(root: Path, name: str, seed: int) -> Path:
    """Where a variant's run for one seed keeps its evaluation; the run folder is its parent."""
    return root / slug(name) / f"seed{seed}" / "results.json"


def run_variant(base: TrainConfig, name: str, seed: int, root: Path, test_limit: int | None) -> dict:
    done = results_file(root, name, seed)
    out = done.parent
    if done.is_file():
        return json.loads(done.read_text())
    cfg = dataclasses.replace(base, seed=seed, out_dir=str(out), model=merge_overrides(base.model, VARIANTS[name]))
    # The image warm-up trains the entity scores, which only LRE/FVTAF have: the baseline spends
    # the same number of epochs on the full objective instead.
    variant = cfg.model_config()
    if not variant.aligns:
        cfg.image_warmup_epochs = 0
    torch.manual_seed(seed)
    best = fit(cfg)
    reporter = ReportPipeline.from_pretrained(best)
    studies = load_split(resolve_data(cfg), "test")[:test_limit]
    result = evaluate(reporter, studies, dataset=cfg.dataset, progress=False)
    done.write_text(json.dumps(result, indent=2))
    return result


def run_in_processes(args: argparse.Namespace, pending: list[tuple[str, int]], root: Path) -> list[str]:
    """Train ``pending`` (variant, seed) runs ``args.jobs`` at a time, one process per run;
    returns the runs that failed."""
    gpus = torch.cuda.device_count()
    threads = max(1, (os.cpu_count() or 1) // args.jobs)

    slots: queue.Queue[int] = queue.Queue()  # which GPU a running job holds
    for job in range(args.jobs):
        slots.put(job)

    def launch(name: str, seed: int) -> str | None:
        env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
        slot = slots.get()
        if gpus:
            env["CUDA_VISIBLE_DEVICES"] = str(slot % gpus)
        log = results_file(root, name, seed).with_name("log.txt")
        log.parent.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "train.ablations", "--config", args.config, "--seeds", str(seed),
                   "--variants", name, "--runs", args.runs, "--out", str(log.with_name("report.md"))]
        if args.test_limit is not None:
            command += ["--test-limit", str(args.test_limit)]
        try:
            with log.open("w") as stream:
                done = subprocess.run(command, env=env, stdout=stream, stderr=subprocess.STDOUT)
        finally:
            slots.put(slot)
        outcome = "done" if done.returncode == 0 else f"failed (exit {done.returncode}), see {log}"
        print(f"{name}, seed {seed}: {outcome}", flush=True)
        return None if done.returncode == 0 else f"{name}, seed {seed}: {outcome}"

    with ThreadPoolExecutor(args.jobs) as pool:
        outcomes = list(pool.map(lambda item: launch(*item), pending))
    return [o for o in outcomes if o]


def mean_std(values: list[float]) -> str:
    a = np.asarray(values, dtype=float)
    return f"{a.mean():.3f} ± {a.std(ddof=1) if len(a) > 1 else 0.0:.3f}"


def report(results: dict[str, list[dict]], command: str, title: str) -> str:
    columns = [*PAPER_COLUMNS, "avg"]
    lines = [f"# {title}", "", "Reproduce with:", "", "```bash", command, "```", "",
             "Mean ± sample std over the seeds (column n); P/R/F1 example-based "
             "(as the paper); CE labels from rrg_core.label_report; n = 0: not run yet.", ""]
    extra = ["CE micro-F1", "retrieval P@1", "Hamming", "pointing game"]
    for table, names in TABLES.items():
        lines += [f"## {table}", "", "| variant | n | " + " | ".join(columns + extra) + " |",
                  "| --- | --- |" + " --- |" * (len(columns) + len(extra))]
        for name in names:
            runs = results.get(name)
            if not runs:  # listed, so that a partial grid shows what is missing
                lines.append(f"| {name} | 0 | " + " | ".join(["-"] * (len(columns) + len(extra))) + " |")
                continue
            cells = [mean_std([r["paper"][c] for r in runs]) for c in columns]
            cells.append(mean_std([r["ce"]["micro"]["f1"] for r in runs]))
            cells.append(mean_std([r["retrieval"]["precision_at_1"] for r in runs]))
            cells.append(mean_std([r["retrieval"]["hamming"] for r in runs]))
            grounded = [r["grounding"]["overall"]["pointing_game"] for r in runs if "grounding" in r]
            cells.append(mean_std(grounded) if grounded else "-")
            lines.append(f"| {name} | {len(runs)} | " + " | ".join(cells) + " |")
        lines.append("")
    lines += ["## Figure 3: per-class F1, head vs tail", "",
              "| class | group | " + " | ".join(FIGURE3) + " |", "| --- | --- |" + " --- |" * len(FIGURE3)]
    for group, classes in (("head", HEAD), ("tail", TAIL)):
        for c in classes:
            cells = [mean_std([r["ce"]["per_class"][c]["f1"] for r in results[v]]) if results.get(v) else "-"
                     for v in FIGURE3.values()]
            lines.append(f"| {c} | {group} | " + " | ".join(cells) + " |")
        cells = [mean_std([r["ce"][group]["f1"] for r in results[v]]) if results.get(v) else "-" for v in FIGURE3.values()]
        lines.append(f"| **{group} (micro)** | {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description="Run the REVTAF ablations and write a Markdown report.")
    parser.add_argument("--config", default="synthcxr-ablation")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS), metavar="NAME")
    parser.add_argument("--test-limit", type=int, default=None)
    parser.add_argument("--runs", default="runs/ablations", help="folder of the per-variant runs")
    parser.add_argument("--out", required=True, help="Markdown file to write (e.g. docs/ablations-synthcxr.md)")
    parser.add_argument("--title", default=None)
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once, one process each")
    parser.add_argument("--report-only", action="store_true", help="write the tables from finished runs only")
    args = parser.parse_args(argv)

    base = TrainConfig.load(args.config)
    root = Path(args.runs) / Path(args.config).stem
    if args.jobs > 1 and not args.report_only:
        pending = [(name, s) for name in args.variants for s in args.seeds
                   if not results_file(root, name, s).is_file()]
        failed = run_in_processes(args, pending, root)
        if failed:
            raise SystemExit("ablation runs failed:\n" + "\n".join(failed))
    if args.report_only:  # the tables from the runs that have finished, training nothing
        results = {name: [json.loads(f.read_text()) for s in args.seeds if (f := results_file(root, name, s)).is_file()]
                   for name in args.variants}
    else:
        results = {name: [run_variant(base, name, s, root, args.test_limit) for s in args.seeds]
                   for name in args.variants}
    # The command that trains what the tables show (--report-only only collects it).
    given = [a for a in (argv if argv is not None else sys.argv[1:]) if a != "--report-only"]
    command = "python -m train.ablations " + " ".join(shlex.quote(a) for a in given)
    text = report(results, command, args.title or f"Ablations on {Path(base.data).name} ({Path(args.config).stem})")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    print(text)
    return text


if __name__ == "__main__":
    main()
