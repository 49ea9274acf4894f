"""Saving and loading a model folder: config.json, model.safetensors, the tokenizer files and
the reference index, locally or through the Hugging Face Hub.

Loading checks everything before a single weight is copied (config version, every field's type
and range, tokenizer, index, every tensor's name and shape against the model built on the meta
device, finite values), so a bad folder fails fast and in little memory with one clear message
instead of leaving a half-loaded model. Only safetensors is read; nothing is ever unpickled.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .calibration import Calibration
from .config import REVTAFConfig
from .decisions import DecisionRule
from .gate import Gate, n_gate_features
from .hub import DEFAULT_WEIGHTS, push_folder, resolve_weights
from .model import REVTAF
from .reference_index import ReferenceIndex
from .tokenizer import load_tokenizer

WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"


def save_pretrained(model: REVTAF, directory: str | os.PathLike, *, dtype: torch.dtype | None = None) -> Path:
    """Write a model folder. ``dtype=torch.float16`` halves the weights file (for the embedded
    default); loading always restores float32 parameters."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.config.vocab_size = len(model.tokenizer)
    model.config.save(directory / CONFIG_NAME)
    save_file(_unique_tensors(model, dtype), str(directory / WEIGHTS_NAME))
    model.tokenizer.save_pretrained(directory)
    if model.index is not None:
        model.index.save(directory)
    for sidecar in (model.decision, model.gate, model.calibration):
        if sidecar is not None:
            sidecar.save(directory)
    return directory


def _shared_storage(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each name -> the first name holding the same storage (tied weights such as the decoder's
    LM head and word embeddings); saving stores only those first names, loading accepts them."""
    first: dict[tuple, str] = {}
    return {
        name: first.setdefault((t.data_ptr(), tuple(t.shape), t.stride()), name) for name, t in state.items()
    }


def _unique_tensors(model: REVTAF, dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor stored once, optionally cast to ``dtype``."""
    state = model.state_dict()
    out = {}
    for name, canonical in _shared_storage(state).items():
        if name != canonical:
            continue
        tensor = state[name]
        if dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(dtype)
        out[name] = tensor.detach().cpu().contiguous()
    return out


def _stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from the safetensors header alone: no weight is read yet."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err


def _check_shapes(path: Path, stored: dict[str, tuple[int, ...]], config: REVTAFConfig, tokenizer) -> None:
    """The file's names and shapes against the model config.json describes, built on the meta device
    (no memory, milliseconds), so a mismatched config is refused before a large model is allocated.
    Names absent from the file are checked after the real build (tied weights are stored once)."""
    try:
        with torch.device("meta"):
            expected = {k: tuple(t.shape) for k, t in REVTAF(config, tokenizer).state_dict().items()}
    except (RuntimeError, ValueError, TypeError, AssertionError) as err:
        raise ValueError(f"config.json describes a model that cannot be built ({err})") from err
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        raise ValueError(f"{path} holds tensors this model does not have, e.g. {unexpected[:3]}: incompatible weights")
    wrong = [k for k in stored if stored[k] != expected[k]]
    if wrong:
        k = wrong[0]
        raise ValueError(
            f"{path}: {len(wrong)} tensor(s) have the wrong shape, e.g. {k} is {stored[k]}, "
            f"the model expects {expected[k]}: the weights do not match config.json"
        )


def _read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checked file; NaN or infinite weights are refused (they load silently and
    make every report empty)."""
    tensors, broken = {}, []
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():
            tensors[k] = f.get_tensor(k)
            if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all():
                broken.append(k)
    if broken:
        raise ValueError(
            f"{path}: {len(broken)} tensor(s) hold NaN or infinite values, e.g. {broken[0]}: the weights are corrupt"
        )
    return tensors


def from_pretrained(
    weights: str | os.PathLike | None = None,
    *,
    revision: str | None = None,
    texts_from: dict[str, str] | None = None,
    device: str | torch.device = "cpu",
    load_index: bool = True,
) -> REVTAF:
    """Load a model folder: a local path, ``ORG/REPO[@REVISION]`` on the Hub, or (None) the
    embedded default weights. ``texts_from`` attaches report texts (id -> text) to an index
    shipped without them; ``load_index=False`` skips the folder's index (to rebuild it)."""
    folder = resolve_weights(weights if weights is not None else DEFAULT_WEIGHTS, revision=revision)
    for name in (CONFIG_NAME, WEIGHTS_NAME):
        if not (folder / name).is_file():
            raise ValueError(f"{folder} is not a REVTAF model folder: {name} is missing")
    config = REVTAFConfig.load(folder / CONFIG_NAME)
    try:
        tokenizer = load_tokenizer(folder)
    except Exception as err:  # tokenizers raise many types for a broken tokenizer.json
        raise ValueError(f"cannot load the tokenizer in {folder}: {err}") from err
    if config.vocab_size and len(tokenizer) != config.vocab_size:
        raise ValueError(f"the tokenizer in {folder} has {len(tokenizer)} tokens, config.json says {config.vocab_size}")
    path = folder / WEIGHTS_NAME
    _check_shapes(path, _stored_shapes(path), config, tokenizer)
    tensors = _read_tensors(path)
    has_index = load_index and (folder / "reference_index.json").is_file()
    index = ReferenceIndex.load(folder, texts_from=texts_from) if has_index else None

    decision = DecisionRule.load(folder)
    model = REVTAF(config, tokenizer, index)
    model.decision = decision
    canonical = _shared_storage(model.state_dict())
    absent = sorted(k for k in set(canonical) - set(tensors) if canonical[k] not in tensors)  # tied aliases are fine
    if absent:
        raise ValueError(f"{path} lacks {len(absent)} tensor(s), e.g. {absent[:3]}")
    model.load_state_dict(tensors, strict=False)
    model.decoder.bert.tie_weights()
    model.gate, model.calibration = Gate.load(folder, n_gate_features(model)), Calibration.load(folder)
    return model.to(device).eval()


def push_to_hub(model: REVTAF, repo_id: str, **kwargs) -> str:
    """Save to a temporary folder and upload it (see :func:`rrg_core.hub.push_folder`)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        return push_folder(tmp, repo_id, **kwargs)


def load_model(weights: str | os.PathLike | None = None, **kwargs) -> REVTAF:
    """One call to a ready model: the embedded default, a local folder or a Hub repo."""
    return from_pretrained(weights, **kwargs)
