"""LIC's Clock-GSU/ESU relevance ("Long-Term Interest Clock: Fine-Grained Time Perception in
Streaming Recommendation System", Douyin, 2025, arXiv:2501.15817).

Relative time of day: `g(t)` minutes since midnight (UTC shifted by `tz_offset_min`),
`Δ(a, b) = min(|g(a) - g(b)|, 1440 - |g(a) - g(b)|)` (circular: Δ(23:00, 01:00) = 120).
Per head i: `α_i = (W_b^i b)·(W_q^i q)/sqrt(d) + s_i(Δ)`, s a two-layer MLP on the normalised
`[Δ, √Δ, Δ², log(Δ+1)]`. The GSU ranks by `gsu_form`: "concat", the seed's eq. 2 with the
heads' projections concatenated, `Σ_i (W_b^i b)·(W_q^i q)/sqrt(H d) + s̄(Δ)` (s̄ the head mean of
s: one two-layer MLP), which weights item similarity sqrt(H) times more against time than
"head_mean", the head mean of α. The ESU reads per head `softmax(α_i)^T Z W_v^i` with
`Z = [b, Δ features]`, and `h` (two-layer MLP) fuses the heads. With `match` (our addition) Z
also carries the one-hot target match (`layers.match_buckets`) and α_i gains a learned per-head
bias for it, `m_i(match)`.
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from lifelong.models.layers import MATCH_BUCKETS, masked_softmax, mlp

DAY_MIN = 1440
N_GAP_FEATURES = 4
GSU_FORMS = ("head_mean", "concat")


def minute_of_day(ts: torch.Tensor, tz_offset_min: int = 0) -> torch.Tensor:
    """Unix seconds -> minutes since local midnight in [0, 1440) (int64). Computed in float64, exact
    for |ts| < 2^50: int64 division has no vector instructions (twice the time at (64, 10^4));
    `minute_of_day_reference` is the integer form (parity-tested)."""
    x = ts.double().add_(60 * tz_offset_min)  # local seconds
    return x.sub_(x.div(86400).floor_().mul_(86400)).div_(60).long()  # seconds into the day, then minutes


def minute_of_day_reference(ts: torch.Tensor, tz_offset_min: int = 0) -> torch.Tensor:
    return torch.div(ts, 60, rounding_mode="floor").add_(tz_offset_min).remainder_(DAY_MIN)


def circular_gap(a_min: torch.Tensor, b_min: torch.Tensor) -> torch.Tensor:
    """Δ in minutes on the 24-hour clock, in [0, 720]."""
    d = (a_min - b_min).abs()
    return torch.minimum(d, DAY_MIN - d)


def gap_features(delta: torch.Tensor) -> torch.Tensor:
    """Δ (...,) -> [Δ, √Δ, Δ², log(Δ+1)] each scaled to [0, 1]: (..., 4)."""
    x = delta.float() / (DAY_MIN // 2)
    return torch.stack([x, x.sqrt(), x * x, torch.log1p(delta.float()) / math.log1p(DAY_MIN // 2)], -1)


class ClockAttention(nn.Module):
    """candidates: (B, L, E + n_extra) = [b, Δ features (4) [, one-hot match (4)]]; query (B, E)."""

    def __init__(self, dim: int, heads: int, head_dim: int, gap_hidden: int, out_hidden: Sequence[int],
                 out_dim: int, match: bool = False, gsu_form: str = "concat") -> None:
        super().__init__()
        self.gsu_form = gsu_form
        self.dim, self.heads, self.head_dim = dim, heads, head_dim
        self.n_extra = N_GAP_FEATURES + (MATCH_BUCKETS if match else 0)
        self.w_b = nn.Linear(dim, heads * head_dim, bias=False)
        self.w_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.s = mlp(N_GAP_FEATURES, (gap_hidden,), heads)  # s_i(Δ), one output per head
        self.m = nn.Parameter(torch.zeros(MATCH_BUCKETS, heads)) if match else None  # m_i(match)
        self.w_v = nn.Linear(dim + self.n_extra, heads * head_dim, bias=False)
        self.h = mlp(heads * head_dim, out_hidden, out_dim)
        self.out_dim = out_dim

    def forward(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """α: (B, H, L)."""
        b, extra = candidates.split([self.dim, self.n_extra], -1)
        return self.projected(self.w_q(query), torch.cat([self.w_b(b), extra], -1))

    def bias(self, extra: torch.Tensor) -> torch.Tensor:
        """s(Δ) [+ m(match)] per head from the extra features (B, L, n_extra): (B, L, H)."""
        out = self.s(extra[..., :N_GAP_FEATURES])
        return out if self.m is None else out + extra[..., N_GAP_FEATURES:] @ self.m

    def parts(self, q_proj: torch.Tensor, candidates: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Per head: the similarity (W_b b)·(W_q q)/sqrt(d) and the bias s(Δ) [+ m(match)], each (B, H, L),
        from W_q q (B, H * d) and [W_b b, extra] (B, L, H * d + n_extra)."""
        kb, extra = candidates.split([self.heads * self.head_dim, self.n_extra], -1)
        kb = kb.view(*kb.shape[:-1], self.heads, self.head_dim)  # (B, L, H, d)
        q = q_proj.view(-1, self.heads, self.head_dim)  # (B, H, d)
        return torch.einsum("blhd,bhd->bhl", kb, q) / math.sqrt(self.head_dim), self.bias(extra).transpose(1, 2)

    def projected(self, q_proj: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """α per head from the projections: (B, H, L)."""
        dot, bias = self.parts(q_proj, candidates)
        return dot + bias

    def gsu_projected(self, q_proj: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The Clock-GSU's score (`gsu_form`) from the projections: (B, 1, L)."""
        dot, bias = self.parts(q_proj, candidates)
        return (dot.sum(1) * self.gsu_head_weight + bias.mean(1)).unsqueeze(1)

    @property
    def gsu_head_weight(self) -> float:
        """The GSU's weight on the sum of the heads' similarities: 1/sqrt(H) (concat) or 1/H (head mean)."""
        return 1 / math.sqrt(self.heads) if self.gsu_form == "concat" else 1 / self.heads

    def folded_query(self, query: torch.Tensor) -> torch.Tensor:
        """W_b^T W_q q times `gsu_head_weight`: its dot product with a behaviour b is the GSU's
        similarity term (before 1/sqrt(d)) without projecting b. (B, E)."""
        return self.w_q(query) @ self.w_b.weight * self.gsu_head_weight  # (B, E)

    def gsu(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        """The Clock-GSU's score (`gsu_form`): (B, 1, L)."""
        b, extra = candidates.split([self.dim, self.n_extra], -1)
        return self.gsu_projected(self.w_q(query), torch.cat([self.w_b(b), extra], -1))

    def read(self, query: torch.Tensor, keys: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Clock-ESU over selected keys (B, k, E + n_extra) -> (B, out_dim)."""
        B, T, _ = keys.shape
        w = masked_softmax(self(query, keys), mask.unsqueeze(1))  # (B, H, k)
        v = self.w_v(keys).view(B, T, self.heads, self.head_dim)  # (B, k, H, d)
        return self.h(torch.einsum("bht,bthd->bhd", w, v).reshape(B, self.heads * self.head_dim))
