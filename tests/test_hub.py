"""Hub access against a mocked transport: the real Hub is never contacted in tests."""
from __future__ import annotations

import fnmatch
import shutil

import huggingface_hub
import pytest
import torch
from model_fixtures import tiny_batch, tiny_model, tiny_tokenizer

from rrg_core.hub import WEIGHT_FILE_PATTERNS, WeightsUnavailable, parse_weights_spec, resolve_weights
from rrg_core.model import REVTAF
from rrg_core.pipeline import ReportPipeline


def test_spec_parsing():
    assert parse_weights_spec("org/repo@v2") == ("org/repo", "v2")
    assert parse_weights_spec("org/repo") == ("org/repo", None)
    with pytest.raises(ValueError):
        parse_weights_spec("just-a-name")


def test_offline_hub_request_fails_with_one_clear_sentence(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsUnavailable, match="offline"):
        resolve_weights("someone/revtaf-weights@main", cache_dir=str(tmp_path))


def test_missing_local_folder_is_not_mistaken_for_a_repo(tmp_path):
    with pytest.raises(WeightsUnavailable, match="does not exist"):
        resolve_weights(tmp_path / "nope" / "weights")


def test_download_asks_only_for_safe_files_and_loads(monkeypatch, tmp_path):
    model, batch = tiny_model()
    model.eval()
    saved = tmp_path / "snapshot"
    model.save_pretrained(saved)
    (saved / "pytorch_model.bin").write_bytes(b"not to be fetched")
    calls = []

    def fake_snapshot_download(repo_id, *, revision, allow_patterns, cache_dir, repo_type, **_):
        calls.append((repo_id, revision, tuple(allow_patterns)))
        return str(saved)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot_download)
    loaded = REVTAF.from_pretrained("org/revtaf@v1")
    assert calls == [("org/revtaf", "v1", tuple(WEIGHT_FILE_PATTERNS))]
    assert not any(fnmatch.fnmatch("pytorch_model.bin", p) for p in WEIGHT_FILE_PATTERNS)
    assert not any(fnmatch.fnmatch("model.pt", p) for p in WEIGHT_FILE_PATTERNS)
    texts = [ReportPipeline(m).generate(batch["images"][:1])[0].text for m in (loaded, model)]
    assert texts[0] == texts[1]


def test_push_uploads_the_saved_folder(monkeypatch):
    model, _ = tiny_model()
    uploaded = {}

    class FakeApi:
        def __init__(self, token=None):
            uploaded["token"] = token

        def create_repo(self, repo_id, **kwargs):
            uploaded["repo"] = repo_id

        def create_branch(self, repo_id, branch, **kwargs):
            uploaded["branch"] = branch

        def upload_folder(self, *, folder_path, repo_id, revision, allow_patterns, **kwargs):
            from pathlib import Path

            uploaded["files"] = sorted(p.name for p in Path(folder_path).iterdir())
            uploaded["revision"] = revision
            return type("Info", (), {"commit_url": f"https://hf.co/{repo_id}/commit/abc"})()

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeApi)
    url = model.push_to_hub("org/revtaf", revision="exp1", token="t")
    assert url.endswith("/commit/abc")
    assert uploaded["repo"] == "org/revtaf" and uploaded["branch"] == "exp1" and uploaded["revision"] == "exp1"
    assert {"config.json", "model.safetensors", "tokenizer.json", "reference_index.json"} <= set(uploaded["files"])


def test_a_saved_model_whose_parts_came_from_the_hub_loads_without_the_hub(tmp_path):
    """The paper preset starts from Hub weights (ResNet-101, Bio_ClinicalBERT, BERT-base). Saved,
    the folder carries those parts' configs and the text encoder's tokenizer, so loading it
    downloads nothing: here the "Hub" is a local folder that is deleted before loading."""
    from transformers import BertConfig, BertLMHeadModel, BertModel, ResNetConfig, ResNetModel

    from rrg_core.config import REVTAFConfig
    from rrg_core.indexing import build_index

    tokenizer = tiny_tokenizer()
    hub = tmp_path / "hub"
    ResNetModel(ResNetConfig(num_channels=3, embedding_size=8, hidden_sizes=[8, 16, 32], depths=[1, 1, 1])
                ).save_pretrained(hub / "resnet")
    bert = dict(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                intermediate_size=64)
    BertModel(BertConfig(**bert), add_pooling_layer=False).save_pretrained(hub / "text")
    tokenizer.save_pretrained(hub / "text")
    BertLMHeadModel(BertConfig(**bert, is_decoder=True, add_cross_attention=True)).save_pretrained(hub / "decoder")
    config = REVTAFConfig.preset("tiny", vision={"hub_id": str(hub / "resnet")}, text={"hub_id": str(hub / "text")},
                                 decoder={"hub_id": str(hub / "decoder"), "vocab_size": len(tokenizer)})
    model = REVTAF(config, tokenizer).eval()
    batch = tiny_batch(tokenizer, config)
    model.index = build_index(model, [batch])
    model.save_pretrained(tmp_path / "saved")
    shutil.rmtree(hub)

    loaded = REVTAF.from_pretrained(tmp_path / "saved")
    assert loaded.visual.in_channels == 3 and loaded.text.tokenizer is not loaded.tokenizer
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    texts = [ReportPipeline(m).generate(batch["images"][:1])[0].text for m in (loaded, model)]
    assert texts[0] == texts[1]
