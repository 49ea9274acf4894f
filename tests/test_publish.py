"""Index building and publishing scripts (the Hub is mocked)."""
from __future__ import annotations

import huggingface_hub
import pytest
from model_fixtures import tiny_model, write_tiny_dataset

from rrg_core.model import REVTAF
from rrg_core.pipeline import ReportPipeline
from train import build_index as build_index_cli
from train import push_to_hub as push_cli
from train.model_card import DISCLAIMER, write_model_card


@pytest.fixture
def saved(tmp_path):
    model, _ = tiny_model()
    model.save_pretrained(tmp_path / "weights")
    return tmp_path / "weights"


def test_model_card_names_data_licence_and_disclaimer(saved):
    card = write_model_card(saved, title="t", training_data="SynthCXR phantoms", license="apache-2.0",
                            command="python -m train.fit --config synthcxr-small", metrics={"CE micro-F1": 0.9})
    text = card.read_text()
    assert text.startswith("---\nlicense: apache-2.0") and "**Training data:** SynthCXR phantoms" in text
    assert DISCLAIMER in text and "| CE micro-F1 | 0.900 |" in text


def test_build_index_can_drop_report_text(saved, tmp_path):
    data = write_tiny_dataset(tmp_path / "data")
    build_index_cli.main(["--weights", str(saved), "--data", str(data), "--no-texts"])
    index = REVTAF.from_pretrained(saved).index
    assert len(index) == 12 and index.texts is None
    assert index.study_ids[0] == "train0"
    with_texts = REVTAF.from_pretrained(saved, texts_from={f"train{i}": f"report {i}" for i in range(12)})
    assert with_texts.index.texts[3] == "report 3"


def test_push_refuses_without_a_model_card_and_uploads_with_one(saved, monkeypatch):
    calls = []

    class FakeApi:
        def __init__(self, token=None):
            pass

        def create_repo(self, repo_id, **kwargs):
            calls.append(("create", repo_id))

        def upload_folder(self, **kwargs):
            calls.append(("upload", kwargs["repo_id"]))
            return type("Info", (), {"commit_url": "https://hf.co/c"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    with pytest.raises(SystemExit, match="model card"):
        push_cli.main(["--folder", str(saved), "--repo", "org/m"])
    assert calls == []
    write_model_card(saved, title="t", training_data="d", license="apache-2.0", command="c")
    assert push_cli.main(["--folder", str(saved), "--repo", "org/m"]) == "https://hf.co/c"
    assert calls == [("create", "org/m"), ("upload", "org/m")]


def test_push_refuses_broken_weights(saved, monkeypatch):
    write_model_card(saved, title="t", training_data="d", license="apache-2.0", command="c")
    (saved / "model.safetensors").write_bytes(b"garbage")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda **kw: pytest.fail("must not upload"))
    with pytest.raises(ValueError, match="safetensors"):
        push_cli.main(["--folder", str(saved), "--repo", "org/m"])


@pytest.mark.slow
def test_release_evaluates_on_fresh_phantoms_and_writes_a_compact_carded_folder(tmp_path):
    from train import release
    from train.config import TrainConfig
    from train.fit import fit

    data = write_tiny_dataset(tmp_path / "data")
    run = tmp_path / "run"
    fit(TrainConfig(data=str(data), preset="tiny", wordpiece_vocab_size=200, epochs=1, batch_size=4, warmup_steps=1,
                    out_dir=str(run), origin="--config tiny-made-up --set epochs=1"))
    out = tmp_path / "released"
    release.main(["--run", str(run), "--out", str(out), "--eval-phantoms", "8", "--eval-seed", "3", "--half",
                  "--no-texts", "--title", "Tiny", "--training-data", "six made-up reports",
                  "--trained-on", "made-up images"])
    card = (out / "README.md").read_text()
    assert "## Input gate and calibration (measured)" in card and '--trained-on "made-up images"' in card
    assert "**Training data:** six made-up reports" in card and "8 fresh SynthCXR phantoms (seed 3" in card
    assert "| pointing game |" in card and "python -m train.release --run" in card
    assert "python -m train.fit --config tiny-made-up --set epochs=1\n" in card  # the run's own command
    results = __import__("json").loads((out / "eval_results.json").read_text())
    assert results["n"] == 8 and "grounding" in results
    model = ReportPipeline.from_pretrained(out)
    assert model.model.index.texts is None
    assert model.gate.trained_on == "made-up images" and model.calibration is not None
    assert (out / "model.safetensors").stat().st_size < 0.6 * (run / "best" / "model.safetensors").stat().st_size
