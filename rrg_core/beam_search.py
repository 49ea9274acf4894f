"""Beam search and greedy decoding over :class:`rrg_core.cached_bert.CachedBert`, with the same
results as transformers 5's ``generate`` (length penalty 1, ``early_stopping=False``,
``min_new_tokens``, ``repetition_penalty``, ``no_repeat_ngram_size``).

Each study's prompt runs once; its self-attention cache is then copied to its beams. The
bookkeeping is transformers' own algorithm (keep the best 2 x beams continuations, finish those
that end in the top beams, stop a study when no running beam can beat its worst finished one),
written out with the same tensor operations, so ties and rounding fall the same way.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .cached_bert import CachedBert, KeysValues, SelfCache

_NEVER = -1.0e9  # transformers' score for "cannot be chosen"


@dataclass(frozen=True)
class SearchOptions:
    num_beams: int
    max_new_tokens: int
    min_new_tokens: int
    repetition_penalty: float
    no_repeat_ngram_size: int
    eos_id: int
    pad_id: int

    def __post_init__(self) -> None:
        if self.num_beams < 1 or self.max_new_tokens < 1:
            raise ValueError(f"num_beams and max_new_tokens must be at least 1, got {self.num_beams} and {self.max_new_tokens}")
        if not self.repetition_penalty > 0:
            raise ValueError(f"repetition_penalty must be positive, got {self.repetition_penalty}")


def _process(scores: Tensor, sequences: Tensor, new_tokens: int, o: SearchOptions) -> Tensor:
    """transformers' logits processors, in its order: repetition penalty (prompt included),
    no repeated n-gram, no [EOS] before ``min_new_tokens``. sequences [rows, length]."""
    if o.repetition_penalty != 1.0:
        seen = scores.gather(1, sequences)
        seen = torch.where(seen < 0, seen * o.repetition_penalty, seen / o.repetition_penalty)
        scores = scores.scatter(1, sequences, seen)
    n = o.no_repeat_ngram_size
    if n > 0 and sequences.shape[1] >= n:
        # an n-gram is completed by the next token only after its first n - 1 tokens, the current suffix
        windows = sequences.unfold(1, n, 1)
        repeats = (windows[..., :-1] == sequences[:, sequences.shape[1] + 1 - n :].unsqueeze(1)).all(-1)
        banned = torch.zeros(scores.shape[0], scores.shape[1] + 1, dtype=torch.bool, device=scores.device)
        banned.scatter_(1, torch.where(repeats, windows[..., -1], scores.shape[1]), True)
        scores = scores.masked_fill(banned[:, :-1], float("-inf"))
    if new_tokens < o.min_new_tokens:
        scores = scores.clone()
        scores[:, o.eos_id] = float("-inf")
    return scores


def _last_logits(model: CachedBert, ids: Tensor, memory: KeysValues, cache: SelfCache | None) -> tuple[Tensor, SelfCache]:
    hidden, cache = model.forward(ids, memory, cache)
    return model.logits(hidden[:, -1]).float(), cache


def greedy(model: CachedBert, prompt: Tensor, memory: KeysValues, o: SearchOptions) -> Tensor:
    """prompt [B, P] -> [B, P + new tokens]; after [EOS] a row continues with padding."""
    sequences = prompt
    running = torch.ones(len(prompt), dtype=torch.bool, device=prompt.device)
    logits, cache = _last_logits(model, prompt, memory, None)
    for step in range(o.max_new_tokens):
        if step:
            logits, cache = _last_logits(model, sequences[:, -1:], memory, cache)
        tokens = torch.where(running, _process(logits, sequences, step, o).argmax(-1), o.pad_id)
        sequences = torch.cat([sequences, tokens[:, None]], 1)
        running &= tokens != o.eos_id
        if not running.any():
            break
    return sequences


def beam_search(model: CachedBert, prompt: Tensor, memory: KeysValues, o: SearchOptions) -> Tensor:
    """prompt [B, P] -> every study's ``num_beams`` finished sequences [B, beams, P + new tokens],
    best first (ranked by summed log-probability / generated length)."""
    b, p = prompt.shape
    k, device = o.num_beams, prompt.device
    max_length = p + o.max_new_tokens
    logits, cache = _last_logits(model, prompt, memory, None)
    logits = logits.repeat_interleave(k, 0)
    cache.select(torch.arange(b, device=device).repeat_interleave(k))

    running = torch.full((b, k, max_length), o.pad_id, dtype=torch.long, device=device)
    running[:, :, :p] = prompt[:, None]
    finished = running.clone()
    running_scores = torch.zeros(b, k, device=device)
    running_scores[:, 1:] = _NEVER  # the beams start identical: expand the first one only
    finished_scores = torch.full((b, k), _NEVER, device=device)
    is_finished = torch.zeros(b, k, dtype=torch.bool, device=device)
    improvable = torch.ones(b, 1, dtype=torch.bool, device=device)
    in_top_beams = torch.arange(2 * k, device=device) < k
    study_offset = torch.arange(b, device=device)[:, None] * k

    for length in range(p, max_length):
        log_probs = _process(logits.log_softmax(-1), running[:, :, :length].reshape(b * k, -1), length - p, o)
        vocab = log_probs.shape[-1]
        totals = (log_probs.view(b, k, vocab) + running_scores[:, :, None]).view(b, -1)
        top_scores, top_index = totals.topk(2 * k)
        parents = top_index // vocab
        candidates = running.gather(1, parents[:, :, None].expand(-1, -1, max_length))
        candidates[:, :, length] = top_index % vocab
        ends = (candidates[:, :, length] == o.eos_id) | (length + 1 >= max_length)

        # the best k candidates that go on
        alive_scores = top_scores + ends.float() * _NEVER
        keep = alive_scores.topk(k)[1]
        running = candidates.gather(1, keep[:, :, None].expand(-1, -1, max_length))
        running_scores = alive_scores.gather(1, keep)

        # the candidates among the top k that end join the finished ones if they rank there
        ended = ends & in_top_beams
        normalised = top_scores / (length + 1 - p)  # length penalty 1: the mean over the new tokens
        normalised = normalised + (~improvable).float() * _NEVER + (~ended) * _NEVER
        scores = torch.cat([finished_scores, normalised], 1)
        merged = scores.topk(k)[1]
        finished = torch.cat([finished, candidates], 1).gather(1, merged[:, :, None].expand(-1, -1, max_length))
        finished_scores = scores.gather(1, merged)
        is_finished = torch.cat([is_finished, ended], 1).gather(1, merged)

        best_possible = running_scores[:, :1] / (length + 1 - p)
        worst_finished = torch.where(is_finished, finished_scores.min(1, keepdim=True)[0], _NEVER)
        improvable = improvable & (best_possible > worst_finished).any(-1, keepdim=True)
        if not improvable.any() or ends.all():  # at the latest at max_length, where every candidate ends
            break
        cache.select((parents.gather(1, keep) + study_offset).view(-1))  # the continuing beams' rows
        logits, cache = _last_logits(model, running[:, :, length : length + 1].reshape(b * k, 1), memory, cache)
    return finished
