"""A tiny end-to-end fit + evaluate on a dataset written in the R2Gen layout."""
from __future__ import annotations

import json

import pytest
from model_fixtures import write_tiny_dataset

from train import evaluate as evaluate_cli
from train.config import TrainConfig
from train.fit import fit, lr_lambda, parse_overrides


def test_schedule_warms_up_then_decays_to_the_floor():
    cfg = TrainConfig(lr=1e-3, min_lr=1e-4, warmup_steps=10, warmup_start_lr=1e-6)
    f = lr_lambda(cfg, total_steps=110)
    assert f(0) == pytest.approx(1e-3) and f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.55) and f(110) == pytest.approx(0.1)


def test_overrides_parse_json_values():
    assert parse_overrides(["epochs=2", "model={\"lre\": {\"enabled\": false}}", "out_dir=runs/x"]) == {
        "epochs": 2,
        "model": {"lre": {"enabled": False}},
        "out_dir": "runs/x",
    }


def test_a_loaded_config_records_the_arguments_that_reproduce_it():
    import shlex

    cfg = TrainConfig.load("synthcxr-small", epochs=5, out_dir="runs/a b", model={"vision": {"image_size": 96}})
    argv = shlex.split(cfg.origin)
    assert argv[:2] == ["--config", "synthcxr-small"] and argv[2] == "--set"
    assert TrainConfig.load(argv[1], **parse_overrides(argv[3:])) == cfg
    assert TrainConfig.load("synthcxr-small").origin == "--config synthcxr-small"


def test_a_model_override_is_merged_into_the_configs_model():
    base = TrainConfig.load("iu-xray-small").model
    cfg = TrainConfig.load("iu-xray-small", model={"lre": {"enabled": False}, "vision": {"image_size": 96}})
    assert cfg.model == {**base, "lre": {"enabled": False}, "vision": {**base["vision"], "image_size": 96}}
    assert cfg.model["vision"]["n_views"] == 2 and cfg.model["decoder"] == base["decoder"]  # kept


def test_a_run_from_before_the_nested_config_still_loads():
    """train_config.json of older runs holds flat model overrides and the old vocabulary name."""
    old = TrainConfig.from_dict({"model": {"use_lre": False, "image_size": 96, "alpha": 1.0}, "vocab_size": 300})
    assert old.wordpiece_vocab_size == 300
    assert old.model == {"lre": {"enabled": False, "rank_weight": 1.0}, "vision": {"image_size": 96}}
    assert not old.model_config().lre.enabled and old.model_config().vision.image_size == 96


@pytest.mark.slow
def test_tiny_fit_resume_and_evaluate(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data", masks=True)
    cfg = TrainConfig(
        data=str(data), preset="tiny", wordpiece_vocab_size=200, epochs=1, batch_size=4, lr=1e-3, min_lr=1e-4,
        warmup_steps=2, log_every=1, out_dir=str(tmp_path / "run"),
    )
    best = fit(cfg)
    run = tmp_path / "run"
    assert (best / "model.safetensors").is_file() and (best / "reference_index.json").is_file()
    files = {p.name for p in run.iterdir()}
    assert {"train_config.json", "git_commit.txt", "train.csv", "val.csv", "model_config.json"} <= files
    assert "rank" in (run / "train.csv").read_text().splitlines()[0]
    assert "val_loss" in (run / "val.csv").read_text().splitlines()[0]

    # resuming continues from the checkpoint instead of starting over
    cfg.epochs = 2
    fit(cfg, resume=True)
    assert "resumed from" in capsys.readouterr().out
    assert json.loads((run / "checkpoint" / "state.json").read_text())["epoch"] == 2

    out = tmp_path / "results.json"
    evaluate_cli.main(["--weights", str(best), "--data", str(data), "--split", "test", "--out", str(out)])
    result = json.loads(out.read_text())
    assert result["n"] == 4
    assert set(result["nlg"]) == {"BLEU_1", "BLEU_2", "BLEU_3", "BLEU_4", "METEOR", "ROUGE_L"}
    assert {"micro", "macro", "example", "per_class", "head", "tail"} <= set(result["ce"])
    assert 0 <= result["avg"] <= 1 and "hamming" in result["retrieval"]
    assert result["grounding"]["overall"]["n"] >= 1
    strict, tolerant = result["grounding"]["overall"], result["grounding_15px"]["overall"]
    assert tolerant["n"] == strict["n"] and tolerant["pointing_game"] >= strict["pointing_game"]


@pytest.mark.slow
def test_image_warmup_epochs_train_the_image_side_alone(tmp_path, capsys):
    import csv

    data = write_tiny_dataset(tmp_path / "data", masks=True)
    cfg = TrainConfig(
        data=str(data), preset="tiny", wordpiece_vocab_size=200, epochs=2, image_warmup_epochs=1, batch_size=4,
        lr=1e-3, min_lr=1e-4, warmup_steps=2, log_every=1, out_dir=str(tmp_path / "run"),
        model={"fvtaf": {"grounding_weight": 1.0}},
    )
    best = fit(cfg)
    rows = list(csv.DictReader((tmp_path / "run" / "train.csv").open()))
    warmup = [r for r in rows if r["epoch"] == "1"]
    full = [r for r in rows if r["epoch"] == "2"]
    assert warmup and full
    assert all(float(r["lm"]) == 0 and float(r["cls"]) == 0 and float(r["entity"]) > 0 for r in warmup)
    assert any(float(r["ground"]) > 0 for r in warmup)  # the masked effusions are in the warm-up too
    assert all(float(r["lm"]) > 0 for r in full)
    assert [r["epoch"] for r in csv.DictReader((tmp_path / "run" / "val.csv").open())] == ["2"]
    assert "image warm-up" in capsys.readouterr().out
    assert json.loads((best / "val_metrics.json").read_text())["epoch"] == 2


def test_grounding_without_masks_in_the_data_is_refused(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", masks=False)
    cfg = TrainConfig(data=str(data), preset="tiny", wordpiece_vocab_size=200, epochs=1, out_dir=str(tmp_path / "run"),
                      model={"fvtaf": {"grounding_weight": 1.0}})
    with pytest.raises(SystemExit, match="no training study .* has finding masks"):
        fit(cfg)


def test_image_warmup_must_leave_full_epochs():
    with pytest.raises(SystemExit, match="image_warmup_epochs"):
        TrainConfig(epochs=2, image_warmup_epochs=2)


def test_the_abnormal_sampler_draws_abnormal_studies_at_the_asked_share(tmp_path):
    import torch

    from rrg_core.datasets import load_split
    from rrg_core.observations import is_abnormal
    from rrg_core.study_dataset import abnormal_sampler

    studies = load_split(write_tiny_dataset(tmp_path), "train")
    abnormal = [is_abnormal(s.labels) for s in studies]
    assert sum(abnormal) / len(studies) > 0.5  # so a share of 0.25 moves the mix
    sampler = abnormal_sampler(studies, 0.25, torch.Generator().manual_seed(0))
    draws = [i for _ in range(400) for i in sampler]
    assert len(draws) == 400 * len(studies)
    assert abs(sum(abnormal[i] for i in draws) / len(draws) - 0.25) < 0.03
    for share in (0.0, 1.0, 1.5):
        with pytest.raises(ValueError, match="strictly between 0 and 1"):
            abnormal_sampler(studies, share, torch.Generator())
    with pytest.raises(ValueError, match="both normal and abnormal"):
        abnormal_sampler([s for s, a in zip(studies, abnormal) if not a], 0.5, torch.Generator())
