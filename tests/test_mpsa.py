"""MPSA against independent computations (POT per head, PyTorch's SDPA), masks, permutations, gradients."""
from __future__ import annotations

import numpy as np
import ot
import pytest
import torch
import torch.nn.functional as F

from rrg_core import mpsa
from rrg_core.mpsa import MultiPromptSinkhornAttention
from rrg_core.sinkhorn import SinkhornResult

B, P, K, D, H = 2, 12, 5, 16, 4
MODES = ["sinkhorn", "softmax"]


def make_inputs(seed: int = 0, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randn(B, P, D, generator=g, dtype=dtype)
    prompts = torch.randn(B, K, D, generator=g, dtype=dtype)
    mask = torch.tensor([[True, True, False, True, False], [True, True, True, True, True]])
    return tokens, prompts, mask


def make_module(mode: str, **kwargs: object) -> MultiPromptSinkhornAttention:
    torch.manual_seed(0)
    return MultiPromptSinkhornAttention(D, n_heads=H, mode=mode, **kwargs).eval()


def heads(x: torch.Tensor) -> torch.Tensor:
    return x.reshape(x.shape[0], x.shape[1], H, D // H).transpose(1, 2)


@pytest.mark.parametrize("mode", MODES)
def test_shapes_maps_and_similarity(mode: str) -> None:
    module = make_module(mode)
    tokens, prompts, mask = make_inputs()
    out = module(tokens, prompts, mask)
    assert out.fused.shape == (B, P, D) and out.maps.shape == (B, K, P) and out.similarity.shape == (B, K, P)
    assert out.fused.dtype == out.maps.dtype == out.similarity.dtype == torch.float32
    assert (out.maps >= 0).all()
    torch.testing.assert_close(out.maps.sum(-1), mask.float())  # 1 for real prompts, 0 for masked ones
    assert (out.maps[~mask] == 0).all()
    cosine = F.normalize(heads(module.q_proj(tokens)), dim=-1) @ F.normalize(heads(module.k_proj(prompts)), dim=-1).mT
    torch.testing.assert_close(out.similarity, cosine.mean(1).mT)
    assert out.similarity.abs().max() <= 1 + 1e-6


def test_sinkhorn_mode_matches_pot_per_head() -> None:
    """fused and maps rebuilt from POT's plan of 1 - cos(q, k) for every (sample, head)."""
    module = make_module("sinkhorn", max_iter=5000, tol=1e-12).double()
    tokens, prompts, mask = make_inputs(1, torch.float64)
    out = module(tokens, prompts, mask)
    with torch.no_grad():
        q, k, v = (heads(proj(x)) for proj, x in [(module.q_proj, tokens), (module.k_proj, prompts), (module.v_proj, prompts)])
        cost = 1 - F.normalize(q, dim=-1) @ F.normalize(k, dim=-1).mT
        attended, maps = torch.zeros(B, H, P, D // H, dtype=torch.float64), torch.zeros(B, H, K, P, dtype=torch.float64)
        for b in range(B):
            valid = mask[b]
            n_valid = int(valid.sum())
            for h in range(H):
                plan = torch.from_numpy(
                    ot.sinkhorn(np.full(P, 1 / P), np.full(n_valid, 1 / n_valid), cost[b, h][:, valid].numpy(),
                                module.epsilon, method="sinkhorn_log", stopThr=1e-13, numItermax=20_000)
                )
                attended[b, h] = (plan * P) @ v[b, h][valid]
                maps[b, h, valid] = (plan * n_valid).T
        fused = module.norm(tokens + module.out_proj(attended.transpose(1, 2).reshape(B, P, D)))
    torch.testing.assert_close(out.fused, fused, rtol=1e-7, atol=1e-9)
    torch.testing.assert_close(out.maps, maps.mean(1), rtol=1e-7, atol=1e-12)


def test_softmax_mode_is_scaled_dot_product_attention() -> None:
    module = make_module("softmax")
    tokens, prompts, mask = make_inputs(2)
    out = module(tokens, prompts, mask)
    with torch.no_grad():
        q, k, v = (heads(proj(x)) for proj, x in [(module.q_proj, tokens), (module.k_proj, prompts), (module.v_proj, prompts)])
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=mask[:, None, None, :])
        fused = module.norm(tokens + module.out_proj(attended.transpose(1, 2).reshape(B, P, D)))
        weights = (q @ k.mT / (D // H) ** 0.5).masked_fill(~mask[:, None, None, :], float("-inf")).softmax(-1)
    torch.testing.assert_close(out.fused, fused)
    per_head = (weights / weights.sum(-2, keepdim=True)).nan_to_num(0.0)  # masked prompts: 0 / 0
    torch.testing.assert_close(out.maps, per_head.mean(1).mT)


def test_sinkhorn_plan_marginals_per_head(monkeypatch: pytest.MonkeyPatch) -> None:
    plans, original = [], mpsa.log_sinkhorn

    def spy(*args: object, **kwargs: object) -> SinkhornResult:
        result = original(*args, **kwargs)
        plans.append(result.plan)
        return result

    module = make_module("sinkhorn")
    monkeypatch.setattr(mpsa, "log_sinkhorn", spy)
    tokens, prompts, mask = make_inputs(3)
    module(tokens, prompts, mask)
    (plan,) = plans
    assert plan.shape == (B, H, P, K)
    assert (plan.sum(-1) * P - 1).abs().max() < module.tol
    expected_cols = (mask / mask.sum(-1, keepdim=True))[:, None, :].expand(B, H, K)
    torch.testing.assert_close(plan.sum(-2), expected_cols)


@pytest.mark.parametrize("mode", MODES)
def test_masked_prompts_do_not_influence_fused(mode: str) -> None:
    module = make_module(mode)
    tokens, prompts, mask = make_inputs(4)
    before = module(tokens, prompts, mask)
    changed = prompts.clone()
    changed[~mask] = torch.randn(int((~mask).sum()), D) * 100
    after = module(tokens, changed, mask)
    assert torch.equal(before.fused, after.fused) and torch.equal(before.maps, after.maps)
    changed[mask] += 1.0  # and a real prompt does change it
    assert not torch.allclose(module(tokens, changed, mask).fused, before.fused)


@pytest.mark.parametrize("mode", MODES)
def test_permuting_prompts_permutes_maps(mode: str) -> None:
    module = make_module(mode, tol=1e-7, max_iter=1000)
    tokens, prompts, _ = make_inputs(5)
    perm = torch.tensor([3, 0, 4, 1, 2])
    out, permuted = module(tokens, prompts), module(tokens, prompts[:, perm])
    torch.testing.assert_close(permuted.maps, out.maps[:, perm], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(permuted.similarity, out.similarity[:, perm])
    torch.testing.assert_close(permuted.fused, out.fused, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("mode", MODES)
def test_gradients_reach_parameters_tokens_and_prompts(mode: str) -> None:
    module = make_module(mode).train()
    tokens, prompts, mask = make_inputs(6)
    tokens.requires_grad_()
    prompts.requires_grad_()
    out = module(tokens, prompts, mask)
    g = torch.Generator().manual_seed(7)
    fused_loss, maps_loss, similarity_loss = ((t * torch.randn(t.shape, generator=g)).sum() for t in out)
    (grad_from_fused_and_maps,) = torch.autograd.grad(fused_loss + maps_loss, prompts, retain_graph=True)
    assert (grad_from_fused_and_maps[~mask] == 0).all()  # masked prompts only show in the similarity
    (fused_loss + maps_loss + similarity_loss).backward()
    for name, p in [*module.named_parameters(), ("tokens", tokens), ("prompts", prompts)]:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name


@pytest.mark.parametrize("mode", MODES)
def test_bfloat16_autocast_on_cpu(mode: str) -> None:
    module = make_module(mode)
    tokens, prompts, mask = make_inputs(8)
    full = module(tokens, prompts, mask)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(tokens, prompts, mask)
    assert all(torch.isfinite(t).all() for t in out)
    torch.testing.assert_close(out.maps.float().sum(-1), mask.float(), rtol=0, atol=1e-2)
    torch.testing.assert_close(out.maps.float(), full.maps, rtol=0, atol=2e-2)
    torch.testing.assert_close(out.fused.float(), full.fused, rtol=0, atol=0.06)


def test_prompt_less_sample_and_bad_arguments() -> None:
    tokens, prompts, _ = make_inputs(9)
    none = torch.zeros(B, K, dtype=torch.bool)
    for mode in MODES:
        module = make_module(mode)
        out = module(tokens, prompts, none)
        assert all(torch.isfinite(t).all() for t in out) and (out.maps == 0).all()
        torch.testing.assert_close(out.fused, module.norm(tokens + module.out_proj.bias))  # nothing attended
    with pytest.raises(ValueError):
        MultiPromptSinkhornAttention(10, n_heads=3)
    with pytest.raises(ValueError):
        MultiPromptSinkhornAttention(16, mode="cosine")
