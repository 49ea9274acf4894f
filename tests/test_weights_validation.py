"""Weight folders are checked before anything is built: each bad folder gives one sentence and
exit code 2 from the CLI and app.py, never a traceback, a huge allocation or a NaN report."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from model_fixtures import tiny_model
from safetensors.torch import load_file, save_file

from rrg_core import model as model_module
from rrg_core.__main__ import main
from rrg_core.checkpoint import WEIGHTS_NAME
from rrg_core.config import REVTAFConfig, merge_overrides
from rrg_core.model import CONFIG_NAME, REVTAF


@pytest.fixture(scope="module")
def good(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("good")
    tiny_model()[0].save_pretrained(folder)
    return folder


def _copy(good: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(good, tmp_path / "weights"))


def _edit_config(folder: Path, **changes) -> Path:
    """``changes``: top-level values, or a section's values as a dict merged into it."""
    path = folder / CONFIG_NAME
    path.write_text(json.dumps(merge_overrides(json.loads(path.read_text()), changes)))
    return folder


def _poison_weights(folder: Path, value: float) -> Path:
    tensors = load_file(folder / WEIGHTS_NAME)
    save_file({k: torch.full_like(t, value) if t.is_floating_point() else t for k, t in tensors.items()},
              str(folder / WEIGHTS_NAME))
    return folder


@pytest.mark.parametrize(
    "change, sentence",
    [
        ({"lre": {"dim": "big"}}, "config.json: lre.dim must be a whole number, got 'big'"),
        ({"dropout": 3}, "config.json: dropout must lie between 0 and 0.99, got 3"),
        ({"lre": {"enabled": "yes"}}, "config.json: lre.enabled must be true or false, got 'yes'"),
        ({"vision": {"depths": [1, None]}}, "config.json: vision.depths must be a list of whole numbers"),
        ({"d_model": 33}, "config.json: d_model (33) must be a multiple of n_heads (2)"),
        ({"vision": {"n_views": 3}}, "config.json: vision.n_views must be one of [1, 2], got 3"),
        ({"lre": "big"}, "config.json: lre must be a JSON object"),
        ({"decoder": {"hidden": 4096}}, "tensor(s) have the wrong shape"),
    ],
)
def test_a_bad_config_is_one_sentence_and_exit_2(good, tmp_path, capsys, change, sentence):
    folder = _edit_config(_copy(good, tmp_path), **change)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "x.png", "--weights", str(folder)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert len(err.strip().splitlines()) == 1 and sentence in err, err


def test_a_mismatched_config_is_refused_before_the_model_is_allocated(good, tmp_path, monkeypatch):
    """decoder_hidden 4096 once built a 3.6 GB model before the shape check: now only the meta device sees it."""
    folder = _edit_config(_copy(good, tmp_path), decoder={"hidden": 4096})
    built_on = []
    real_init = model_module.REVTAF.__init__

    def spy(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)  # the default device where the model is being built
        real_init(self, *args, **kwargs)

    monkeypatch.setattr(model_module.REVTAF, "__init__", spy)
    with pytest.raises(ValueError, match="decoder.*the model expects"):
        REVTAF.from_pretrained(folder)
    assert built_on == ["meta"]


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_weights_are_refused(good, tmp_path, capsys, value):
    folder = _poison_weights(_copy(good, tmp_path), value)
    with pytest.raises(SystemExit) as exit_info:
        main(["report", "x.png", "--weights", str(folder)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.strip().splitlines()) == 1
    assert "hold NaN or infinite values" in err and "the weights are corrupt" in err


def test_the_app_refuses_a_bad_folder_with_the_same_sentence(good, tmp_path, capsys):
    import app

    folder = _edit_config(_copy(good, tmp_path), lre={"dim": "big"})
    assert app.main(["--weights", str(folder)]) == 2
    err = capsys.readouterr().err
    assert err == "app.py: cannot start: config.json: lre.dim must be a whole number, got 'big'\n"


def test_a_good_folder_still_loads_and_presets_pass_their_own_checks(good):
    assert REVTAF.from_pretrained(good).config.lre.dim == json.loads((good / CONFIG_NAME).read_text())["lre"]["dim"]
    for name in ("tiny", "small", "paper"):
        REVTAFConfig.preset(name)
