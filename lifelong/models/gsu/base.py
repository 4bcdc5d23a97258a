"""The one GSU interface: `(query, candidates, mask) -> (indices, scores)`.

A GSU scores every candidate behaviour against the query on a cheap representation and returns
the k best positions. Padded positions never win a slot: where fewer than k valid candidates
exist, the extra slots carry index 0 and score -inf, and `valid_slots(scores)` is False there.
Selection is not differentiable; gradients flow through the ESU on the selected behaviours.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

NEG_INF = float("-inf")


def masked_topk(scores: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of scores (B, L) over positions where mask is True, slots sorted by position.

    Ties at the k-th score go to the most recent behaviours, so the choice never depends on the
    padded width or on topk's internal order. Returns (indices (B, k'), scores (B, k')) with
    k' = min(k, L); slots beyond the valid count have index 0 and score -inf. O(L) per row.

    One top-k over int64 keys (the float32 score's bits, made order-preserving as an integer, then
    the position): the tie rule is the key order, not extra passes over (B, L). Where L holds many
    blocks of BLOCK behaviours, that top-k runs over the keys of the k best blocks only (by their
    max: one pass over (B, L)), e.g. 800 of 10^4 at k = 100 (`top_blocks`).
    `masked_topk_reference` is the plain form (parity-tested), and runs for other dtypes and on
    big-endian hosts.
    """
    B, L = scores.shape
    if scores.dtype != torch.float32 or sys.byteorder != "little":
        return masked_topk_reference(scores, mask, k)
    k = min(k, L)
    lowest = torch.iinfo(torch.int32).min
    blocks = -(-L // BLOCK)
    pruned = blocks >= BLOCK_MIN_RATIO * k  # by blocks only where it pays
    width = blocks * BLOCK if pruned else L
    ordered = torch.empty(B, width, dtype=torch.int32, device=scores.device)
    torch.add(scores.detach(), 0.0, out=ordered.view(torch.float32)[:, :L])  # + 0.0: -0.0 ties with +0.0
    flip = ordered >> 31
    flip &= 0x7FFFFFFF
    ordered ^= flip  # negative floats' magnitude bits flipped: integer order = float order
    ordered[:, :L].masked_fill_(~mask, lowest)  # padding below every score, -inf included
    ordered[:, L:] = lowest  # a last block's padding too
    if pruned:  # only the k blocks with the best (max, block index) can hold a top-k key (see `top_blocks`)
        positions = top_blocks(ordered.view(B, blocks, BLOCK), k)  # (B, k * BLOCK) int32
        key = int64_keys(ordered.gather(1, positions.long()), positions)
    else:
        key = int64_keys(ordered, torch.arange(L, dtype=torch.int32, device=scores.device).expand(B, L))
    top = key.topk(k, dim=1).values  # (B, k): score first, then the most recent
    chosen = (top >> 32) > lowest
    at = top & 0xFFFFFFFF  # positions
    order = torch.where(chosen, at, at + L).sort(dim=1).values  # chosen first, each group by position
    valid = order < L
    idx = torch.where(valid, order, torch.zeros_like(order))
    neg_inf = torch.full_like(idx, NEG_INF, dtype=scores.dtype)
    return idx, torch.where(valid, scores.gather(1, idx), neg_inf)


BLOCK = 8  # masked_topk's block width: its top-k runs over the k best blocks' k * 8 keys, not all L
BLOCK_MIN_RATIO = 2  # ... where L has at least 2k blocks (below that the pruning saves little)


def int64_keys(high: torch.Tensor, low: torch.Tensor) -> torch.Tensor:
    """int64 keys (...,) whose high word is `high` and low word `low` (int32 tensors of one shape)."""
    key = torch.empty(*high.shape, 2, dtype=torch.int32, device=high.device)
    key[..., 0] = low  # the low word (little-endian; masked_topk checks the host)
    key[..., 1] = high
    return key.view(torch.int64).squeeze(-1)


def top_blocks(ordered: torch.Tensor, k: int) -> torch.Tensor:
    """Positions (B, k * w) of the k blocks of `ordered` (B, n, w) with the largest (max, block
    index), row by row. They hold every one of the k largest (value, position) keys: a block ranked
    above the block of such a key holds a larger key (its max is larger, or equal and later), and
    fewer than k keys are larger."""
    B, n, w = ordered.shape
    best = int64_keys(ordered.amax(dim=2), torch.arange(n, dtype=torch.int32, device=ordered.device).expand(B, n))
    chosen = (best.topk(k, dim=1).values & 0xFFFFFFFF).to(torch.int32)  # (B, k) block indices
    offsets = torch.arange(w, dtype=torch.int32, device=ordered.device)
    return (chosen.unsqueeze(-1) * w + offsets).view(B, k * w)  # (B, k * w)


def masked_topk_reference(scores: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """`masked_topk` by its definition: the k-th best score, then the tied behaviours counted from
    the most recent."""
    L = scores.shape[1]
    k = min(k, L)
    masked = scores.masked_fill(~mask, NEG_INF)
    kth = masked.topk(k, dim=1).values[:, -1:]  # (B, 1) the k-th best score
    above = masked > kth
    tied = (masked == kth) & mask
    need = k - above.sum(1, keepdim=True)  # (B, 1) tied slots still to fill
    tied_from_end = tied.flip(1).cumsum(1).flip(1) - 1  # (B, L) 0 = most recent tied behaviour
    chosen = above | (tied & (tied_from_end < need))
    pos = torch.arange(L, device=scores.device).expand_as(masked)
    key = torch.where(chosen, pos, pos + L)  # chosen first, each group by position
    order = key.topk(k, dim=1, largest=False).values  # (B, k) ascending
    valid = order < L
    idx = torch.where(valid, order, torch.zeros_like(order))
    return idx, torch.where(valid, masked.gather(1, idx), torch.full_like(kth.expand_as(idx), NEG_INF))


def valid_slots(scores: torch.Tensor) -> torch.Tensor:
    return scores > NEG_INF


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...) gathered at idx (B, k) -> (B, k, ...)."""
    shape = idx.shape + x.shape[2:]
    flat = idx.reshape(idx.shape[0], idx.shape[1], *([1] * (x.dim() - 2))).expand(shape)  # (B, k, ...)
    return x.gather(1, flat)


class GSU(nn.Module):
    """Base class: subclasses implement `score(query, candidates) -> (B, L)`. A GSU whose score
    can exclude behaviours outright (-inf, e.g. hard search) sets `filters`; the others keep every
    valid behaviour when L <= k, so callers may skip scoring then."""

    filters = False

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def score(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, query: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_topk(self.score(query, candidates), mask, self.k)
