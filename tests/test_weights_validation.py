"""Weight folders are checked before anything is built: each bad folder gives one sentence and
exit code 2 from the CLI and app.py, never a traceback, a huge allocation or a NaN report."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from model_fixtures import tiny_model, tiny_tokenizer
from safetensors.torch import load_file, save_file

from rrg_core import checkpoint
from rrg_core import model as model_module
from rrg_core.__main__ import main
from rrg_core.checkpoint import WEIGHTS_NAME
from rrg_core.config import REVTAFConfig, merge_overrides
from rrg_core.model import CONFIG_NAME, REVTAF

REPO = Path(__file__).resolve().parents[1]


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
        ({"decoder": {"hidden": 4096}}, "the weights do not match config.json"),
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


def test_a_mismatch_only_the_built_model_shows_stops_the_served_app_with_one_sentence(good, tmp_path, capsys,
                                                                                      monkeypatch):
    """The decoder's position table (max_report_tokens) is not among the shapes checked without
    torch: the page is served first, and the shape check on the meta device stops it."""
    from conftest import _free_port

    import app

    monkeypatch.setattr("signal.signal", lambda *args: None)  # leave pytest's handlers alone
    monkeypatch.setenv("GRADIO_TEMP_DIR", str(tmp_path / "gradio"))  # app.main sets it: restored after
    folder = _edit_config(_copy(good, tmp_path), decoder={"max_report_tokens": 60})
    assert app.main(["--weights", str(folder), "--port", str(_free_port())]) == 2
    err = capsys.readouterr().err
    assert err.startswith("app.py: cannot start: ") and err.count("\n") == 1, err
    assert "position_embeddings.weight is (58, 32), the model expects (78, 32)" in err, err


# ---- the checks that need no torch ----------------------------------------------------------------
def _truncate(folder: Path) -> Path:
    data = (folder / WEIGHTS_NAME).read_bytes()
    (folder / WEIGHTS_NAME).write_bytes(data[: len(data) // 2])
    return folder


BROKEN = {  # name -> (how the good folder is broken, what the one sentence says)
    "hidden size": (lambda f: _edit_config(f, decoder={"hidden": 64}), "config.json implies (64, 32)"),
    "layer count": (lambda f: _edit_config(f, decoder={"layers": 2}),
                    "holds 1 numbered blocks decoder.bert.bert.encoder.layer.N, config.json implies 2"),
    "NaN": (lambda f: _poison_weights(f, float("nan")), "hold NaN or infinite values"),
    "infinity": (lambda f: _poison_weights(f, float("-inf")), "hold NaN or infinite values"),
    "truncated": (_truncate, "it is truncated or padded"),
    "not safetensors": (lambda f: (f / WEIGHTS_NAME).write_bytes(b"not safetensors") and f,
                        "is not a readable safetensors file"),
}
# Runs app.main on each folder in a fresh process and says which heavy modules it imported.
APP_PROBE = """
import contextlib, io, json, sys
import app
out = {}
for name, folder in json.loads(sys.argv[1]).items():
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = app.main(["--weights", folder, "--port", "1"])
    out[name] = {"code": code, "err": err.getvalue(), "imported": [m for m in ("torch", "gradio") if m in sys.modules]}
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def app_refusals(good, tmp_path_factory) -> dict[str, dict]:
    folders = {}
    for name, (breaks, _) in BROKEN.items():
        folders[name] = str(breaks(Path(shutil.copytree(good, tmp_path_factory.mktemp("broken") / "weights"))))
    done = subprocess.run([sys.executable, "-c", APP_PROBE, json.dumps(folders)], cwd=REPO, capture_output=True,
                          text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("name", BROKEN)
def test_the_app_refuses_broken_weights_before_importing_gradio_or_torch(app_refusals, name):
    refusal = app_refusals[name]
    assert refusal["code"] == 2 and refusal["imported"] == [], refusal
    assert refusal["err"].startswith("app.py: cannot start: ") and refusal["err"].count("\n") == 1, refusal
    assert BROKEN[name][1] in refusal["err"], refusal


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_found_in_every_float_dtype_without_torch(tmp_path, monkeypatch, dtype, value):
    """bfloat16 has no numpy dtype: its exponent bits are tested. Small scan slices make the bad
    value sit in a later slice of a tensor than the first."""
    monkeypatch.setattr(checkpoint, "SCAN_BYTES", 64)
    bad = torch.linspace(-3e4, 3e4, 1000).to(dtype)
    bad[900] = value
    path = tmp_path / WEIGHTS_NAME
    save_file({"fine": torch.linspace(-3e4, 3e4, 1000).to(dtype), "ids": torch.arange(5), "bad": bad}, str(path))
    assert checkpoint.non_finite(path, checkpoint.read_header(path)) == ["bad"]


def test_finite_extremes_are_not_taken_for_non_finite_values(tmp_path):
    extremes = {str(dtype): torch.tensor([torch.finfo(dtype).max, torch.finfo(dtype).min, torch.finfo(dtype).tiny,
                                          0.0, -0.0], dtype=dtype)
                for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64)}
    save_file(extremes, str(tmp_path / WEIGHTS_NAME))
    assert checkpoint.non_finite(tmp_path / WEIGHTS_NAME, checkpoint.read_header(tmp_path / WEIGHTS_NAME)) == []


def _rewrite_header(data: bytes, edit) -> bytes:
    length = int.from_bytes(data[:8], "little")
    header = json.loads(data[8: 8 + length])
    edit(header)
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + data[8 + length:]


def _set(name: str, key: str, value):
    return lambda header: header[name].__setitem__(key, value)


@pytest.mark.parametrize(
    "corrupt, reason",
    [
        (lambda d: d[:5], "does not fit a file of 5 bytes"),
        (lambda d: (10**9).to_bytes(8, "little") + d[8:], "does not fit"),
        (lambda d: d[:8] + b"{" * (len(d) - 8), "is not a readable safetensors file (Expecting"),
        (lambda d: d + b"\0" * 8, "it is truncated or padded"),
        (lambda d: _rewrite_header(d, _set("a", "dtype", "F7")), "a has the unknown dtype 'F7'"),
        (lambda d: _rewrite_header(d, _set("a", "shape", [3])), "a's byte range does not match its shape [3]"),
        (lambda d: _rewrite_header(d, _set("a", "shape", [-2, -2])), "a has a malformed shape or byte range"),
        (lambda d: _rewrite_header(d, _set("b", "data_offsets", [0, 16])), "the tensors' byte ranges overlap"),
        (lambda d: _rewrite_header(d, lambda h: h.__setitem__("a", "x")), "is not a readable safetensors file"),
    ],
)
def test_a_corrupt_header_is_refused_with_one_sentence(tmp_path, corrupt, reason):
    path = tmp_path / WEIGHTS_NAME
    save_file({"a": torch.zeros(4), "b": torch.ones(2, 2)}, str(path))
    path.write_bytes(corrupt(path.read_bytes()))
    with pytest.raises(ValueError, match="is not a readable safetensors file") as err:
        checkpoint.read_header(path)
    assert reason in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize(
    "overrides",
    [{}, {"lre": {"enabled": False}}, {"fvtaf": {"enabled": False}}, {"lre": {"enabled": False}, "fvtaf": {"enabled": False}},
     {"vision": {"n_views": 2, "depths": [2, 1, 3]}, "d_model": 48, "decoder": {"hidden": 40, "layers": 2},
      "text": {"hidden": 24, "layers": 3, "max_tokens": 20}}],
)
@pytest.mark.parametrize("preset", ["tiny", "small"])
def test_what_config_json_implies_is_the_models(preset, overrides):
    """checkpoint.implied_shapes and implied_counts against the model built on the meta device, so
    they cannot drift from it."""
    tokenizer = tiny_tokenizer()
    config = REVTAFConfig.preset(preset, **merge_overrides({"decoder": {"vocab_size": len(tokenizer)}}, overrides))
    with torch.device("meta"):
        state = REVTAF(config, tokenizer).state_dict()
    implied = checkpoint.implied_shapes(config)
    absent = {"lre.encoder.fc2.weight"} if not config.lre.enabled else set()
    absent |= {"prompt_offsets"} if not config.aligns else set()
    assert set(implied) - set(state) == absent
    assert {k: tuple(state[k].shape) for k in implied if k in state} == {k: v for k, v in implied.items() if k in state}
    counts = checkpoint.implied_counts(config)
    assert {prefix: checkpoint.block_count(state, prefix) for prefix in counts} == counts

