"""Torch side of the data: Study records -> model batches (training, indexing, evaluation)."""
from __future__ import annotations

import math
from collections.abc import Sequence
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, WeightedRandomSampler
from transformers import PreTrainedTokenizerBase

from .config import REVTAFConfig
from .datasets import Study
from .observations import OBSERVATIONS, is_abnormal, labels_to_states
from .preprocessing import prepare_study
from .prompts import FINDING_PROMPTS, N_FINDING_PROMPTS
from .report_text import normalize_report
from .xray_io import read_xray


def read_masks(study: Study) -> dict[str, list[np.ndarray]]:
    """A study's finding masks (SynthCXR): boolean arrays at the masks' own size, one per instance."""
    return {
        name: [np.asarray(Image.open(p).convert("L")) > 127 for p in paths]
        for name, paths in study.mask_paths.items()
        if name in FINDING_PROMPTS
    }


def finding_masks(study: Study, size: int) -> Tensor:
    """[N_FINDING_PROMPTS, size, size] float in [0, 1]: each finding's instances united and resized
    like the image (:func:`rrg_core.preprocessing.prepare_image`); zeros where the study has none."""
    out = torch.zeros(N_FINDING_PROMPTS, size, size)
    for name, masks in read_masks(study).items():
        union = torch.from_numpy(np.logical_or.reduce(masks).astype(np.float32))[None, None]
        resized = F.interpolate(union, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[OBSERVATIONS.index(name)] = resized[0, 0]
    return out


def augment(image: Tensor, generator: torch.Generator, masks: Tensor | None = None) -> tuple[Tensor, Tensor | None]:
    """Mild, anatomy-preserving jitter: rotate +-5 deg, scale 0.92-1.05, shift +-4 %, contrast/brightness.

    ``masks`` [F, H, W] (the view's finding masks) move with the image; returns (image, masks)."""

    def uniform(lo: float, hi: float) -> float:
        return lo + (hi - lo) * float(torch.rand((), generator=generator))

    angle, scale = math.radians(uniform(-5, 5)), uniform(0.92, 1.05)
    tx, ty = uniform(-0.04, 0.04), uniform(-0.04, 0.04)
    cos, sin = math.cos(angle) / scale, math.sin(angle) / scale
    theta = torch.tensor([[cos, -sin, tx], [sin, cos, ty]], dtype=image.dtype)[None]
    grid = F.affine_grid(theta, [1, 1, *image.shape[-2:]], align_corners=False)

    def warp(x: Tensor) -> Tensor:
        return F.grid_sample(x[None], grid, align_corners=False, padding_mode="zeros")[0]

    fill = image.min()
    moved = (warp(image - fill) + fill) * uniform(0.9, 1.1) + uniform(-0.1, 0.1)
    return moved, None if masks is None else warp(masks)


class StudyDataset(Dataset):
    """Reads a study's views with :func:`rrg_core.read_xray`, normalises its report the way the
    field does (R2Gen cleaning) and tokenises it for the decoder. With ``grounding_weight`` set,
    items also carry the frontal view's finding masks (:func:`finding_masks`)."""

    def __init__(
        self,
        studies: Sequence[Study],
        config: REVTAFConfig,
        tokenizer: PreTrainedTokenizerBase,
        *,
        dataset: str = "iu_xray",
        train: bool = False,
        seed: int = 0,
    ) -> None:
        self.studies = list(studies)
        self.config = config
        self.tokenizer = tokenizer
        self.dataset = dataset
        self.train = train
        self.seed = seed
        self.epoch = 0  # set by the training loop so augmentation differs between epochs

    def __len__(self) -> int:
        return len(self.studies)

    def load_views(self, study: Study) -> list:
        paths = study.image_paths[: self.config.vision.n_views]
        return [read_xray(p).pixels for p in paths]

    def __getitem__(self, i: int) -> dict:
        study = self.studies[i]
        c = self.config
        images = prepare_study(self.load_views(study), c)
        masks = finding_masks(study, c.vision.image_size) if c.fvtaf.grounding_weight else None
        if self.train:
            generator = torch.Generator().manual_seed(hash((self.seed, self.epoch, i)) & 0x7FFFFFFF)
            frontal, masks = augment(images[0], generator, masks)
            images = torch.stack([frontal] + [augment(view, generator)[0] for view in images[1:]])
        report = normalize_report(study.report, self.dataset)
        ids = self.tokenizer(report, add_special_tokens=False, truncation=True,
                             max_length=c.decoder.max_report_tokens)["input_ids"]
        item = {
            "images": images,
            "report": report,
            "report_ids": torch.tensor(ids, dtype=torch.long),
            "states": torch.tensor(labels_to_states(study.labels), dtype=torch.long),
            "study_id": study.study_id,
        }
        if masks is not None:
            item["masks"] = masks
        return item


def collate(items: Sequence[dict], pad_id: int = 0) -> dict:
    """Stack a list of :class:`StudyDataset` items into a model batch."""
    length = max(1, max(len(it["report_ids"]) for it in items))
    report_ids = torch.full((len(items), length), pad_id, dtype=torch.long)
    report_mask = torch.zeros((len(items), length), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["report_ids"])
        report_ids[row, :n] = it["report_ids"]
        report_mask[row, :n] = 1
    batch = {
        "images": torch.stack([it["images"] for it in items]),
        "report_ids": report_ids,
        "report_mask": report_mask,
        "states": torch.stack([it["states"] for it in items]),
        "study_ids": [it["study_id"] for it in items],
        "reports": [it["report"] for it in items],
    }
    if "masks" in items[0]:
        batch["masks"] = torch.stack([it["masks"] for it in items])
    return batch


def study_loader(
    studies: Sequence[Study],
    config: REVTAFConfig,
    tokenizer: PreTrainedTokenizerBase,
    *,
    dataset: str = "iu_xray",
    batch_size: int = 16,
    train: bool = False,
    seed: int = 0,
    num_workers: int = 0,
    abnormal_share: float = 0.0,
) -> DataLoader:
    """Model batches of ``studies``; when training: augmented, shuffled (seeded), no ragged last
    batch, and with ``abnormal_share`` > 0 drawn (with replacement, as many draws as studies) so
    that abnormal studies make up that share of an epoch."""
    generator = torch.Generator().manual_seed(seed)
    sampler = abnormal_sampler(studies, abnormal_share, generator) if train and abnormal_share else None
    return DataLoader(
        StudyDataset(studies, config, tokenizer, dataset=dataset, train=train, seed=seed),
        batch_size=batch_size,
        shuffle=train and sampler is None,
        sampler=sampler,
        drop_last=train,
        num_workers=num_workers,
        collate_fn=partial(collate, pad_id=tokenizer.pad_token_id),
        generator=generator,
    )


def abnormal_sampler(studies: Sequence[Study], share: float, generator: torch.Generator) -> WeightedRandomSampler:
    """Draws abnormal studies (a positive pathology) ``share`` of the time. On IU X-Ray about one
    study in five is abnormal, and a decoder trained on the natural mix writes the normal template
    whatever its state prompts say: it needs more abnormal reports to learn what a positive prompt asks for."""
    if not 0 < share < 1:
        raise ValueError(f"abnormal_share must lie strictly between 0 and 1, got {share}")
    abnormal = torch.tensor([is_abnormal(s.labels) for s in studies])
    if abnormal.all() or not abnormal.any():
        raise ValueError("abnormal_share needs both normal and abnormal studies")
    weights = torch.where(abnormal, share / abnormal.sum(), (1 - share) / (~abnormal).sum()).double()
    return WeightedRandomSampler(weights, num_samples=len(studies), replacement=True, generator=generator)
