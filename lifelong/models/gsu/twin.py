"""TWIN's consistency-preserving attention (Chang et al., "TWIN: TWo-stage Interest Network for
Lifelong User Behavior Modeling in CTR Prediction at Kuaishou", KDD 2023).

Behaviour features split into item-inherent `K_h` (same for every user; `K_h W_h` is cacheable)
and user-item cross features `K_c` (J features of width c). Each cross feature compresses to one
scalar per head (a diagonal-block projection `K_{c,j} w^a_j`, each head a its own, the seed's
eq. 8), so for head a `α_a = (K_h W^h_a)(q W^q_a)^T / sqrt(d_k) + (K_c W^c_a) β_a`. The same
module is the CP-GSU's relevance (via `RelevanceGSU`, head-mean of α) and the ESU:
`softmax(α over the k)^T K W_v`, heads concatenated, times `W_o`.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from lifelong.models.layers import masked_softmax


class TwinAttention(nn.Module):
    """candidates: (B, L, item_dim + J * cross_dim) = [K_h, K_c]; query (B, query_dim)."""

    def __init__(self, query_dim: int, item_dim: int, n_cross: int, cross_dim: int, heads: int, head_dim: int
                 ) -> None:
        super().__init__()
        self.item_dim, self.n_cross, self.cross_dim = item_dim, n_cross, cross_dim
        self.heads, self.head_dim = heads, head_dim
        self.w_h = nn.Linear(item_dim, heads * head_dim, bias=False)
        self.w_q = nn.Linear(query_dim, heads * head_dim, bias=False)
        self.w_c = nn.Parameter(torch.randn(heads, n_cross, cross_dim) / math.sqrt(cross_dim))  # w^a_j
        # β starts at 1 (our choice; the paper gives no init): at 0, β w^a sits at a saddle where w^a
        # and the cross embeddings get no gradient through α, and TWIN + match stayed at chance on
        # planted data (BENCHMARKS.md)
        self.beta = nn.Parameter(torch.ones(heads, n_cross))
        self.w_v = nn.Linear(item_dim + n_cross * cross_dim, heads * head_dim, bias=False)
        self.w_o = nn.Linear(heads * head_dim, heads * head_dim)
        self.out_dim = heads * head_dim

    def cross_weight(self) -> torch.Tensor:
        """β_{a,j} w^a_j for every head a and cross feature j: (H, J, c)."""
        return self.beta.unsqueeze(-1) * self.w_c

    def cross_bias(self, k_c: torch.Tensor) -> torch.Tensor:
        """(K_c W^c_a) β_a for every head a: (B, L, J * c) -> (B, H, L)."""
        per_feature = k_c.view(*k_c.shape[:-1], self.n_cross, self.cross_dim)  # (B, L, J, c)
        return torch.einsum("bljc,hjc->bhl", per_feature, self.cross_weight())

    def mean_cross_scalars(self, tables: list[torch.Tensor]) -> list[torch.Tensor]:
        """Head mean of `cross_bias` for every bucket of each cross feature, from their embedding
        tables (buckets_j, c): [(buckets_j,)]."""
        w = self.cross_weight().mean(0)  # (J, c)
        return [tab @ w[j] for j, tab in enumerate(tables)]

    def mean_cross_bias(self, tables: list[torch.Tensor], buckets: list[torch.Tensor]) -> torch.Tensor:
        """Head mean of `cross_bias` from the cross features' embedding tables (buckets_j, c) and
        bucket ids (B, L): each bucket's head-mean scalar is computed once per table. -> (B, L)."""
        return sum(s[b] for s, b in zip(self.mean_cross_scalars(tables), buckets))

    def mean_item_relevance(self, query: torch.Tensor, k_h: torch.Tensor) -> torch.Tensor:
        """Head mean of α's item part, (K_h W^h_a)·(q W^q_a) / sqrt(d_k), for every behaviour without
        projecting the keys: it is K_h · ū with ū = Σ_a (W^h_a)^T (q W^q_a) / (H sqrt(d_k)), one
        dot product of width item_dim per behaviour. query (B, query_dim), k_h (B, L, item_dim) -> (B, L)."""
        q = self.w_q(query).view(-1, self.heads, self.head_dim)  # (B, H, dk)
        w = self.w_h.weight.view(self.heads, self.head_dim, self.item_dim)  # (H, dk, item_dim)
        u = torch.einsum("bhd,hde->be", q, w) / (self.heads * math.sqrt(self.head_dim))  # (B, item_dim)
        return torch.bmm(k_h, u.unsqueeze(-1)).squeeze(-1)  # (B, L)

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """Relevance logits α: (B, H, L)."""
        k_h, k_c = candidates.split([self.item_dim, self.n_cross * self.cross_dim], -1)
        return self.projected(self.w_q(query), torch.cat([self.w_h(k_h), k_c], -1))

    def projected(self, q_proj: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """α from the projections: q W_q (B, H * dk) and [K_h W_h, K_c] (B, L, H * dk + J * c)."""
        kp, k_c = candidates.split([self.heads * self.head_dim, self.n_cross * self.cross_dim], -1)
        kp = kp.view(*kp.shape[:-1], self.heads, self.head_dim)  # (B, L, H, dk)
        q = q_proj.view(-1, self.heads, self.head_dim)  # (B, H, dk)
        return torch.einsum("blhd,bhd->bhl", kp, q) / math.sqrt(self.head_dim) + self.cross_bias(k_c)

    def read(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """ESU over the selected keys (B, k, E + J c) with mask (B, k) -> (B, H * dk)."""
        B, T, _ = keys.shape
        w = masked_softmax(self(query, keys), mask.unsqueeze(1))  # (B, H, k)
        v = self.w_v(keys).view(B, T, self.heads, self.head_dim)  # (B, k, H, dk)
        return self.w_o(torch.einsum("bht,bthd->bhd", w, v).reshape(B, self.out_dim))  # (B, H * dk)
