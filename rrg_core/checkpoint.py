"""Reading and writing ``model.safetensors`` safely: every check a weights file must pass before a
single weight is copied into a model, so a bad folder fails fast, in little memory, with one
clear sentence instead of leaving a half-loaded model. Only safetensors is read; nothing is
ever unpickled.

The checks that need no torch (:func:`check_weights`: the header, the shapes config.json implies
for a few key tensors, finite values) run before the demo imports gradio or torch, so broken
weights are refused in a moment; the model's full name and shape check needs the model built on
the meta device (:func:`check_shapes`, called by ``REVTAF.from_pretrained``).
"""
from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from safetensors import SafetensorError, safe_open

if TYPE_CHECKING:  # torch is imported by whoever holds tensors; the checks before loading need none
    import torch
    from torch import nn

    from .config import REVTAFConfig

WEIGHTS_NAME = "model.safetensors"
MAX_HEADER_BYTES = 100_000_000  # safetensors' own limit
# Bytes per element of each safetensors dtype.
ITEM_BYTES = {"BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
              "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8}
# A float is NaN or infinite exactly when all its exponent bits are set (float8 E4M3 has no
# infinity and one NaN pattern per sign, all seven bits set); read as unsigned integers, one test
# serves every float dtype, bfloat16 included, which numpy has no dtype for.
NON_FINITE_BITS = {"F8_E5M2": (np.uint8, 0x7C), "F8_E4M3": (np.uint8, 0x7F), "F16": (np.uint16, 0x7C00),
                   "BF16": (np.uint16, 0x7F80), "F32": (np.uint32, 0x7F800000),
                   "F64": (np.uint64, 0x7FF0000000000000)}
SCAN_BYTES = 1 << 24  # the finite check reads a tensor in slices this large (bounded memory)


@dataclass(frozen=True)
class StoredTensor:
    """One tensor as the safetensors header describes it; ``start``/``end`` are file offsets."""

    dtype: str
    shape: tuple[int, ...]
    start: int
    end: int


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


def read_header(path: Path) -> dict[str, StoredTensor]:
    """Each tensor's dtype, shape and place from the header alone (no weight is read), checked as
    safetensors checks it: a known dtype, byte ranges that match the shapes and tile the data
    section exactly. A truncated or corrupt file is refused here."""
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(0)
            length = int.from_bytes(f.read(8), "little")
            if size < 8 or length > min(MAX_HEADER_BYTES, size - 8):
                raise ValueError(f"the header length {length} does not fit a file of {size} bytes")
            header = json.loads(f.read(length))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
        header.pop("__metadata__", None)
        tensors = {name: _entry(name, entry, 8 + length) for name, entry in header.items()}
        _check_tiling(tensors, 8 + length, size)
    except (OSError, ValueError, TypeError, KeyError) as err:  # json's errors are ValueErrors
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err
    return tensors


def _entry(name: str, entry: dict, data_start: int) -> StoredTensor:
    dtype, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
    if dtype not in ITEM_BYTES:
        raise ValueError(f"{name} has the unknown dtype {dtype!r}")
    if not all(isinstance(n, int) and n >= 0 for n in [*shape, begin, end]):
        raise ValueError(f"{name} has a malformed shape or byte range")
    if end - begin != math.prod(shape) * ITEM_BYTES[dtype]:
        raise ValueError(f"{name}'s byte range does not match its shape {shape} and dtype {dtype}")
    return StoredTensor(dtype, tuple(shape), data_start + begin, data_start + end)


def _check_tiling(tensors: dict[str, StoredTensor], data_start: int, size: int) -> None:
    """The tensors' byte ranges follow each other without gap or overlap up to the file's end."""
    position = data_start
    for t in sorted(tensors.values(), key=lambda t: (t.start, t.end)):
        if t.start != position:
            raise ValueError("the tensors' byte ranges overlap or leave gaps")
        position = t.end
    if position != size:
        raise ValueError(f"the header describes {position} bytes, the file has {size}: it is truncated or padded")


def stored_shapes(header: dict[str, StoredTensor]) -> dict[str, tuple[int, ...]]:
    """Each tensor's shape, from the header :func:`read_header` gave: no weight is read yet."""
    return {name: t.shape for name, t in header.items()}


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


def implied_shapes(config: REVTAFConfig) -> dict[str, tuple[int | None, ...]]:
    """The shapes config.json implies for a few key tensors, one or more per width a config sets
    (None: an axis it does not set, e.g. a Hub backbone's width). Tensors a config leaves out
    (the LRE's when it is off) are simply absent from the file. tests/test_weights_validation.py
    compares these with the model built on the meta device, so they cannot drift from it."""
    c = config
    vocab = c.decoder.vocab_size or None  # the tokenizer's size, shared by both text models
    vision_width = None if c.vision.hub_id else c.vision.hidden_sizes[-1]
    text_width = None if c.text.hub_id else c.text.hidden
    decoder_width = None if c.decoder.hub_id else c.decoder.hidden
    return {
        "visual.project.0.weight": (c.d_model, vision_width),
        "visual.view_embedding": (c.vision.n_views, c.d_model),
        "text.project.0.weight": (c.d_model, text_width),
        "text.bert.embeddings.word_embeddings.weight": (None if c.text.hub_id else vocab, text_width),
        "text.bert.embeddings.position_embeddings.weight": (None if c.text.hub_id else c.text.max_tokens, text_width),
        "prompt_offsets": (len(c.text.prompts), c.d_model),
        "lre.encoder.fc2.weight": (c.lre.dim, c.lre.hidden),
        "decoder.memory_projection.weight": (decoder_width, c.d_model),
        "decoder.bert.bert.embeddings.word_embeddings.weight": (vocab, decoder_width),
    }


def implied_counts(config: REVTAFConfig) -> dict[str, int]:
    """Prefix -> how many numbered blocks follow it (layers, stages), as config.json implies."""
    c, counts = config, {}
    if not c.vision.hub_id:
        counts["visual.backbone.encoder.stages."] = len(c.vision.depths)
        counts.update({f"visual.backbone.encoder.stages.{i}.layers.": n for i, n in enumerate(c.vision.depths)})
    if not c.text.hub_id:
        counts["text.bert.encoder.layer."] = c.text.layers
    if not c.decoder.hub_id:
        counts["decoder.bert.bert.encoder.layer."] = c.decoder.layers
    return counts


def block_count(names: Iterable[str], prefix: str) -> int:
    """How many numbered blocks the names hold under ``prefix`` (``prefix`` + number + ``.``...)."""
    return len({name[len(prefix):].partition(".")[0] for name in names if name.startswith(prefix)})


def check_implied_shapes(path: Path, stored: dict[str, StoredTensor], config: REVTAFConfig) -> None:
    """The key tensors' shapes and the layer counts against config.json: a changed width or
    depth is refused without torch (anything else by :func:`check_shapes` once the model is built)."""
    for name, expected in implied_shapes(config).items():
        shape = stored[name].shape if name in stored else None
        if shape is not None and not _fits(shape, expected):
            implied = "(" + ", ".join("*" if n is None else str(n) for n in expected) + ")"
            raise ValueError(f"{path}: {name} is {shape}, config.json implies {implied}: "
                             "the weights do not match config.json")
    for prefix, expected in implied_counts(config).items():
        found = block_count(stored, prefix)
        if found != expected:
            raise ValueError(f"{path} holds {found} numbered blocks {prefix}N, config.json implies {expected}: "
                             "the weights do not match config.json")


def _fits(shape: tuple[int, ...], expected: tuple[int | None, ...]) -> bool:
    return len(shape) == len(expected) and all(e is None or n == e for n, e in zip(shape, expected, strict=True))


def non_finite(path: Path, stored: dict[str, StoredTensor]) -> list[str]:
    """The float tensors holding a NaN or an infinity, found by their exponent bits in a memory
    map of the file, a slice at a time (no torch, no copy of the weights)."""
    data = np.memmap(path, dtype=np.uint8, mode="r")
    broken = []
    for name, t in stored.items():
        if t.dtype not in NON_FINITE_BITS:
            continue
        bits, mask = NON_FINITE_BITS[t.dtype]
        step = SCAN_BYTES - SCAN_BYTES % ITEM_BYTES[t.dtype]
        if any(np.any((data[i:min(i + step, t.end)].view(bits) & mask) == mask) for i in range(t.start, t.end, step)):
            broken.append(name)
    return broken


def check_finite(path: Path, stored: dict[str, StoredTensor]) -> None:
    """NaN or infinite weights are refused: they load silently and make every report empty."""
    broken = non_finite(path, stored)
    if broken:
        raise ValueError(
            f"{path}: {len(broken)} tensor(s) hold NaN or infinite values, e.g. {broken[0]}: the weights are corrupt"
        )


def check_folder(weights: str | Path | None) -> None:
    """config.json and model.safetensors of a local weights folder, if ``weights`` is one, checked
    without torch (the CLI calls this first, so a broken folder is refused in a moment)."""
    from .config import REVTAFConfig

    if weights is None or not (Path(weights) / "config.json").is_file():
        return
    config = REVTAFConfig.load(Path(weights) / "config.json")
    if (Path(weights) / WEIGHTS_NAME).is_file():
        check_weights(Path(weights) / WEIGHTS_NAME, config)


def check_weights(path: Path, config: REVTAFConfig) -> None:
    """Every check that needs no torch: a sound header, the key shapes config.json implies, finite
    values. The demo runs it before importing gradio and torch."""
    stored = read_header(path)
    check_implied_shapes(path, stored, config)
    check_finite(path, stored)


def read_tensors(path: Path, header: dict[str, StoredTensor]) -> dict[str, torch.Tensor]:
    """All tensors of a checked file (``header`` is its :func:`read_header`), once they are known
    to be finite."""
    check_finite(path, header)
    try:
        with safe_open(str(path), framework="pt") as f:
            return {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle is not iterable)
    except (SafetensorError, OSError) as err:
        raise ValueError(f"{path} is not a readable safetensors file ({err})") from err


def check_complete(path: Path, module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Every tensor of ``module`` is in the file, or tied to one that is."""
    canonical = shared_storage(module.state_dict())
    absent = sorted(k for k in set(canonical) - set(tensors) if canonical[k] not in tensors)
    if absent:
        raise ValueError(f"{path} lacks {len(absent)} tensor(s), e.g. {absent[:3]}")
