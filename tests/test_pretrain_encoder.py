"""Encoder pretraining (supervised, SimCLR, phantoms) on a tiny dataset, and the init_visual hook that
starts a run from it."""
from __future__ import annotations

import json

import pytest
import torch
from model_fixtures import write_tiny_dataset
from safetensors import safe_open

from rrg_core.config import REVTAFConfig
from rrg_core.datasets import load_annotation
from rrg_core.observations import labels_to_states
from rrg_core.phantoms import PhantomConfig, make_phantom
from rrg_core.preprocessing import prepare_study
from rrg_core.visual_encoder import VisualEncoder
from train import pretrain_encoder
from train.config import TrainConfig
from train.fit import make_model
from train.pretrain_encoder import (
    film_augment,
    load_visual,
    main,
    phantom_films,
    pooled_features,
    read_films,
    save_visual,
)
from train.ssl import nt_xent


def test_pretraining_trains_selects_and_saves_only_visual_weights(tmp_path, capsys):
    data = write_tiny_dataset(tmp_path / "data")
    out = tmp_path / "run"
    main(["--data", str(data), "--out", str(out), "--image-size", "64", "--views", "1", "--epochs", "2",
          "--batch-size", "4", "--min-positives", "1", "--seed", "3"])
    result = json.loads((out / "pretrain.json").read_text())
    assert [row["epoch"] for row in result["epochs"]] == [1, 2]
    assert all(0 <= row["val_auroc"] <= 1 for row in result["epochs"])
    assert result["joint_head"]["kept_epoch"] == max(result["epochs"], key=lambda r: r["val_auroc"])["epoch"]
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


def reference_nt_xent(first, second, temperature):
    """NT-Xent written out term by term, as SimCLR's paper states it."""
    z = [v / v.norm() for v in torch.cat([first, second])]
    n, total = len(first), 0.0
    for i in range(2 * n):
        partner = (i + n) % (2 * n)
        others = [torch.exp(z[i] @ z[k] / temperature) for k in range(2 * n) if k != i]
        total += -torch.log(torch.exp(z[i] @ z[partner] / temperature) / sum(others))
    return total / (2 * n)


def test_nt_xent_matches_the_written_out_loss_and_rewards_matching_pairs():
    generator = torch.Generator().manual_seed(0)
    first = torch.randn(6, 5, generator=generator, dtype=torch.float64)
    second = first + 0.1 * torch.randn(6, 5, generator=generator, dtype=torch.float64)
    assert torch.allclose(nt_xent(first, second, 0.3), reference_nt_xent(first, second, 0.3))
    shuffled = second[torch.tensor([1, 2, 3, 4, 5, 0])]
    assert torch.allclose(nt_xent(first, shuffled, 0.3), reference_nt_xent(first, shuffled, 0.3))
    assert nt_xent(first, first, 0.3) < nt_xent(first, second, 0.3) < nt_xent(first, shuffled, 0.3)
    with pytest.raises(ValueError, match="nt_xent needs"):
        nt_xent(first[:1], second[:1], 0.3)


def test_phantom_films_are_labelled_phantoms_read_as_real_films():
    config = REVTAFConfig.preset("tiny", vision={"image_size": 64, "n_views": 2})
    films = phantom_films(5, 4, config)
    assert films.images.shape == (5, 2, 1, 64, 64) and films.images.dtype == torch.float16
    assert torch.equal(films.images[:, 0], films.images[:, 1])  # the generator draws frontal views only
    assert len({films.images[i].sum().item() for i in range(5)}) == 5
    for i in range(5):
        phantom = make_phantom(4, i, PhantomConfig(size=256))
        assert films.states[i].tolist() == labels_to_states(phantom.labels)
        assert torch.equal(films.images[i], prepare_study([phantom.image], config).half())
    assert (films.shipped == films.states).all()


@pytest.mark.parametrize("objective", ["supervised", "simclr", "phantom"])
def test_only_training_films_or_phantoms_are_ever_trained_on(tmp_path, monkeypatch, objective):
    data = write_tiny_dataset(tmp_path / "data")
    config = REVTAFConfig.preset("small", vision={"image_size": 64, "n_views": 1})
    splits = load_annotation(data)
    films = {split: read_films(studies, config).images for split, studies in splits.items()}
    if objective == "phantom":
        films["train"] = phantom_films(6, 0, config).images
    seen = []

    def spy(images, config, generator):
        seen.extend(images.half())
        return film_augment(images, config, generator)

    monkeypatch.setattr(pretrain_encoder, "film_augment", spy)
    main(["--data", str(data), "--out", str(tmp_path / "run"), "--image-size", "64", "--views", "1", "--epochs", "2",
          "--batch-size", "3", "--min-positives", "1", "--objective", objective, "--phantoms", "6", "--keep", "last"])
    assert len(seen) >= 12
    for image in seen:
        assert any(torch.equal(image, film) for film in films["train"])
        assert not any(torch.equal(image, film) for split in ("val", "test") for film in films[split])
    result = json.loads((tmp_path / "run" / "pretrain.json").read_text())
    assert [row["epoch"] for row in result["epochs"]] == [1, 2] and all(r["train_loss"] > 0 for r in result["epochs"])
    assert ("joint_head" in result) == (objective != "simclr")  # SimCLR has no label head to score
    if objective != "simclr":
        assert result["joint_head"]["kept_epoch"] == 2
        assert result["joint_head"]["val_auroc"] == result["epochs"][-1]["val_auroc"]


def test_init_starts_the_encoder_from_saved_weights(tmp_path, monkeypatch):
    data = write_tiny_dataset(tmp_path / "data")
    config = REVTAFConfig.preset("small", vision={"image_size": 64, "n_views": 1})
    torch.manual_seed(11)
    saved = VisualEncoder(config)
    save_visual(saved, tmp_path / "visual.safetensors")
    probed = {}

    def probe(features, films, min_positives):
        probed.update(features)
        return dict.fromkeys(("val_auroc", "test_auroc", "test_auroc_shipped_labels"), 0.5)

    monkeypatch.setattr(pretrain_encoder, "linear_probe", probe)
    main(["--data", str(data), "--out", str(tmp_path / "run"), "--image-size", "64", "--views", "1",
          "--epochs", "0", "--init", str(tmp_path / "visual.safetensors")])
    test_images = read_films(load_annotation(data)["test"], config).images
    assert torch.allclose(probed["test"], pooled_features(saved, test_images))
