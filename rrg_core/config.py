"""REVTAFConfig: every hyper-parameter of the model, grouped by component, immutable.

    REVTAFConfig(d_model, n_heads, dropout,
                 vision=VisionConfig(...), text=TextConfig(...), retrieval=RetrievalConfig(...),
                 lre=LREConfig(...), fvtaf=FVTAFConfig(...), diagnosis=DiagnosisConfig(...),
                 decoder=DecoderConfig(...), generation=GenerationConfig(...))

Serialised as ``config.json`` next to the weights, one JSON object per section. Change a value
with :meth:`REVTAFConfig.replace` (``config.replace(lre={"enabled": False})``), which returns a
new, checked config. ``format_version`` 1 (one flat object, the committed weights' format) is
converted when read: :func:`convert_flat` says which old name became which.
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

FORMAT_VERSION = 2


@dataclass(frozen=True)
class VisionConfig:
    """Input views and the visual encoder (transformers' ResNet; no torchvision)."""

    image_size: int = 224
    n_views: int = 1  # 1 (frontal) or 2 (frontal + lateral, as IU X-Ray)
    image_mean: float = 0.5
    image_std: float = 0.25
    layer_type: str = "basic"  # "basic" (ResNet-18/34) or "bottleneck" (ResNet-50/101)
    depths: tuple[int, ...] = (2, 2, 2, 2)
    hidden_sizes: tuple[int, ...] = (64, 128, 256, 512)
    embedding_size: int = 64
    hub_id: str | None = None  # e.g. "microsoft/resnet-101" for the paper preset


@dataclass(frozen=True)
class TextConfig:
    """The text encoder of region/entity prompts and report sentences."""

    layers: int = 2
    hidden: int = 256
    heads: int = 4
    hub_id: str | None = None  # a Hub sentence encoder for the paper preset
    max_tokens: int = 32  # per prompt or sentence
    max_reference_sentences: int = 12
    prompts: tuple[str, ...] = DEFAULT_PROMPTS


@dataclass(frozen=True)
class RetrievalConfig:
    """The reference index search (with or without the LRE)."""

    top_k: int = 21
    metric: str = "hyperbolic"  # "hyperbolic" | "cosine" | "euclidean" (with the LRE)


@dataclass(frozen=True)
class LREConfig:
    """LRE, the Learnable Retrieval Enhancer (off: retrieval by cosine on the pooled image vector)."""

    enabled: bool = True
    hidden: int = 256
    dim: int = 256
    curvature: float = 0.01
    rank_weight: float = 2.0  # alpha: weight of the ranking loss


@dataclass(frozen=True)
class FVTAFConfig:
    """FVTAF with MPSA: region and global alignment, fusion, and the entity scores they give."""

    enabled: bool = True  # False: the decoder reads the plain patch tokens (no fusion)
    mpsa: bool = True  # False: plain softmax cross-attention (supplementary Table 3)
    sinkhorn_epsilon: float = 0.05
    sinkhorn_iters: int = 100
    sinkhorn_tol: float = 1e-2  # relative error of the patch marginals at which Sinkhorn stops
    consistency_weight: float = 0.5  # beta: weight of the region/global consistency loss
    entity_weight: float = 1.0  # our supervision of the finding-prompt scores (replaces MedKLIP)
    # Weight of the mask-supervised heatmap loss (rrg_core.grounding) for data with finding masks;
    # 0 is the paper's objective, whose maps are emergent.
    grounding_weight: float = 0.0


@dataclass(frozen=True)
class DiagnosisConfig:
    """The diagnosis branch: 14 observations x 4 states from the image and its references."""

    cls_weight: float = 4.0
    label_priors: tuple[tuple[float, ...], ...] | None = None  # [14][4] training-set state frequencies
    decision_adjustment: float = 1.0  # how much of the prior the argmax states keep (DiagnosisHead.decide)


@dataclass(frozen=True)
class DecoderConfig:
    """The report decoder (BertLMHeadModel with cross-attention, prompted by the states)."""

    vocab_size: int = 0  # the tokenizer's size, written when the model is saved
    layers: int = 3
    hidden: int = 256
    heads: int = 4
    hub_id: str | None = None  # e.g. "bert-base-uncased" for the paper preset
    max_report_tokens: int = 100


@dataclass(frozen=True)
class GenerationConfig:
    """Decoding defaults (every call can override them)."""

    num_beams: int = 3
    min_new_tokens: int = 10
    max_new_tokens: int = 100
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0


SECTIONS: dict[str, type] = {
    "vision": VisionConfig, "text": TextConfig, "retrieval": RetrievalConfig, "lre": LREConfig,
    "fvtaf": FVTAFConfig, "diagnosis": DiagnosisConfig, "decoder": DecoderConfig, "generation": GenerationConfig,
}


@dataclass(frozen=True)
class REVTAFConfig:
    d_model: int = 256  # shared width of visual tokens, prompts and memory
    n_heads: int = 4
    dropout: float = 0.1
    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    retrieval: RetrievalConfig = field(default_factory=RetrievalConfig)
    lre: LREConfig = field(default_factory=LREConfig)
    fvtaf: FVTAFConfig = field(default_factory=FVTAFConfig)
    diagnosis: DiagnosisConfig = field(default_factory=DiagnosisConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        _check(self)

    @property
    def aligns(self) -> bool:
        """Whether the model has the region alignment and entity scores (the LRE or FVTAF needs them)."""
        return self.lre.enabled or self.fvtaf.enabled

    @property
    def search_metric(self) -> str:
        """The metric references are retrieved and their distances given in (without the LRE:
        cosine on pooled image features)."""
        return self.retrieval.metric if self.lre.enabled else "cosine"

    # ---- building and changing -----------------------------------------------------------------
    @classmethod
    def preset(cls, name: str, **overrides: Any) -> REVTAFConfig:
        """``tiny`` (tests, seconds on CPU), ``small`` (CPU-trainable default), ``paper`` (ResNet-101,
        BERT-base), with ``overrides`` as in :meth:`replace`."""
        try:
            base = PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}") from None
        return cls.from_dict(merge_overrides(merge_overrides({"format_version": FORMAT_VERSION}, base), overrides))

    def replace(self, **changes: Any) -> REVTAFConfig:
        """A new config with ``changes``: top-level values, or a section given as a dict of its
        fields (``lre={"enabled": False}``) merged into the current one."""
        return type(self).from_dict(merge_overrides(self.to_dict(), changes))

    # ---- (de)serialisation ----------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return json.loads(json.dumps(dataclasses.asdict(self)))  # tuples become lists, as in the file

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> REVTAFConfig:
        version = data.get("format_version")
        if version == 1:
            data = convert_flat(data)
        elif version != FORMAT_VERSION:
            raise ValueError(
                f"config.json has format_version {version!r}, this rrg_core reads versions 1 and {FORMAT_VERSION}: "
                "the weights were written by an incompatible version; re-export them or install a matching rrg_core"
            )
        _check_keys(cls, data, "config.json")
        sections = {}
        for name, section in SECTIONS.items():
            values = data.get(name, {})
            if not isinstance(values, dict):
                raise ValueError(f"config.json: {name} must be a JSON object, got {reprlib.repr(values)}")
            values = _without_retired(name, values)
            _check_keys(section, values, f"config.json {name}")
            sections[name] = section(**{k: _frozen(v) for k, v in values.items()})
        try:
            return cls(**{**{k: v for k, v in data.items() if k not in SECTIONS}, **sections})
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


# ---- retired switches ------------------------------------------------------------------------------
# Choices that only weights trained on a first recipe needed, now always what is given here: a
# config.json may still name them with that value (every file written before they were retired
# does), but another value means weights this rrg_core cannot run.
RETIRED: dict[str, dict[str, Any]] = {
    # tokens at half the backbone's stride (its last two stages merged, FPN-style), the deep stage
    # doubled onto that grid with each deep token on its own receptive-field centre
    "vision": {"feature_pyramid": True, "pyramid_upsampling": "aligned"},
    "text": {"prompt_offsets": True},  # a learned vector added to each prompt's text embedding
    "fvtaf": {"entity_pooling": "similarity"},  # entity scores: soft maximum of the MPSA cosine
    "diagnosis": {"reads_entity_scores": True},  # the diagnosis head reads the entity scores
}


def _without_retired(section: str, values: dict[str, Any]) -> dict[str, Any]:
    """``values`` without the retired switches, which must hold their one remaining value."""
    retired = RETIRED.get(section, {})
    for name, value in values.items():
        if name in retired and value != retired[name]:
            raise ValueError(
                f"config.json: {section}.{name} = {value!r} is a first-recipe choice this rrg_core no longer "
                f"builds (only {retired[name]!r}): these weights need rrg_core 0.1, or a retrain"
            )
    return {k: v for k, v in values.items() if k not in retired}


# ---- format 1: one flat object ---------------------------------------------------------------------
# Old name -> (section, new name); a section of None stays at the top level.
FLAT_NAMES: dict[str, tuple[str | None, str]] = {
    "d_model": (None, "d_model"), "n_heads": (None, "n_heads"), "dropout": (None, "dropout"),
    "image_size": ("vision", "image_size"), "n_views": ("vision", "n_views"), "image_mean": ("vision", "image_mean"),
    "image_std": ("vision", "image_std"), "resnet_layer_type": ("vision", "layer_type"),
    "resnet_depths": ("vision", "depths"), "resnet_hidden_sizes": ("vision", "hidden_sizes"),
    "resnet_embedding_size": ("vision", "embedding_size"), "backbone_hub_id": ("vision", "hub_id"),
    "feature_pyramid": ("vision", "feature_pyramid"), "pyramid_upsampling": ("vision", "pyramid_upsampling"),
    "text_layers": ("text", "layers"), "text_hidden": ("text", "hidden"), "text_heads": ("text", "heads"),
    "text_hub_id": ("text", "hub_id"), "max_sentence_tokens": ("text", "max_tokens"),
    "max_reference_sentences": ("text", "max_reference_sentences"), "prompts": ("text", "prompts"),
    "prompt_offsets": ("text", "prompt_offsets"),
    "top_k": ("retrieval", "top_k"), "retrieval_metric": ("retrieval", "metric"),
    "use_lre": ("lre", "enabled"), "hyperbolic_hidden": ("lre", "hidden"), "hyperbolic_dim": ("lre", "dim"),
    "curvature": ("lre", "curvature"), "alpha": ("lre", "rank_weight"),
    "use_fvtaf": ("fvtaf", "enabled"), "use_mpsa": ("fvtaf", "mpsa"), "sinkhorn_epsilon": ("fvtaf", "sinkhorn_epsilon"),
    "sinkhorn_iters": ("fvtaf", "sinkhorn_iters"), "sinkhorn_tol": ("fvtaf", "sinkhorn_tol"),
    "beta": ("fvtaf", "consistency_weight"), "entity_weight": ("fvtaf", "entity_weight"),
    "entity_pooling": ("fvtaf", "entity_pooling"), "grounding_weight": ("fvtaf", "grounding_weight"),
    "cls_weight": ("diagnosis", "cls_weight"), "diagnosis_evidence": ("diagnosis", "reads_entity_scores"),
    "label_priors": ("diagnosis", "label_priors"), "decision_adjustment": ("diagnosis", "decision_adjustment"),
    "vocab_size": ("decoder", "vocab_size"), "decoder_layers": ("decoder", "layers"),
    "decoder_hidden": ("decoder", "hidden"), "decoder_heads": ("decoder", "heads"),
    "decoder_hub_id": ("decoder", "hub_id"), "max_report_tokens": ("decoder", "max_report_tokens"),
    **{name: ("generation", name) for name in
       ("num_beams", "min_new_tokens", "max_new_tokens", "repetition_penalty", "no_repeat_ngram_size")},
}
# Fields format 1 only gained later: a file without them was written before they existed, and its
# weights were trained with what the code did then (not with today's defaults).
FLAT_BEFORE_THEY_EXISTED = {"grounding_weight": 0.0, "pyramid_upsampling": "nearest"}


def convert_flat(flat: dict[str, Any], *, complete: bool = True) -> dict[str, Any]:
    """A format-1 (flat) config as format 2; ``complete=False`` converts flat overrides (the
    ``model`` of an old run's train_config.json) without filling in anything."""
    unknown = sorted(set(flat) - set(FLAT_NAMES) - {"format_version", "learnable_curvature"})
    if unknown:
        raise ValueError(f"config.json has unknown field(s) {unknown}: written by a newer rrg_core?")
    if flat.get("learnable_curvature"):
        raise ValueError("config.json asks for a learnable curvature, which this rrg_core does not train")
    nested: dict[str, Any] = {"format_version": FORMAT_VERSION} if complete else {}
    for old, value in {**(FLAT_BEFORE_THEY_EXISTED if complete else {}), **flat}.items():
        if old in FLAT_NAMES:
            section, new = FLAT_NAMES[old]
            (nested.setdefault(section, {}) if section else nested)[new] = value
    return nested


# ---- checks -------------------------------------------------------------------------------------
# Inclusive (low, high) of numeric fields ("section.name"; each element of a tuple). A config.json
# from another program or edited by hand is refused with the field's name before anything is
# built; the upper bounds only stop absurd values, the shape check against the weights catches the rest.
_SIZE = (1, 16_384)
_LIMITS: dict[str, tuple[float, float]] = {
    "d_model": _SIZE, "n_heads": (1, 256), "dropout": (0.0, 0.99),
    "vision.image_size": (32, 2048), "vision.depths": (1, 64), "vision.hidden_sizes": _SIZE,
    "vision.embedding_size": _SIZE, "vision.image_std": (1e-9, math.inf),
    "text.layers": (0, 96), "text.hidden": _SIZE, "text.heads": (1, 256), "text.max_tokens": (1, 4096),
    "text.max_reference_sentences": (1, 1024),
    "retrieval.top_k": (1, 10_000),
    "lre.hidden": _SIZE, "lre.dim": _SIZE, "lre.curvature": (1e-9, 1e3), "lre.rank_weight": (0.0, math.inf),
    "fvtaf.sinkhorn_epsilon": (1e-6, 1e3), "fvtaf.sinkhorn_iters": (1, 100_000), "fvtaf.sinkhorn_tol": (0.0, 1.0),
    "fvtaf.consistency_weight": (0.0, math.inf), "fvtaf.entity_weight": (0.0, math.inf),
    "fvtaf.grounding_weight": (0.0, math.inf),
    "diagnosis.cls_weight": (0.0, math.inf), "diagnosis.label_priors": (0.0, 1.0),
    "decoder.vocab_size": (0, 10_000_000), "decoder.layers": (1, 96), "decoder.hidden": _SIZE,
    "decoder.heads": (1, 256), "decoder.max_report_tokens": (1, 4096),
    "generation.num_beams": (1, 64), "generation.min_new_tokens": (0, 4096), "generation.max_new_tokens": (1, 4096),
    "generation.repetition_penalty": (1e-3, 1e3), "generation.no_repeat_ngram_size": (0, 64),
}
_CHOICES: dict[str, tuple[Any, ...]] = {
    "vision.n_views": (1, 2), "vision.layer_type": ("basic", "bottleneck"),
    "retrieval.metric": ("hyperbolic", "cosine", "euclidean"),
}
# (width, heads) pairs: attention splits the width evenly over the heads.
_DIVISIBLE = (("d_model", "n_heads"), ("text.hidden", "text.heads"), ("decoder.hidden", "decoder.heads"))


def _check(config: REVTAFConfig) -> None:
    """Every field has its declared type, lies in its range and is a known choice; raises
    ValueError naming the first that does not (config.json is read from folders that may come
    from anywhere)."""
    values = {}
    for name, kind in typing.get_type_hints(REVTAFConfig).items():
        if name in SECTIONS:
            section = getattr(config, name)
            if not isinstance(section, SECTIONS[name]):
                raise ValueError(f"{name} must be a {SECTIONS[name].__name__}, got {reprlib.repr(section)}")
            values |= {f"{name}.{k}": (getattr(section, k), t) for k, t in typing.get_type_hints(SECTIONS[name]).items()}
        else:
            values[name] = (getattr(config, name), kind)
    for name, (value, kind) in values.items():
        if not _has_type(value, kind):
            raise ValueError(f"{name} must be {_describe(kind)}, got {reprlib.repr(value)}")
        low, high = _LIMITS.get(name, (-math.inf, math.inf))
        for number in _numbers(value):
            if not low <= number <= high:
                raise ValueError(f"{name} must lie between {low:g} and {high:g}, got {number!r}")
        if name in _CHOICES and value not in _CHOICES[name]:
            raise ValueError(f"{name} must be one of {list(_CHOICES[name])}, got {value!r}")
    for width, heads in _DIVISIBLE:
        if values[width][0] % values[heads][0]:
            raise ValueError(f"{width} ({values[width][0]}) must be a multiple of {heads} ({values[heads][0]})")
    vision = config.vision
    if not vision.depths or not config.text.prompts:
        raise ValueError("vision.depths and text.prompts must not be empty")
    if len(vision.depths) != len(vision.hidden_sizes):
        raise ValueError("vision.depths and vision.hidden_sizes must have the same length")
    if config.fvtaf.grounding_weight and not config.aligns:
        raise ValueError("fvtaf.grounding_weight supervises the region maps, which need lre.enabled or fvtaf.enabled")


def _check_keys(kind: type, data: dict[str, Any], where: str) -> None:
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(kind)})
    if unknown:
        raise ValueError(f"{where} has unknown field(s) {unknown}: written by a newer rrg_core?")


def merge_overrides(base: dict[str, Any], changes: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``changes``; a section given as a dict is merged into the base's section."""
    out = dict(base)
    for key, value in changes.items():
        if key in SECTIONS and isinstance(value, dict):
            out[key] = {**out.get(key, {}), **value}
        else:
            out[key] = value
    return out


def _frozen(value: Any) -> Any:
    """JSON lists as tuples, so a loaded config is immutable all the way down."""
    return tuple(_frozen(v) for v in value) if isinstance(value, list) else value


def _has_type(value: Any, kind: Any) -> bool:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_has_type(value, arg) for arg in args)
    if origin is tuple:
        return isinstance(value, tuple) and all(_has_type(v, args[0]) for v in value)
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
    if typing.get_origin(kind) is tuple:
        return ("lists" if plural else "a list") + " of " + _describe(typing.get_args(kind)[0], plural=True)
    if typing.get_args(kind):
        return " or ".join(_describe(arg, plural) for arg in typing.get_args(kind))
    return _NAMES[kind][plural]


def _numbers(value: Any) -> list[float]:
    """The numbers in a field's value (nested tuples flattened; booleans and text are not numbers)."""
    if isinstance(value, tuple):
        return [n for v in value for n in _numbers(v)]
    return [value] if isinstance(value, (int, float)) and not isinstance(value, bool) else []


PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {
        "d_model": 32, "n_heads": 2,
        "vision": {"image_size": 64, "depths": [1, 1, 1], "hidden_sizes": [8, 16, 32], "embedding_size": 8},
        "text": {"layers": 1, "hidden": 32, "heads": 2, "max_reference_sentences": 6},
        "retrieval": {"top_k": 3},
        "lre": {"hidden": 32, "dim": 16},
        "fvtaf": {"sinkhorn_iters": 30},
        "decoder": {"layers": 1, "hidden": 32, "heads": 2, "max_report_tokens": 40},
        "generation": {"max_new_tokens": 20, "min_new_tokens": 2},
    },
    "small": {
        "d_model": 256, "n_heads": 4,
        "vision": {"image_size": 224, "depths": [1, 1, 2], "hidden_sizes": [32, 64, 128], "embedding_size": 32},
        "text": {"layers": 2, "hidden": 256},
        "retrieval": {"top_k": 21},
        "lre": {"hidden": 256, "dim": 128},
        "decoder": {"layers": 3, "hidden": 256, "heads": 4},
    },
    "paper": {
        "d_model": 1024, "n_heads": 8,
        "vision": {"image_size": 224, "layer_type": "bottleneck", "depths": [3, 4, 23, 3],
                   "hidden_sizes": [256, 512, 1024, 2048], "embedding_size": 64, "hub_id": "microsoft/resnet-101"},
        "text": {"layers": 12, "hidden": 768, "heads": 12, "hub_id": "emilyalsentzer/Bio_ClinicalBERT"},
        "retrieval": {"top_k": 21},
        "lre": {"hidden": 512, "dim": 512},
        "decoder": {"layers": 12, "hidden": 768, "heads": 12, "hub_id": "bert-base-uncased", "max_report_tokens": 150},
        "generation": {"max_new_tokens": 150, "min_new_tokens": 100},
    },
}
