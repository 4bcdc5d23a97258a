"""The one GSU interface: `(query, candidates, mask) -> (indices, scores)`.

A GSU scores every candidate behaviour against the query on a cheap representation and returns
the k best positions. Padded positions never win a slot: where fewer than k valid candidates
exist, the extra slots carry index 0 and score -inf, and `valid_slots(scores)` is False there.
Selection is not differentiable; gradients flow through the ESU on the selected behaviours.
"""
from __future__ import annotations

import torch
from torch import nn

NEG_INF = float("-inf")


def masked_topk(scores: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k of scores (B, L) over positions where mask is True, slots sorted by position.

    Returns (indices (B, k'), scores (B, k')) with k' = min(k, L); slots beyond the valid count have
    index 0 and score -inf.
    """
    k = min(k, scores.shape[1])
    masked = scores.masked_fill(~mask, NEG_INF)
    top, idx = masked.topk(k, dim=1)  # (B, k) best first
    valid = top > NEG_INF
    # Sort valid slots by position (oldest first) so outputs do not depend on tie order.
    pos = torch.where(valid, idx, torch.full_like(idx, scores.shape[1]))
    pos, order = pos.sort(dim=1)
    top = top.gather(1, order)
    idx = torch.where(pos < scores.shape[1], pos, torch.zeros_like(pos))
    return idx, top


def valid_slots(scores: torch.Tensor) -> torch.Tensor:
    return scores > NEG_INF


def gather_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, L, ...) gathered at idx (B, k) -> (B, k, ...)."""
    shape = idx.shape + x.shape[2:]
    flat = idx.reshape(idx.shape[0], idx.shape[1], *([1] * (x.dim() - 2))).expand(shape)  # (B, k, ...)
    return x.gather(1, flat)


class GSU(nn.Module):
    """Base class: subclasses implement `score(query, candidates) -> (B, L)`."""

    def __init__(self, k: int) -> None:
        super().__init__()
        self.k = k

    def score(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.no_grad()
    def forward(self, query: torch.Tensor, candidates: torch.Tensor, mask: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
        return masked_topk(self.score(query, candidates), mask, self.k)
