"""Index building and publishing scripts (the Hub is mocked)."""
from __future__ import annotations

import huggingface_hub
import pytest
from model_fixtures import tiny_model, write_tiny_dataset

from rrg_core.pretrained import from_pretrained
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
    model = from_pretrained(saved)
    assert len(model.index) == 12 and model.index.texts is None
    assert model.index.study_ids[0] == "train0"
    with_texts = from_pretrained(saved, texts_from={f"train{i}": f"report {i}" for i in range(12)})
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
