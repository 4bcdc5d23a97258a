"""GSU by a learned relevance function: top-k of `relevance(query, candidates)` averaged over heads.

Used where the GSU scores behaviours with the model's own parameters: SIM-soft (inner product on
its search table), TWIN and CAIN (the ESU's own attention logits: consistency-preserving), LIC
(Clock relevance). The relevance module is shared with the ESU, never copied, so the GSU always
sees the live parameters.
"""
from __future__ import annotations

import torch
from torch import nn

from lifelong.models.gsu.base import GSU


class RelevanceGSU(GSU):
    """relevance: a module mapping (query, candidates) -> (B, H, L) logits."""

    def __init__(self, relevance: nn.Module, k: int) -> None:
        super().__init__(k)
        self.relevance = [relevance]  # a list: shared with the ESU, not registered twice

    def score(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return self.relevance[0](query, candidates).mean(1)  # (B, L)


class InnerProduct(nn.Module):
    """Maximum-inner-product relevance `<W_b c_i, W_a q>` with one head: (B, 1, L)."""

    def __init__(self, query_dim: int, key_dim: int, dim: int) -> None:
        super().__init__()
        self.w_a = nn.Linear(query_dim, dim, bias=False)
        self.w_b = nn.Linear(key_dim, dim, bias=False)

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return torch.einsum("bd,bld->bl", self.w_a(query), self.w_b(candidates)).unsqueeze(1)  # (B, 1, L)
