"""REVTAFConfig: every hyper-parameter of the model in one plain dataclass.

Serialised as ``config.json`` next to the weights. ``format_version`` guards against
loading a folder written by an incompatible version of this package.
"""
from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .prompts import DEFAULT_PROMPTS

FORMAT_VERSION = 1


@dataclass
class REVTAFConfig:
    # ---- input ---------------------------------------------------------------------------
    image_size: int = 224
    n_views: int = 1  # 1 (frontal) or 2 (frontal + lateral, as IU X-Ray)
    image_mean: float = 0.5
    image_std: float = 0.25
    # ---- visual encoder (transformers ResNet; no torchvision) ------------------------------
    resnet_layer_type: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101)
    resnet_depths: list[int] = field(default_factory=lambda: [2, 2, 2, 2])
    resnet_hidden_sizes: list[int] = field(default_factory=lambda: [64, 128, 256, 512])
    resnet_embedding_size: int = 64
    backbone_hub_id: str | None = None  # e.g. "microsoft/resnet-101" for the paper preset
    # Tokens at half the backbone's stride (its last two stages merged, FPN-style): a finer grid
    # for the heatmaps; a 10 x 10 grid cannot point inside a small finding.
    feature_pyramid: bool = True
    # How the deep stage is doubled onto the finer grid: "aligned" keeps every deep token on its
    # own receptive-field centre; "nearest" (weights trained before it) shifts odd tokens by one.
    pyramid_upsampling: str = "aligned"
    # ---- shared width of visual tokens, prompts and memory ---------------------------------
    d_model: int = 256
    n_heads: int = 4
    dropout: float = 0.1
    # ---- text encoder (region/entity prompts and report sentences) -------------------------
    text_layers: int = 2
    text_hidden: int = 256
    text_heads: int = 4
    text_hub_id: str | None = None  # a Hub sentence encoder for the paper preset
    max_sentence_tokens: int = 32
    max_reference_sentences: int = 12
    prompts: list[str] = field(default_factory=lambda: list(DEFAULT_PROMPTS))
    # A learned vector per prompt added to its text embedding (as CoOp's learned context): a text
    # encoder trained from scratch embeds short prompts almost alike at first.
    prompt_offsets: bool = True
    # ---- decoder (BertLMHeadModel with cross-attention) ------------------------------------
    vocab_size: int = 0  # set from the tokenizer
    decoder_layers: int = 3
    decoder_hidden: int = 256
    decoder_heads: int = 4
    decoder_hub_id: str | None = None  # e.g. "bert-base-uncased" for the paper preset
    max_report_tokens: int = 100
    # ---- LRE: Learnable Retrieval Enhancer --------------------------------------------------
    use_lre: bool = True
    hyperbolic_hidden: int = 256
    hyperbolic_dim: int = 256
    curvature: float = 0.01
    learnable_curvature: bool = False
    retrieval_metric: str = "hyperbolic"  # "hyperbolic" | "cosine" | "euclidean"
    top_k: int = 21
    alpha: float = 2.0  # weight of the ranking loss
    # ---- FVTAF / MPSA -----------------------------------------------------------------------
    use_fvtaf: bool = True
    use_mpsa: bool = True  # False: plain softmax cross-attention (supplementary Table 3)
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 100
    sinkhorn_tol: float = 1e-2  # relative error of the patch marginals at which Sinkhorn stops
    beta: float = 0.5  # weight of the region/global consistency loss
    # ---- diagnosis branch -------------------------------------------------------------------
    cls_weight: float = 4.0
    entity_weight: float = 1.0  # our supervision of the finding-prompt scores (replaces MedKLIP)
    # "similarity": soft maximum over patches of the MPSA cosine at the Sinkhorn temperature, so
    # scores and heatmaps read one quantity; "alignment": log-mean-exp of the dot product q.k.
    entity_pooling: str = "similarity"
    diagnosis_evidence: bool = True  # the diagnosis head also reads the entity scores
    # Weight of the mask-supervised heatmap loss (rrg_core.grounding) for data with finding masks;
    # 0 is the paper's objective, whose maps are emergent.
    grounding_weight: float = 0.0
    label_priors: list[list[float]] | None = None  # [14][4] training-set state frequencies
    decision_adjustment: float = 1.0  # how much of the prior the predicted states keep (see DiagnosisHead.decide)
    # ---- generation defaults ----------------------------------------------------------------
    num_beams: int = 3
    min_new_tokens: int = 10
    max_new_tokens: int = 100
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # ---- bookkeeping ------------------------------------------------------------------------
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check_fields(self)
        if self.n_views not in (1, 2):
            raise ValueError(f"n_views must be 1 or 2, got {self.n_views}")
        if self.retrieval_metric not in ("hyperbolic", "cosine", "euclidean"):
            raise ValueError(f"unknown retrieval_metric {self.retrieval_metric!r}")
        if self.entity_pooling not in ("similarity", "alignment"):
            raise ValueError(f"unknown entity_pooling {self.entity_pooling!r}")
        if self.pyramid_upsampling not in ("aligned", "nearest"):
            raise ValueError(f"unknown pyramid_upsampling {self.pyramid_upsampling!r}")
        if self.resnet_layer_type not in ("basic", "bottleneck"):
            raise ValueError(f"unknown resnet_layer_type {self.resnet_layer_type!r}")
        if self.grounding_weight and not (self.use_lre or self.use_fvtaf):
            raise ValueError("grounding_weight supervises the region maps, which need use_lre or use_fvtaf")
        if len(self.resnet_depths) != len(self.resnet_hidden_sizes):
            raise ValueError("resnet_depths and resnet_hidden_sizes must have the same length")

    @property
    def search_metric(self) -> str:
        """The metric references are retrieved and their distances given in (without the LRE:
        cosine on pooled image features)."""
        return self.retrieval_metric if self.use_lre else "cosine"

    # ---- presets ------------------------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> REVTAFConfig:
        """``tiny`` (tests, seconds on CPU), ``small`` (CPU-trainable default), ``paper`` (ResNet-101, BERT-base)."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
        return cls(**{**base, **overrides})

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> REVTAFConfig:
        version = data.get("format_version")
        if version != FORMAT_VERSION:
            raise ValueError(
                f"config.json has format_version {version!r}, this rrg_core reads version {FORMAT_VERSION}: "
                "the weights were written by an incompatible version; re-export them or install a matching rrg_core"
            )
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"config.json has unknown field(s) {unknown}: written by a newer rrg_core?")
        try:
            return cls(**data)
        except ValueError as err:
            raise ValueError(f"config.json: {err}") from None

    def save(self, path: str | Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> REVTAFConfig:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"cannot read model config {path}: {err}") from err
        if not isinstance(data, dict):
            raise ValueError(f"model config {path} is not a JSON object")
        return cls.from_dict(data)


def check_folder_config(weights: str | Path | None) -> None:
    """Read and check the config.json of a local weights folder, if ``weights`` is one (the CLI and
    the demo call this before importing torch, so a broken config is refused in a moment)."""
    if weights is not None and (Path(weights) / "config.json").is_file():
        REVTAFConfig.load(Path(weights) / "config.json")


# Inclusive (low, high) of numeric fields (each element of a list field). A config.json from another
# program or edited by hand is refused with the field's name before anything is built; the upper
# bounds only stop absurd values, the shape check against the weights file catches the rest.
_SIZE = (1, 16_384)
_LIMITS: dict[str, tuple[float, float]] = {
    "image_size": (32, 2048), "resnet_depths": (1, 64), "resnet_hidden_sizes": _SIZE, "resnet_embedding_size": _SIZE,
    "d_model": _SIZE, "n_heads": (1, 256), "dropout": (0.0, 0.99), "text_layers": (0, 96), "text_hidden": _SIZE,
    "text_heads": (1, 256), "max_sentence_tokens": (1, 4096), "max_reference_sentences": (1, 1024),
    "vocab_size": (0, 10_000_000), "decoder_layers": (1, 96), "decoder_hidden": _SIZE, "decoder_heads": (1, 256),
    "max_report_tokens": (1, 4096), "hyperbolic_hidden": _SIZE, "hyperbolic_dim": _SIZE, "curvature": (1e-9, 1e3),
    "top_k": (1, 10_000), "alpha": (0.0, math.inf), "sinkhorn_epsilon": (1e-6, 1e3), "sinkhorn_iters": (1, 100_000),
    "sinkhorn_tol": (0.0, 1.0), "beta": (0.0, math.inf), "cls_weight": (0.0, math.inf),
    "entity_weight": (0.0, math.inf), "grounding_weight": (0.0, math.inf), "label_priors": (0.0, 1.0),
    "image_std": (1e-9, math.inf), "num_beams": (1, 64), "min_new_tokens": (0, 4096), "max_new_tokens": (1, 4096),
    "repetition_penalty": (1e-3, 1e3), "no_repeat_ngram_size": (0, 64),
}
# (width, heads) pairs: attention splits the width evenly over the heads.
_DIVISIBLE = (("d_model", "n_heads"), ("text_hidden", "text_heads"), ("decoder_hidden", "decoder_heads"))


def _check_fields(config: REVTAFConfig) -> None:
    """Every field has its declared type and lies in its range; raises ValueError naming the first
    that does not (config.json is read from folders that may come from anywhere)."""
    for name, kind in typing.get_type_hints(type(config)).items():
        value = getattr(config, name)
        if not _has_type(value, kind):
            raise ValueError(f"{name} must be {_describe(kind)}, got {reprlib.repr(value)}")
        low, high = _LIMITS.get(name, (-math.inf, math.inf))
        for number in _numbers(value):
            if not low <= number <= high:
                raise ValueError(f"{name} must lie between {low:g} and {high:g}, got {number!r}")
    if not config.resnet_depths or not config.prompts:
        raise ValueError("resnet_depths and prompts must not be empty")
    for width, heads in _DIVISIBLE:
        if getattr(config, width) % getattr(config, heads):
            raise ValueError(f"{width} ({getattr(config, width)}) must be a multiple of {heads} ({getattr(config, heads)})")


def _has_type(value: Any, kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if kind is type(None):
        return value is None
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, kind)


_NAMES = {int: ("a whole number", "whole numbers"), float: ("a finite number", "finite numbers"),
          bool: ("true or false", "booleans"), str: ("a string", "strings"), type(None): ("null", "nulls")}


def _describe(kind: Any, plural: bool = False) -> str:
    """'a whole number', 'a list of whole numbers', 'a list of lists of finite numbers or null'."""
    if typing.get_origin(kind) is list:
        return ("lists" if plural else "a list") + " of " + _describe(typing.get_args(kind)[0], plural=True)
    if typing.get_args(kind):
        return " or ".join(_describe(arg, plural) for arg in typing.get_args(kind))
    return _NAMES[kind][plural]


def _numbers(value: Any) -> list[float]:
    """The numbers in a field's value (nested lists flattened; booleans and text are not numbers)."""
    if isinstance(value, list):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": dict(
        image_size=64,
        resnet_depths=[1, 1, 1],
        resnet_hidden_sizes=[8, 16, 32],
        resnet_embedding_size=8,
        d_model=32,
        n_heads=2,
        text_layers=1,
        text_hidden=32,
        text_heads=2,
        decoder_layers=1,
        decoder_hidden=32,
        decoder_heads=2,
        hyperbolic_hidden=32,
        hyperbolic_dim=16,
        top_k=3,
        max_report_tokens=40,
        max_new_tokens=20,
        min_new_tokens=2,
        max_reference_sentences=6,
        sinkhorn_iters=30,
    ),
    "small": dict(
        image_size=224,
        resnet_depths=[1, 1, 2],
        resnet_hidden_sizes=[32, 64, 128],
        resnet_embedding_size=32,
        d_model=256,
        n_heads=4,
        text_layers=2,
        text_hidden=256,
        decoder_layers=3,
        decoder_hidden=256,
        decoder_heads=4,
        hyperbolic_hidden=256,
        hyperbolic_dim=128,
        top_k=21,
    ),
    "paper": dict(
        image_size=224,
        resnet_layer_type="bottleneck",
        resnet_depths=[3, 4, 23, 3],
        resnet_hidden_sizes=[256, 512, 1024, 2048],
        resnet_embedding_size=64,
        backbone_hub_id="microsoft/resnet-101",
        d_model=1024,
        n_heads=8,
        text_layers=12,
        text_hidden=768,
        text_heads=12,
        text_hub_id="emilyalsentzer/Bio_ClinicalBERT",
        decoder_layers=12,
        decoder_hidden=768,
        decoder_heads=12,
        decoder_hub_id="bert-base-uncased",
        hyperbolic_hidden=512,
        hyperbolic_dim=512,
        top_k=21,
        max_report_tokens=150,
        max_new_tokens=150,
        min_new_tokens=100,
    ),
}
