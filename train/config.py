"""TrainConfig: one plain dataclass per training run, read from train/configs/*.json."""
from __future__ import annotations

import dataclasses
import json
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rrg_core.config import FLAT_NAMES, REVTAFConfig, convert_flat, merge_overrides

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


@dataclass
class TrainConfig:
    # data: a dataset folder in the R2Gen layout, or "synthcxr" (phantoms written on first use)
    data: str = "synthcxr"
    dataset: str = "iu_xray"  # report normalisation flavour: iu_xray | mimic_cxr
    synth_n: int = 3000  # phantoms to generate when data == "synthcxr"
    synth_seed: int = 0
    # model
    preset: str = "small"
    model: dict[str, Any] = field(default_factory=dict)  # REVTAFConfig overrides (ablation switches, sizes)
    wordpiece_vocab_size: int = 2000  # the WordPiece vocabulary trained on the reports (no Hub decoder)
    # A safetensors file of visual.* weights (train.pretrain_encoder) the encoder starts from
    # instead of a random initialisation; its vision section must match the model's.
    init_visual: str | None = None
    # optimisation (paper: AdamW, warm-up from 5e-7 over 2,000 steps, cosine 5e-5 -> 5e-6, wd 0.05)
    epochs: int = 10
    # The first epochs train the image side alone on the labels (REVTAF.forward image_only):
    # a from-scratch encoder then enters the full objective already seeing the findings.
    image_warmup_epochs: int = 0
    batch_size: int = 16
    # 0: every training study once per epoch; else abnormal studies (a positive pathology) make up
    # this share of an epoch's draws (rrg_core.study_dataset.abnormal_sampler)
    abnormal_share: float = 0.0
    lr: float = 3e-4
    min_lr: float = 3e-5
    warmup_steps: int = 200
    warmup_start_lr: float = 1e-6
    weight_decay: float = 0.05
    grad_clip: float = 1.0
    mixed_precision: str = "no"  # no | fp16 | bf16
    num_workers: int = 0
    seed: int = 42
    # bookkeeping
    max_train_studies: int | None = None
    max_val_studies: int | None = 300
    keep_index_texts: bool = True  # False for data whose report text may not be redistributed
    log_every: int = 20
    out_dir: str = "runs/default"
    # How this config was asked for (train.fit's arguments), so a model card can give the command.
    origin: str = ""

    def __post_init__(self) -> None:
        if any(key in FLAT_NAMES and FLAT_NAMES[key][0] for key in self.model):  # a run from before format 2
            self.model = convert_flat(self.model, complete=False)
        if not 0 <= self.image_warmup_epochs < self.epochs:
            raise SystemExit(
                f"image_warmup_epochs ({self.image_warmup_epochs}) must be at least 0 and below epochs "
                f"({self.epochs}): the model needs full epochs to learn to write"
            )

    @classmethod
    def load(cls, name_or_path: str, **overrides: Any) -> TrainConfig:
        """A config by name (train/configs/NAME.json) or path, with overrides applied on top; a
        ``model`` override is merged into the config's model overrides (``--set
        model='{"lre": {"enabled": false}}'`` keeps the config's views, image size and pinned choices)."""
        path = Path(name_or_path)
        if not path.suffix:
            path = CONFIG_DIR / f"{name_or_path}.json"
        if not path.is_file():
            known = sorted(p.stem for p in CONFIG_DIR.glob("*.json"))
            raise SystemExit(f"no training config {name_or_path!r}; known: {known}")
        data = json.loads(path.read_text())
        known_fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted((set(data) | set(overrides)) - known_fields)
        if unknown:
            raise SystemExit(f"unknown training config field(s) {unknown} in {path}")
        origin = f"--config {shlex.quote(str(name_or_path))}"
        if overrides:
            origin += " --set " + " ".join(shlex.quote(f"{k}={json.dumps(v)}") for k, v in overrides.items())
        merged = {**data, **overrides, "origin": origin}
        if isinstance(overrides.get("model"), dict):
            merged["model"] = merge_overrides(data.get("model", {}), overrides["model"])
        return cls(**merged)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """A run's train_config.json; runs from before the rename call the WordPiece size vocab_size."""
        data = dict(data)
        if "vocab_size" in data:
            data["wordpiece_vocab_size"] = data.pop("vocab_size")
        return cls(**data)

    def model_config(self) -> REVTAFConfig:
        """The model this run trains: the preset with the config's model overrides (before the
        data fills in vocabulary size and label priors)."""
        return REVTAFConfig.preset(self.preset, **self.model)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
