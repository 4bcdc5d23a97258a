"""LIC: Long-Term Interest Clock ("Long-Term Interest Clock: Fine-Grained Time Perception in
Streaming Recommendation System", Douyin, 2025, arXiv:2501.15817): time-of-day perception.

Clock-GSU: relevance `α = (W_b b)·(W_q q)/sqrt(d) + s(Δ)` with Δ the circular time-of-day gap
between each behaviour and the request (`gsu/clock.py`); top-k by `gsu_form`: the seed's
concatenated heads plus one s (default; a tie on MovieLens valid, BENCHMARKS.md "Seed fidelity")
or the head mean of α (before 2026-11-24). Clock-ESU: the same four Δ features fused into each
selected behaviour, 4 heads each with its own W_b, W_q, W_v (and its own output of s), fused by
a two-layer MLP h. A DIN unit on the short history runs beside it (`use_short`). Time of day is
taken in UTC shifted by `tz_offset_min`. With the trainer's key cache the Clock-GSU reads `W_b b`
and `W_q q` per id from cache tables (`cached_keys.ProjectedKeys`). Our addition, off by default (`match:
true`): each behaviour's target match (`layers.match_buckets`) joins Z and adds a learned
per-head bias to α (`gsu/clock.py`), as TWIN's `match` cross feature does; it needs no lookup, so
the key cache's GSU scores it exactly.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.cached_keys import ProjectedKeys, projected_tables
from lifelong.models.gsu.clock import DAY_MIN, GSU_FORMS, ClockAttention, circular_gap, gap_features, minute_of_day
from lifelong.models.gsu.relevance import RelevanceGSU
from lifelong.models.layers import MATCH_BUCKETS, ActivationUnit
from lifelong.models.registry import register
from lifelong.models.two_stage import TwoStage


@dataclass(frozen=True)
class LICConfig:
    k: int = 100
    heads: int = 4
    head_dim: int = 8
    gap_hidden: int = 16
    out_hidden: tuple[int, ...] = (64,)
    out_dim: int = 32
    tz_offset_min: int = 0
    match: bool = False  # target-match features in α and Z (our addition)
    gsu_form: str = "concat"  # the GSU's score: the seed's eq. 2 ("concat") or the head mean of α
    use_short: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        if self.gsu_form not in GSU_FORMS:
            raise ValueError(f"lic: gsu_form '{self.gsu_form}' not in {GSU_FORMS}")


@register("lic", LICConfig)
class LIC(TwoStage):
    def __init__(self, config: LICConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E = spec.behaviour_dim
        self.clock = ClockAttention(E, config.heads, config.head_dim, config.gap_hidden, config.out_hidden,
                                    config.out_dim, config.match, config.gsu_form)
        self.gsu = RelevanceGSU(self.clock.gsu, config.k)
        self.projected_gsu = RelevanceGSU(self.clock.gsu_projected, config.k)  # the key cache's (no parameters)
        self.unit = ActivationUnit(E, config.attention_hidden) if config.use_short else None
        self.head = self.make_head(E + config.out_dim + (E if config.use_short else 0), config.head_hidden)

    @classmethod
    def inputs(cls, config: LICConfig) -> InputSpec:
        return InputSpec(use_long=True)

    @classmethod
    def cache_tables(cls, config: LICConfig) -> tuple:
        return projected_tables(config.heads * config.head_dim)  # ClockAttention.w_b, w_q

    def cached_keys(self) -> ProjectedKeys:
        """The Clock-GSU's α = (W_b b)·(W_q q) w / sqrt(d) + s(Δ) (+ m(match)) on cached W_b b, W_q q."""
        return ProjectedKeys(self.clock.w_b, self.clock.w_q, self.projected_gsu,
                             self.clock.gsu_head_weight / math.sqrt(self.config.head_dim), self.extra_keys,
                             self.extra_relevance)

    def delta(self, batch: Batch, ts: torch.Tensor) -> torch.Tensor:
        """Circular time-of-day gap Δ in minutes of behaviours at times ts (B, T) to the request."""
        now = minute_of_day(batch.target_ts, self.config.tz_offset_min).unsqueeze(1)  # (B, 1)
        return circular_gap(minute_of_day(ts, self.config.tz_offset_min), now)

    def gaps(self, batch: Batch, ts: torch.Tensor) -> torch.Tensor:
        """Δ features of behaviours at times ts (B, T) to the request: (B, T, 4)."""
        return gap_features(self.delta(batch, ts))

    def gsu_scores(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        """The Clock-GSU's score without building [b, Δ features, match] keys: the similarity
        Σ_h (W_b b)_h·(W_q q)_h = b · W_b^T W_q q, one dot product of width E per behaviour
        (`ClockAttention.folded_query`), plus the lookup-free terms (`extra_relevance`). (B, L)."""
        u = self.clock.folded_query(emb.target) / math.sqrt(self.config.head_dim)  # (B, E)
        return torch.bmm(emb.long, u.unsqueeze(-1)).squeeze(-1) + self.extra_relevance(batch)  # (B, L)

    def extra_relevance(self, batch: Batch, reference: bool = False) -> torch.Tensor:
        """The Clock-GSU's lookup-free terms, head mean of s(Δ) (+ m(match)), of every lifelong
        behaviour: (B, L). s(Δ) is tabled for every possible Δ, then per request for every minute of
        the day, so each behaviour reads its minute's entry (`reference`: Δ per behaviour, then the
        Δ table)."""
        per_gap = torch.arange(DAY_MIN // 2 + 1, device=batch.long_ts.device)  # every possible Δ
        table = self.clock.s(gap_features(per_gap)).mean(-1)  # (721,) head mean of s(Δ)
        if reference:
            out = table[self.delta(batch, batch.long_ts)]  # (B, L)
        else:
            now = minute_of_day(batch.target_ts, self.config.tz_offset_min).unsqueeze(1)  # (B, 1)
            minutes = torch.arange(DAY_MIN, device=now.device).unsqueeze(0)  # (1, 1440)
            per_minute = table[circular_gap(minutes, now)]  # (B, 1440): s(Δ) of each minute of the day
            out = per_minute.gather(1, minute_of_day(batch.long_ts, self.config.tz_offset_min))  # (B, L)
        if self.clock.m is None:
            return out
        match = self.long_match(batch)  # (B, L)
        return out + self.clock.m.mean(-1).index_select(0, match.reshape(-1)).view(match.shape)

    @property
    def reads_match(self) -> bool:
        return self.config.match

    def keys(self, batch: Batch, seq: torch.Tensor, ts: torch.Tensor, match: Optional[torch.Tensor]
             ) -> torch.Tensor:
        """[b, Δ features [, one-hot match]] of behaviours seq (B, T, E) at ts with match (B, T)."""
        return torch.cat([seq, self.extra(batch, ts, match)], -1)  # (B, T, E + n_extra)

    def extra(self, batch: Batch, ts: torch.Tensor, match: Optional[torch.Tensor]) -> torch.Tensor:
        """[Δ features [, one-hot match]] (B, T, n_extra)."""
        if self.clock.m is None:
            return self.gaps(batch, ts)  # (B, T, 4)
        return torch.cat([self.gaps(batch, ts), nn.functional.one_hot(match, MATCH_BUCKETS).float()], -1)

    def extra_keys(self, batch: Batch) -> torch.Tensor:
        return self.extra(batch, batch.long_ts, self.long_match(batch))  # (B, L, n_extra)

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return emb.target, self.keys(batch, emb.long, batch.long_ts, self.match_of(batch, emb))

    def esu_relevance(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.clock(*self.gsu_inputs(batch, emb)).mean(1)  # (B, L)

    def interest_from(self, batch: Batch, emb: Embedded, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        z = self.keys(batch, self.gather(emb.long, idx), self.gather(batch.long_ts, idx),
                      self.match_of(batch, emb, idx))  # (B, k, E + n_extra)
        parts = [emb.target, self.clock.read(emb.target, z, valid)]
        if self.unit is not None:
            parts.append(self.unit(emb.target, emb.short, emb.short_mask))
        return torch.cat(parts, -1)
