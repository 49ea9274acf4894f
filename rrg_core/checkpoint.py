"""Reading and writing ``model.safetensors`` safely: every check a weights file must pass before a
single weight is copied into a model, so a bad folder fails fast, in little memory, with one
clear sentence instead of leaving a half-loaded model. Only safetensors is read; nothing is
ever unpickled.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

WEIGHTS_NAME = "model.safetensors"


def shared_storage(state: dict[str, torch.Tensor]) -> dict[str, str]:
    """Each name -> the first name holding the same storage (tied weights such as the decoder's
    LM head and word embeddings); saving stores only those first names, loading accepts them."""
    first: dict[tuple, str] = {}
    return {name: first.setdefault((t.data_ptr(), tuple(t.shape), t.stride()), name) for name, t in state.items()}


def unique_tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    """The state dict with each tied tensor stored once, on the CPU, contiguous."""
    state = module.state_dict()
    return {name: state[name].detach().cpu().contiguous()
            for name, canonical in shared_storage(state).items() if name == canonical}


def stored_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape from the safetensors header alone: no weight is read yet."""
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118 (a handle, not a dict)
    except (SafetensorError, OSError, RuntimeError, ValueError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err


def check_shapes(path: Path, stored: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]]) -> None:
    """The file's names and shapes against the model's (built on the meta device, so a mismatched
    config is refused before a large model is allocated). Names absent from the file are checked
    by :func:`check_complete` after the real build (tied weights are stored once)."""
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


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors of a checked file; NaN or infinite weights are refused (they load silently and
    make every report empty)."""
    tensors, broken = {}, []
    with safe_open(str(path), framework="pt") as f:
        for k in f.keys():  # noqa: SIM118 (a safetensors handle is not iterable)
            tensors[k] = f.get_tensor(k)
            if tensors[k].is_floating_point() and not torch.isfinite(tensors[k]).all():
                broken.append(k)
    if broken:
        raise ValueError(
            f"{path}: {len(broken)} tensor(s) hold NaN or infinite values, e.g. {broken[0]}: the weights are corrupt"
        )
    return tensors


def check_complete(path: Path, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``module`` is in the file, or tied to one that is."""
    canonical = shared_storage(module.state_dict())
    absent = sorted(k for k in set(canonical) - set(tensors) if canonical[k] not in tensors)
    if absent:
        raise ValueError(f"{path} lacks {len(absent)} tensor(s), e.g. {absent[:3]}")
