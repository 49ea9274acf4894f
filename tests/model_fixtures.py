"""Tiny models, batches and datasets for the tests: built in seconds, nothing committed."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
from PIL import Image

from rrg_core.config import REVTAFConfig, merge_overrides
from rrg_core.indexing import build_index
from rrg_core.model import REVTAF
from rrg_core.observations import OBSERVATIONS, State
from rrg_core.pipeline import ReportPipeline
from rrg_core.tokenizer import train_tokenizer

REPORTS = [
    "the heart is normal in size . the lungs are clear . no pleural effusion or pneumothorax .",
    "mild cardiomegaly . no focal consolidation . no pleural effusion .",
    "small left pleural effusion . the heart size is normal . no pneumothorax .",
    "right lower lobe consolidation concerning for pneumonia . no pneumothorax .",
    "endotracheal tube terminates above the carina . the lungs are clear .",
    "moderate cardiomegaly with pulmonary edema . small bilateral pleural effusions .",
]


def tiny_tokenizer():
    return train_tokenizer(REPORTS * 3, vocab_size=200, min_frequency=1)


def tiny_batch(tokenizer, config: REVTAFConfig, n: int = 6, seed: int = 0) -> dict:
    g = torch.Generator().manual_seed(seed)
    size = config.vision.image_size
    images = torch.randn(n, config.vision.n_views, 1, size, size, generator=g)
    reports = [REPORTS[i % len(REPORTS)] for i in range(n)]
    enc = tokenizer(reports, add_special_tokens=False, padding=True, return_tensors="pt")
    states = torch.full((n, len(OBSERVATIONS)), int(State.BLANK))
    for i in range(n):
        states[i, i % 5] = int(State.POSITIVE)
        states[i, (i + 2) % 7] = int(State.NEGATIVE)
    return {
        "images": images,
        "report_ids": enc["input_ids"],
        "report_mask": enc["attention_mask"],
        "states": states,
        "study_ids": [f"s{i}" for i in range(n)],
        "reports": reports,
    }


def tiny_model(seed: int = 0, **overrides) -> tuple[REVTAF, dict]:
    torch.manual_seed(seed)
    tokenizer = tiny_tokenizer()
    config = REVTAFConfig.preset("tiny", **merge_overrides({"decoder": {"vocab_size": len(tokenizer)}}, overrides))
    model = REVTAF(config, tokenizer)
    batch = tiny_batch(tokenizer, config)
    model.index = build_index(model, [batch])
    return model, batch


LABELS = [
    {"No Finding": 1},
    {"Cardiomegaly": 1, "Consolidation": 0, "Pleural Effusion": 0},
    {"Pleural Effusion": 1, "Cardiomegaly": 0, "Pneumothorax": 0},
    {"Consolidation": -1, "Pneumonia": 1, "Pneumothorax": 0},
    {"Support Devices": 1, "No Finding": 1},
    {"Cardiomegaly": 1, "Edema": 1, "Pleural Effusion": 1},
]


def write_tiny_dataset(root, n_train=12, n_val=4, n_test=4, masks=False):
    rng = np.random.default_rng(0)
    splits = {"train": [], "val": [], "test": []}
    for split, n in (("train", n_train), ("val", n_val), ("test", n_test)):
        for i in range(n):
            sid = f"{split}{i}"
            (root / "images" / sid).mkdir(parents=True)
            k = i % len(REPORTS)
            image = (rng.random((72, 72)) * 60 + 40 * k).astype(np.uint8)
            Image.fromarray(image).save(root / "images" / sid / "0.png")
            entry = {"id": sid, "report": REPORTS[k], "image_path": [f"{sid}/0.png"], "split": split, "labels": LABELS[k]}
            if masks and LABELS[k].get("Pleural Effusion") == 1:
                (root / "masks" / sid).mkdir(parents=True)
                mask = np.zeros((72, 72), np.uint8)
                mask[40:, :30] = 255
                Image.fromarray(mask).save(root / "masks" / sid / "pleural_effusion_0.png")
                entry["masks"] = {"Pleural Effusion": [f"{sid}/pleural_effusion_0.png"]}
            splits[split].append(entry)
    (root / "annotation.json").write_text(json.dumps(splits))
    return root


def fit_tiny_gate(model: REVTAF, root, n: int = 24) -> ReportPipeline:
    """``model`` with a gate and a calibration fitted on a few phantoms (two seeds) against a few
    synthetic non-radiographs, as train.fit_gate does for released weights."""
    from rrg_core.calibration import Calibration
    from rrg_core.datasets import load_split
    from rrg_core.gate import Gate
    from rrg_core.phantoms import write_dataset
    from train.fit_gate import frontal_pixels, non_radiograph_stats, observe_studies

    fit, held = (load_split(write_dataset(root / f"phantoms{seed}", n=n, seed=seed), "all") for seed in (11, 12))
    fitted, held_out = observe_studies(model, fit), observe_studies(model, held)
    negative = non_radiograph_stats(model, frontal_pixels(fit), n, seed=1)
    gate = Gate.fit(fitted.both(), held_out.both(), negative, trained_on="synthetic phantoms",
                    fitted_on="tiny test phantoms", quantile=1.0)
    # 24 phantoms give a noisy Mahalanobis estimate: a margin, so that an unseen phantom's verdict
    # does not hang on rounding (torch's thread count, set by earlier tests, changes the last digits).
    calibration = Calibration.fit(held_out.native.p_positive.numpy(), held_out.positive, "tiny test phantoms")
    return ReportPipeline(model, gate=dataclasses.replace(gate, threshold=1.5 * gate.threshold), calibration=calibration)
