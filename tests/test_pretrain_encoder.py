"""Supervised encoder pretraining on a tiny dataset, and the init_visual hook that starts a run from it."""
from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import write_tiny_dataset
from safetensors import safe_open

from rrg_core.config import REVTAFConfig
from rrg_core.datasets import load_annotation
from rrg_core.visual_encoder import VisualEncoder
from train.config import TrainConfig
from train.fit import make_model
from train.pretrain_encoder import film_augment, load_visual, main, save_visual


def test_pretraining_trains_selects_and_saves_only_visual_weights(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    main(["--data", str(data), "--out", str(out), "--image-size", "64", "--views", "1", "--epochs", "2",
          "--batch-size", "4", "--min-positives", "1", "--seed", "3"])
    result = json.loads((out / "pretrain.json").read_text())
    assert [row["epoch"] for row in result["epochs"]] == [1, 2]
    assert all(0 <= row["val_auroc"] <= 1 for row in result["epochs"])
    assert result["joint_head"]["best_epoch"] == max(result["epochs"], key=lambda r: r["val_auroc"])["epoch"]
    assert 0 <= result["probe"]["test_auroc"] <= 1 and result["probe"]["weight_decay"] > 0
    assert "linear probe" in capsys.readouterr().out

    with safe_open(str(out / "visual.safetensors"), framework="pt") as f:
        assert all(name.startswith("visual.") for name in f.keys())  # noqa: SIM118 (a handle)
    config = REVTAFConfig.preset("small", vision={"image_size": 64, "n_views": 1})
    torch.manual_seed(3)
    initial = VisualEncoder(config)  # the encoder the run started from (same seed)
    trained = VisualEncoder(config)
    load_visual(trained, out / "visual.safetensors")
    before, after = initial.state_dict(), trained.state_dict()
    assert any(not torch.equal(before[k], after[k]) for k in before), "training left the encoder unchanged"


def test_an_encoder_of_another_size_is_refused(tmp_path):
    path = tmp_path / "visual.safetensors"
    save_visual(VisualEncoder(REVTAFConfig.preset("tiny")), path)
    with pytest.raises(ValueError, match="wrong shape"):
        load_visual(VisualEncoder(REVTAFConfig.preset("tiny", vision={"image_size": 128})), path)
    with pytest.raises(FileNotFoundError, match="init_visual"):
        load_visual(VisualEncoder(REVTAFConfig.preset("tiny")), tmp_path / "absent.safetensors")


def test_init_visual_starts_a_training_run_from_the_pretrained_encoder(tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    torch.manual_seed(7)
    pretrained = VisualEncoder(REVTAFConfig.preset("tiny"))
    path = tmp_path / "visual.safetensors"
    save_visual(pretrained, path)
    studies = load_annotation(data)["train"]
    cfg = TrainConfig(data=str(data), preset="tiny", wordpiece_vocab_size=200, init_visual=str(path))
    model = make_model(cfg, studies, tmp_path / "run", resume=False)
    for name, tensor in pretrained.state_dict().items():
        assert torch.equal(model.visual.state_dict()[name], tensor), name
    fresh = make_model(TrainConfig(data=str(data), preset="tiny", wordpiece_vocab_size=200), studies,
                       tmp_path / "fresh", resume=False)
    assert not torch.equal(fresh.visual.position_embedding, pretrained.position_embedding)


def test_film_augmentation_never_swaps_the_patients_sides():
    config = REVTAFConfig.preset("tiny")
    images = torch.full((8, 1, 1, 64, 64), -1.0)
    images[..., :32] = 1.0  # the image's left half bright
    augmented = film_augment(images, config, torch.Generator().manual_seed(0))
    assert augmented.shape == images.shape and torch.isfinite(augmented).all()
    assert not torch.equal(augmented, images)
    left, right = augmented[..., 8:28].mean((-1, -2, -3, -4)), augmented[..., 36:56].mean((-1, -2, -3, -4))
    assert (left > right + 1).all()
