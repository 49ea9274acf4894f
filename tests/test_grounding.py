"""The optional mask-supervised heatmap loss (rrg_core.grounding) and the masks that feed it."""
from __future__ import annotations

import pytest
import torch
from model_fixtures import tiny_model, tiny_tokenizer, write_tiny_dataset

from rrg_core.config import REVTAFConfig
from rrg_core.datasets import load_annotation
from rrg_core.grounding import grounding_loss, token_coverage
from rrg_core.lre import entity_loss
from rrg_core.observations import OBSERVATIONS, State
from rrg_core.prompts import N_FINDING_PROMPTS
from rrg_core.study_dataset import StudyDataset, augment, collate

EFFUSION = OBSERVATIONS.index("Pleural Effusion")


def test_a_token_covers_the_cell_centred_on_its_receptive_field():
    masks = torch.zeros(1, 1, 64, 64)
    masks[0, 0, 8 * 3 - 2 : 8 * 3 + 2, 8 * 5 - 2 : 8 * 5 + 2] = 1  # 4 x 4 px around input pixel (24, 40)
    cover = token_coverage(masks, (8, 8)).reshape(8, 8)
    assert cover.argmax().item() == 3 * 8 + 5
    assert cover[3, 5] == pytest.approx(16 / 64) and cover.sum() == pytest.approx(16 / 64)


def _effusion_states(n: int, state: State) -> torch.Tensor:
    states = torch.full((n, len(OBSERVATIONS)), int(State.BLANK))
    states[:, EFFUSION] = int(state)
    return states


def test_the_loss_is_small_when_the_map_sits_on_the_finding_and_large_elsewhere():
    masks = torch.zeros(1, N_FINDING_PROMPTS, 64, 64)
    masks[0, EFFUSION, 40:, :24] = 1  # lower left
    inside, outside = torch.zeros(2, 1, 20, 64)
    inside[0, EFFUSION, 6 * 8 + 1] = 1  # token (6, 1): its whole cell is in the mask
    outside[0, EFFUSION, 1 * 8 + 6] = 1  # token (1, 6): upper right
    states = _effusion_states(1, State.POSITIVE)
    assert grounding_loss(inside, masks, states, (8, 8)).item() == pytest.approx(0.0, abs=1e-6)
    assert grounding_loss(outside, masks, states, (8, 8)).item() > 10
    # absent (negative) findings and findings without masks are not supervised
    assert grounding_loss(outside, masks, _effusion_states(1, State.NEGATIVE), (8, 8)).item() == 0
    assert grounding_loss(outside, torch.zeros_like(masks), states, (8, 8)).item() == 0


def test_augmentation_moves_the_masks_with_the_image():
    image = torch.zeros(1, 64, 64)
    image[0, 10:20, 40:50] = 1
    masks = torch.zeros(2, 64, 64)
    masks[1] = image[0]
    moved, moved_masks = augment(image, torch.Generator().manual_seed(3), masks)
    bright = moved[0] > (moved.min() + moved.max()) / 2
    assert torch.equal(bright, moved_masks[1] > 0.5) and moved_masks[0].abs().max() == 0
    assert not torch.equal(bright, image[0] > 0.5)  # it did move
    again, no_masks = augment(image, torch.Generator().manual_seed(3))
    assert torch.equal(again, moved) and no_masks is None


def test_items_carry_the_frontal_finding_masks_only_when_grounding_is_on(tmp_path):
    data = write_tiny_dataset(tmp_path / "data", masks=True)
    studies = load_annotation(data)["train"]
    tokenizer = tiny_tokenizer()
    plain = StudyDataset(studies, REVTAFConfig.preset("tiny"), tokenizer)
    assert "masks" not in collate([plain[0], plain[2]])
    grounded = StudyDataset(studies, REVTAFConfig.preset("tiny", fvtaf={"grounding_weight": 1.0}), tokenizer, train=True)
    batch = collate([grounded[0], grounded[2]])  # a normal study and one with a masked effusion
    assert batch["masks"].shape == (2, N_FINDING_PROMPTS, 64, 64)
    assert batch["masks"][0].max() == 0
    assert batch["masks"][1, EFFUSION].max() > 0.9 and batch["masks"][1].sum() == batch["masks"][1, EFFUSION].sum()


def test_the_model_adds_the_weighted_grounding_term_and_it_trains_the_map():
    model, batch = tiny_model(fvtaf={"grounding_weight": 2.0})
    masks = torch.zeros(len(batch["states"]), N_FINDING_PROMPTS, 64, 64)
    masks[:, :, 32:, :32] = 1  # every present finding sits in the lower left
    batch = {**batch, "masks": masks}
    losses = model(batch)
    terms = losses["lm"] + 4 * losses["cls"] + 0.5 * losses["align"] + 2 * losses["rank"] + losses["entity"]
    assert losses["ground"] > 0
    assert losses["loss"].item() == pytest.approx((terms + 2 * losses["ground"]).item(), rel=1e-5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    first = model(batch, image_only=True)["ground"].item()
    for _ in range(15):
        loss = model(batch, image_only=True)["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert model(batch, image_only=True)["ground"].item() < 0.7 * first


def test_without_masks_in_the_batch_the_term_is_zero():
    model, batch = tiny_model(fvtaf={"grounding_weight": 1.0})
    assert model(batch)["ground"].item() == 0


def test_grounding_needs_the_region_maps():
    with pytest.raises(ValueError, match="grounding_weight"):
        REVTAFConfig.preset("tiny", fvtaf={"grounding_weight": 1.0, "enabled": False}, lre={"enabled": False})


def test_the_entity_loss_supervises_the_finding_prompts_only():
    """No Finding (the 14th state) has no prompt: the 14th prompt is a region and stays unsupervised."""
    states = torch.full((2, len(OBSERVATIONS)), int(State.NEGATIVE))
    states[:, OBSERVATIONS.index("No Finding")] = int(State.POSITIVE)
    logits = torch.full((2, 34), -20.0)
    base = entity_loss(logits, states)
    logits[:, N_FINDING_PROMPTS] = 20.0  # a region prompt's score
    assert entity_loss(logits, states) == base
