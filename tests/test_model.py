from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from model_fixtures import tiny_batch, tiny_model

from rrg_core.config import REVTAFConfig
from rrg_core.model import REVTAF
from rrg_core.observations import OBSERVATIONS
from rrg_core.pipeline import ReportPipeline

LOSS_TERMS = ("loss", "lm", "cls", "align", "rank", "entity")


def test_forward_returns_every_finite_loss_term():
    model, batch = tiny_model()
    losses = model(batch)
    for term in LOSS_TERMS:
        assert torch.isfinite(losses[term]), term
    c = model.config
    expected = (losses["lm"] + c.diagnosis.cls_weight * losses["cls"] + c.fvtaf.consistency_weight * losses["align"]
                + c.lre.rank_weight * losses["rank"]
                + losses["entity"])
    assert torch.allclose(losses["loss"], expected)
    assert losses["rank"] > 0 and losses["align"] > 0 and losses["entity"] > 0


def test_gradients_reach_every_trainable_part():
    model, batch = tiny_model()
    model(batch)["loss"].backward()
    # The text encoder's pooler-free BERT has no unused parameters; position embeddings beyond
    # the longest prompt/sentence legitimately get no gradient.
    missing = [
        name
        for name, p in model.named_parameters()
        if p.requires_grad and (p.grad is None or p.grad.abs().sum() == 0) and "position_embeddings" not in name
    ]
    assert not missing, missing


def test_total_loss_falls_when_overfitting_one_batch():
    model, batch = tiny_model()
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    first = model(batch)["loss"].item()
    for _ in range(40):
        optimizer.zero_grad()
        loss = model(batch)["loss"]
        loss.backward()
        optimizer.step()
    assert loss.item() < 0.6 * first


def test_generate_is_deterministic_and_carries_the_evidence():
    model, batch = tiny_model()
    model.eval()
    images = batch["images"][:2]
    first = ReportPipeline(model).generate(images, image_sizes=[(80, 96), (64, 64)])
    second = ReportPipeline(model).generate(images, image_sizes=[(80, 96), (64, 64)])
    assert [r.text for r in first] == [r.text for r in second]
    report = first[0]
    assert set(report.probabilities) == set(OBSERVATIONS)
    assert all(math.isclose(sum(p), 1.0, rel_tol=1e-5) for p in report.probabilities.values())
    assert len(report.references) == model.config.retrieval.top_k
    distances = [r.distance for r in report.references]
    assert distances == sorted(distances)
    assert report.references[0].is_global_prompt and not report.references[1].is_global_prompt
    kinds = {m.kind for m in report.attention}
    assert kinds == {"region", "global"}
    assert len([m for m in report.attention if m.kind == "region"]) == len(model.config.text.prompts)
    for m in report.attention:
        assert m.heatmap.shape == (80, 96) and m.heatmap.dtype == np.float32
        assert m.heatmap.min() >= 0 and math.isclose(float(m.heatmap.sum()), 1.0, rel_tol=1e-4)
    assert first[1].attention[0].heatmap.shape == (64, 64)


def test_retrieval_matches_brute_force_arcosh():
    model, batch = tiny_model()
    model.eval()
    with torch.no_grad():
        query = model.encode(batch["images"]).query.double()
    index = model.index.embeddings.double()
    c = model.lre.ball.c.item()
    sq = ((query[:, None] - index[None]) ** 2).sum(-1)
    denom = (1 - c * (query**2).sum(-1))[:, None] * (1 - c * (index**2).sum(-1))[None]
    brute = torch.arccosh(1 + 2 * c * sq / denom) / math.sqrt(c)
    distances, indices = model.retrieve(query.float())
    expected = brute.argsort(dim=1)[:, : model.config.retrieval.top_k]
    assert torch.equal(indices, expected)
    assert torch.allclose(distances.double(), brute.gather(1, expected), atol=1e-3)


def test_own_study_is_excluded_during_training():
    model, batch = tiny_model()
    _, indices = model.retrieve(model.encode(batch["images"]).query, batch["study_ids"])
    for row, sid in zip(indices.tolist(), batch["study_ids"]):
        assert sid not in [model.index.study_ids[i] for i in row]


def test_save_load_round_trip_gives_identical_outputs(tmp_path):
    model, batch = tiny_model()
    model.eval()
    model.save_pretrained(tmp_path)
    loaded = REVTAF.from_pretrained(tmp_path)
    a = ReportPipeline(model).generate(batch["images"][:2])
    b = ReportPipeline(loaded).generate(batch["images"][:2])
    assert [r.text for r in a] == [r.text for r in b]
    assert all(np.allclose(x.probabilities[o], y.probabilities[o]) for x, y in zip(a, b) for o in OBSERVATIONS)
    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name


def test_half_precision_folder_loads_into_float32_and_nearly_the_same_model(tmp_path):
    model, batch = tiny_model()
    model.eval()
    model.save_pretrained(tmp_path / "fp32")
    model.half().save_pretrained(tmp_path / "fp16")
    model = REVTAF.from_pretrained(tmp_path / "fp32")
    size = lambda d: (tmp_path / d / "model.safetensors").stat().st_size  # noqa: E731
    assert size("fp16") < 0.6 * size("fp32")
    loaded = REVTAF.from_pretrained(tmp_path / "fp16")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    a, b = (ReportPipeline(m).generate(batch["images"][:2]) for m in (model, loaded))
    for x, y in zip(a, b):
        assert np.allclose(x.probabilities["Cardiomegaly"], y.probabilities["Cardiomegaly"], atol=1e-2)


def test_incompatible_or_corrupt_folders_fail_clearly(tmp_path):
    model, _ = tiny_model()
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())

    (tmp_path / "config.json").write_text(json.dumps({**config, "format_version": 99}))
    with pytest.raises(ValueError, match="format_version"):
        REVTAF.from_pretrained(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps({**config, "d_model": 48}))
    with pytest.raises(ValueError, match="wrong shape"):
        REVTAF.from_pretrained(tmp_path)

    (tmp_path / "config.json").write_text(json.dumps(config))
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ValueError, match="safetensors"):
        REVTAF.from_pretrained(tmp_path)


def test_switching_lre_off_retrieves_by_pooled_cosine():
    model, batch = tiny_model(lre={"enabled": False})
    assert model.lre is None and model.config.search_metric == "cosine"
    losses = model(batch)
    assert losses["rank"] == 0 and losses["align"] > 0
    assert model.index.metric == "cosine"


def test_switching_fvtaf_off_feeds_plain_patch_tokens():
    model, batch = tiny_model(fvtaf={"enabled": False})
    assert model.fvtaf is not None and not model.fvtaf.fuses
    losses = model(batch)
    assert losses["align"] == 0 and losses["rank"] > 0
    reports = ReportPipeline(model.eval()).generate(batch["images"][:1])
    assert {m.kind for m in reports[0].attention} == {"region"}
    assert not reports[0].references[0].is_global_prompt


def test_switching_mpsa_off_uses_softmax_attention():
    model, _ = tiny_model(fvtaf={"mpsa": False})
    assert model.fvtaf.region_attention.mode == "softmax"
    assert model.fvtaf.global_attention.mode == "softmax"
    sinkhorn, _ = tiny_model()
    assert sinkhorn.fvtaf.region_attention.mode == "sinkhorn"


def test_all_switches_off_is_the_baseline():
    model, batch = tiny_model(lre={"enabled": False}, fvtaf={"enabled": False})
    assert model.fvtaf is None and model.lre is None and model.entity_scores is None
    losses = model(batch)
    assert losses["rank"] == 0 and losses["align"] == 0 and losses["entity"] == 0
    assert ReportPipeline(model.eval()).generate(batch["images"][:1])[0].attention == []


def test_two_view_model_accepts_a_single_view_study():
    model, _ = tiny_model(vision={"n_views": 2})
    model.eval()
    pixels = np.random.default_rng(0).random((100, 90), dtype=np.float32)
    reporter = ReportPipeline(model)
    report = reporter([pixels])[0]
    assert {m.view for m in report.attention} == {0, 1}
    assert report.attention[0].heatmap.shape == (100, 90)
    lateral = np.random.default_rng(1).random((70, 120), dtype=np.float32)
    both = reporter([[pixels, lateral]])[0]
    assert {m.heatmap.shape for m in both.attention if m.view == 0} == {(100, 90)}
    assert {m.heatmap.shape for m in both.attention if m.view == 1} == {(70, 120)}
    named = {m.prompt: m.observation for m in both.attention if m.kind == "region"}
    assert named[model.config.text.prompts[0]] == OBSERVATIONS[0]
    assert named["right hilum"] is None


def _centre_of_mass(heatmap: np.ndarray) -> np.ndarray:
    """Where a map's mass sits, in fractions of the image's height and width."""
    h, w = heatmap.shape
    return np.array([(heatmap.sum(1) * (np.arange(h) + 0.5)).sum() / h, (heatmap.sum(0) * (np.arange(w) + 0.5)).sum() / w])


def test_heatmaps_can_be_capped_in_size_keeping_the_aspect_and_the_attention():
    model, _ = tiny_model()
    model.eval()
    pixels = np.random.default_rng(0).random((300, 200), dtype=np.float32)
    reporter = ReportPipeline(model)
    full = reporter([pixels], num_beams=1, max_new_tokens=3)[0]
    capped = reporter([pixels], num_beams=1, max_new_tokens=3, max_map_side=60)[0]
    assert capped.text == full.text
    for big, small in zip(full.attention, capped.attention):
        assert big.heatmap.shape == (300, 200) and small.heatmap.shape == (60, 40)
        assert math.isclose(float(small.heatmap.sum()), 1.0, rel_tol=1e-4)
        assert np.abs(_centre_of_mass(big.heatmap) - _centre_of_mass(small.heatmap)).max() < 0.01  # same place
    report = reporter([pixels], num_beams=1, max_new_tokens=3, max_map_side=500)[0]
    assert report.attention[0].heatmap.shape == (300, 200)


def test_presets_build_and_the_tiny_one_is_tiny():
    config = REVTAFConfig.preset("tiny")
    assert config.vision.image_size == 64
    with pytest.raises(ValueError, match="unknown preset"):
        REVTAFConfig.preset("huge")
    tokenizer = tiny_batch.__globals__["tiny_tokenizer"]()
    small = REVTAF(REVTAFConfig.preset("small", decoder={"vocab_size": len(tokenizer)}), tokenizer)
    assert 5e6 < sum(p.numel() for p in small.parameters()) < 30e6


def test_decision_adjustment_trades_positives_for_precision():
    model, batch = tiny_model()
    logits = torch.zeros(3, 14, 4)
    logits[:, :, 1] = 2.0  # raw POS logits high, as logit adjustment trains them for rare classes
    model.diagnosis.logit_adjustment[:, 1] = math.log(0.05)
    probabilities, balanced = model.diagnosis.decide(logits, 0.0)
    _, posterior = model.diagnosis.decide(logits, 1.0)
    assert (balanced == 1).all() and (posterior != 1).all()
    assert torch.allclose(probabilities.sum(-1), torch.ones(3, 14))
    assert probabilities[0, 0, 1] < 0.5  # the reported probability is the posterior


def test_feature_pyramid_halves_the_token_stride_and_uses_both_stages():
    fine, batch = tiny_model()
    size = fine.config.vision.image_size
    assert len(fine.config.vision.depths) == 3  # the deepest stage's stride is 16
    assert fine.visual.stride == 8 and fine.visual(batch["images"]).grid == (size // 8, size // 8)
    fine.visual(batch["images"]).tokens.square().sum().backward()
    assert fine.visual.lateral.weight.grad.abs().sum() > 0 and fine.visual.project[0].weight.grad.abs().sum() > 0


def _receptive_field_centre(encoder, images, token: tuple[int, int]) -> np.ndarray:
    """Where in the (first view of the) input a token looks: the centroid of |d token / d pixel|,
    in continuous pixel coordinates (pixel k spans [k, k + 1))."""
    images = images.clone().requires_grad_(True)
    features = encoder(images)
    gh, gw = features.grid
    features.tokens.reshape(len(images), encoder.n_views, gh, gw, -1)[:, 0, token[0], token[1]].square().sum().backward()
    weight = images.grad[:, 0, 0].abs().sum(0)
    position = torch.arange(weight.shape[-1]) + 0.5
    total = weight.sum()
    return np.array([float((weight.sum(1) * position).sum() / total), float((weight.sum(0) * position).sum() / total)])


def test_heatmaps_put_each_token_on_its_receptive_field():
    """A map that is all on one token must peak where that token looks in the image, odd and
    even tokens alike (a plain resize puts it half a token down-right; nearest upsampling in the
    pyramid would shift odd tokens by one more)."""
    from rrg_core.preprocessing import upsample_maps
    from rrg_core.visual_encoder import VisualEncoder

    torch.manual_seed(0)
    config = REVTAFConfig.preset("tiny", vision={"image_size": 128})
    encoder = VisualEncoder(config).eval()
    images = torch.randn(8, 1, 1, 128, 128)
    grid = encoder(images).grid
    stride = 128 / grid[0]
    errors = []
    for token in [(grid[0] // 2, grid[1] // 2 - 1), (grid[0] // 2 - 2, grid[1] // 2 + 1), (grid[0] // 2 + 1, grid[1] // 2)]:
        one_token = torch.zeros(grid[0] * grid[1])
        one_token[token[0] * grid[1] + token[1]] = 1.0
        heatmap = upsample_maps(one_token, grid, (128, 128), 128)
        peak = np.array(np.unravel_index(heatmap.argmax(), heatmap.shape)) + 0.5
        errors.append(peak - _receptive_field_centre(encoder, images, token))
    errors = np.array(errors)
    assert np.abs(errors.mean(0)).max() < stride / 4, errors  # no systematic shift
    assert np.abs(errors).max() < stride / 2, errors  # and no token off by half a token or more


def test_upsampled_maps_match_torch_grid_sample_on_the_token_lattice():
    """Our separable sampling against torch's grid_sample (bilinear, border) at the same points."""
    import torch.nn.functional as F

    from rrg_core.preprocessing import upsample_maps

    grid, size, input_size = (6, 6), (33, 50), 96
    maps = torch.rand(3, grid[0] * grid[1])
    axes = []
    for n_out, n_tokens in zip(size, grid):
        index = ((torch.arange(n_out) + 0.5) * input_size / n_out - 0.5) / (input_size / n_tokens)
        axes.append(index / (n_tokens - 1) * 2 - 1)
    ys, xs = torch.meshgrid(*axes, indexing="ij")
    points = torch.stack([xs, ys], dim=-1).expand(3, -1, -1, -1)
    expected = F.grid_sample(maps.reshape(3, 1, *grid), points, mode="bilinear", padding_mode="border", align_corners=True)[:, 0]
    expected = expected / expected.sum(dim=(-2, -1), keepdim=True)
    np.testing.assert_allclose(upsample_maps(maps, grid, size, input_size), expected.numpy(), rtol=1e-5, atol=1e-8)


def test_aligned_pyramid_upsampling_keeps_deep_tokens_on_even_fine_tokens():
    from rrg_core.visual_encoder import upsample_on_lattice

    deep = torch.randn(2, 3, 4, 5)
    fine = upsample_on_lattice(deep, (8, 9))
    assert fine.shape == (2, 3, 8, 9)
    torch.testing.assert_close(fine[..., ::2, ::2], deep)
    torch.testing.assert_close(fine[..., 1:-1:2, ::2], (deep[..., :-1, :] + deep[..., 1:, :]) / 2)
    torch.testing.assert_close(fine[..., -1, ::2], deep[..., -1, :])  # clamped at the far border


def test_similarity_pooling_is_a_soft_maximum_of_the_mpsa_cosine():
    model, batch = tiny_model()
    region = model.encode(batch["images"]).region
    scores = model.entity_scores
    pooled = (scores(region) - scores.bias) / scores.scale
    t = model.config.fvtaf.sinkhorn_epsilon
    expected = t * (torch.logsumexp(region.similarity / t, -1) - math.log(region.similarity.shape[-1]))
    torch.testing.assert_close(pooled, expected)
    # between the mean and the maximum of the cosines, and close to the maximum at this temperature
    assert (pooled <= region.similarity.amax(-1) + 1e-6).all() and (pooled >= region.similarity.mean(-1) - 1e-6).all()


def test_ranking_loss_trains_the_hyperbolic_network_only():
    """As with REVTAF's frozen MedKLIP, retrieval ranking must not pull on the image encoder."""
    model, batch = tiny_model()
    encoded = model.encode(batch["images"])
    model.lre.ranking_loss(encoded.query, batch["states"]).backward()
    assert all(p.grad is None or p.grad.abs().sum() == 0 for p in model.visual.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.lre.parameters())


def test_diagnosis_reads_the_entity_scores():
    model, batch = tiny_model()
    model.eval()
    encoded = model.encode(batch["images"])
    noisy = dataclasses.replace(encoded, entity_logits=encoded.entity_logits + torch.randn_like(encoded.entity_logits))
    logits, shifted = model.diagnose(encoded), model.diagnose(noisy)
    assert torch.equal(logits.indices, shifted.indices)  # the same references read
    assert not torch.allclose(logits.logits, shifted.logits)


def test_prompt_offsets_are_added_to_the_prompt_text_embeddings():
    model, batch = tiny_model()
    model.eval()
    encoded = model.encode(batch["images"])
    torch.testing.assert_close(encoded.prompts[0], model.text(model.config.text.prompts) + model.prompt_offsets)
    with torch.no_grad():
        model.prompt_offsets.zero_()
    torch.testing.assert_close(model.encode(batch["images"]).prompts[0], model.text(model.config.text.prompts))


def test_prompt_embeddings_are_kept_at_inference_until_a_weight_changes():
    model, batch = tiny_model()
    model.eval()
    with torch.no_grad():
        first = model.prompt_embeddings()
        assert model.prompt_embeddings() is first  # computed once per weights, not per request
        model.prompt_offsets.add_(1.0)  # an optimiser step or load_state_dict changes weights in place
        moved = model.prompt_embeddings()
        torch.testing.assert_close(moved, first + 1.0)
        model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
        assert model.prompt_embeddings() is not moved
        model.double()  # moving to another dtype or device keeps the version counters
        assert model.prompt_embeddings().dtype == torch.float64
    model.train()
    with torch.no_grad():
        assert model.prompt_embeddings() is not model.prompt_embeddings()  # never cached in training


def test_image_only_needs_the_entity_scores():
    model, batch = tiny_model(lre={"enabled": False}, fvtaf={"enabled": False})
    with pytest.raises(ValueError, match="image_only needs the entity scores"):
        model(batch, image_only=True)
    full, _ = tiny_model()
    losses = full(batch, image_only=True)
    assert losses["lm"] == 0 and losses["cls"] == 0 and losses["entity"] > 0
    torch.testing.assert_close(losses["loss"], full.config.fvtaf.entity_weight * losses["entity"])
    calls = []
    full.lre.register_forward_hook(lambda *args: calls.append(1))
    full(batch, image_only=True)
    assert not calls  # the warm-up does not retrieve, so the hyperbolic network is not run
