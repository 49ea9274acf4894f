"""Saving and loading a model folder: config.json, model.safetensors, the tokenizer files and
the reference index, locally or through the Hugging Face Hub.

Loading checks everything (config version, tokenizer, index, every tensor's name and shape)
before a single weight is copied, so a bad folder fails with one clear message instead of
leaving a half-loaded model. Only safetensors is read; nothing is ever unpickled.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .config import REVTAFConfig
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


def _read_state_dict(path: Path, expected: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """Read and validate all tensors; raise ValueError naming what is wrong. Returns the
    tensors and the expected names that are absent (checked by the caller for tied aliases)."""
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = set(f.keys())
            tensors = {k: f.get_tensor(k) for k in keys}
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    # Tied weights are stored once; any alias of a stored tensor may be absent.
    missing = sorted(k for k in set(expected) - keys)
    unexpected = sorted(keys - set(expected))
    if unexpected:
        raise ValueError(f"{path} holds tensors this model does not have, e.g. {unexpected[:3]}: incompatible weights")
    shapes = [k for k in keys if tuple(tensors[k].shape) != tuple(expected[k].shape)]
    if shapes:
        k = shapes[0]
        raise ValueError(
            f"{path}: {len(shapes)} tensor(s) have the wrong shape, e.g. {k} is {tuple(tensors[k].shape)}, "
            f"the model expects {tuple(expected[k].shape)}: the weights do not match config.json"
        )
    return tensors, missing


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
    has_index = load_index and (folder / "reference_index.json").is_file()
    index = ReferenceIndex.load(folder, texts_from=texts_from) if has_index else None

    model = REVTAF(config, tokenizer, index)
    expected = model.state_dict()
    tensors, missing = _read_state_dict(folder / WEIGHTS_NAME, expected)
    canonical = _shared_storage(expected)
    absent = sorted(k for k in missing if canonical[k] not in tensors)  # a tied alias of a stored tensor is fine
    if absent:
        raise ValueError(f"{folder / WEIGHTS_NAME} lacks {len(absent)} tensor(s), e.g. {absent[:3]}")
    model.load_state_dict(tensors, strict=False)
    model.decoder.bert.tie_weights()
    return model.to(device).eval()


def push_to_hub(model: REVTAF, repo_id: str, **kwargs) -> str:
    """Save to a temporary folder and upload it (see :func:`rrg_core.hub.push_folder`)."""
    with tempfile.TemporaryDirectory() as tmp:
        save_pretrained(model, tmp)
        return push_folder(tmp, repo_id, **kwargs)


def load_model(weights: str | os.PathLike | None = None, **kwargs) -> REVTAF:
    """One call to a ready model: the embedded default, a local folder or a Hub repo."""
    return from_pretrained(weights, **kwargs)
