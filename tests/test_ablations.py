from __future__ import annotations

import json

import pytest
from model_fixtures import write_tiny_dataset

from rrg_core.observations import OBSERVATIONS
from train.ablations import VARIANTS, mean_std, report, run_variant
from train.config import TrainConfig


def fake_result(f1: float) -> dict:
    block = {"precision": f1, "recall": f1, "f1": f1}
    return {
        "paper": {c: f1 for c in ("B1", "B2", "B3", "B4", "METEOR", "ROUGE-L", "P", "R", "F1", "avg")},
        "ce": {"micro": block, "head": block, "tail": block, "per_class": {o: {"f1": f1} for o in OBSERVATIONS}},
        "retrieval": {"precision_at_1": f1, "hamming": 1.0},
    }


def test_mean_std_uses_the_sample_std():
    assert mean_std([0.1, 0.3]) == "0.200 ± 0.141"
    assert mean_std([0.5]) == "0.500 ± 0.000"


def test_report_has_every_table_and_the_head_tail_figure():
    results = {name: [fake_result(0.1 * (i + 1)), fake_result(0.1 * (i + 2))] for i, name in enumerate(VARIANTS)}
    text = report(results, "python -m train.ablations --out x.md", "T")
    for heading in ("Table 1: components", "Table 2: retrieval metric", "Table 3: attention", "Figure 3"):
        assert heading in text
    assert "| baseline (PromptMRG-like) | 2 | 0.150 ± 0.071" in text
    assert "| Fracture | tail |" in text and "**head (micro)**" in text
    assert "python -m train.ablations --out x.md" in text


@pytest.mark.slow
def test_a_variant_trains_evaluates_and_is_reused(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    base = TrainConfig(data=str(data), preset="tiny", wordpiece_vocab_size=200, epochs=1, batch_size=4, warmup_steps=1)
    first = run_variant(base, "+LRE", 0, tmp_path / "runs", test_limit=2)
    assert first["n"] == 2
    saved = tmp_path / "runs" / "lre" / "seed0"
    config = json.loads((saved / "best" / "config.json").read_text())
    assert config["lre"]["enabled"] is True and config["fvtaf"]["enabled"] is False
    (saved / "results.json").write_text(json.dumps({**first, "n": -1}))
    assert run_variant(base, "+LRE", 0, tmp_path / "runs", test_limit=2)["n"] == -1


def test_jobs_train_in_parallel_processes_each_with_its_share_and_its_gpu(tmp_path, monkeypatch):
    """--jobs: one process per run, the cores split between the concurrent runs, concurrent runs
    on different GPUs, and a failed run reported (not silently retrained in-process)."""
    import argparse
    import subprocess
    import threading

    from train import ablations

    both_running = threading.Barrier(2, timeout=10)
    lock = threading.Lock()
    runs, first_two = [], []

    def fake_run(command, env, stdout, stderr):
        name = command[command.index("--variants") + 1]
        seed = int(command[command.index("--seeds") + 1])
        with lock:
            runs.append((name, seed, env["OMP_NUM_THREADS"]))
            starting_first = len(runs) <= 2
        if starting_first:  # the first two runs must be alive at the same time, on different GPUs
            both_running.wait()
            first_two.append(env["CUDA_VISIBLE_DEVICES"])
        return subprocess.CompletedProcess(command, 3 if name == "+LRE" else 0)

    monkeypatch.setattr(ablations.subprocess, "run", fake_run)
    monkeypatch.setattr(ablations.os, "cpu_count", lambda: 8)
    monkeypatch.setattr(ablations.torch.cuda, "device_count", lambda: 2)
    args = argparse.Namespace(jobs=2, config="synthcxr-ablation", runs=str(tmp_path), test_limit=5)
    pending = [("+LRE", 0), ("+FVTAF", 0), ("+FVTAF", 1)]
    failed = ablations.run_in_processes(args, pending, tmp_path / "root")

    assert sorted((n, s) for n, s, _ in runs) == sorted(pending)
    assert {threads for _, _, threads in runs} == {"4"}
    assert sorted(first_two) == ["0", "1"]
    assert len(failed) == 1 and failed[0].startswith("+LRE, seed 0: failed (exit 3)")
    assert (tmp_path / "root" / "lre" / "seed0" / "log.txt").is_file()


def test_report_only_writes_the_tables_from_finished_runs_and_trains_nothing(tmp_path, monkeypatch):
    from train import ablations

    monkeypatch.setattr(ablations, "fit", lambda *a, **k: pytest.fail("--report-only must not train"))
    root = tmp_path / "runs" / "synthcxr-ablation"
    for name, seeds in (("+LRE", (0, 1, 2)), ("+FVTAF", (0,))):
        for seed in seeds:
            folder = root / ablations.slug(name) / f"seed{seed}"
            folder.mkdir(parents=True)
            (folder / "results.json").write_text(json.dumps(fake_result(0.1 * (seed + 1))))
    out = tmp_path / "ablations.md"
    text = ablations.main(["--variants", "+LRE", "+FVTAF", "REVTAF (LRE + FVTAF)", "--runs", str(tmp_path / "runs"),
                           "--report-only", "--out", str(out)])
    assert out.read_text() == text
    assert "| +LRE | 3 | 0.200 ± 0.100" in text and "| +FVTAF | 1 | 0.100 ± 0.000" in text
    assert "| REVTAF (LRE + FVTAF) | 0 | - |" in text  # no finished run: listed as not run
    assert "--report-only" not in text  # the command shown is the one that trains the runs


@pytest.mark.parametrize(("name", "warmup"), [("baseline (PromptMRG-like)", 0), ("+LRE", 2), ("+FVTAF", 2)])
def test_only_variants_with_entity_scores_get_the_image_warmup(tmp_path, monkeypatch, name, warmup):
    from train import ablations

    class Trained(Exception):
        pass

    def fake_fit(cfg):
        assert (cfg.image_warmup_epochs, cfg.epochs) == (warmup, 5)
        raise Trained

    monkeypatch.setattr(ablations, "fit", fake_fit)
    base = TrainConfig(preset="tiny", epochs=5, image_warmup_epochs=2)
    with pytest.raises(Trained):
        run_variant(base, name, 0, tmp_path, test_limit=1)
