"""SIM with hard search (Pi et al., CIKM 2020).

GSU: behaviours of the target's category, the k most recent (`gsu/hard.py`). It needs only
category ids, so by default it runs at collate time and the lifelong KJT holds just k ids; if a
longer sequence arrives, the same rule runs here on the looked-up ids (the reference path).
ESU: each selected behaviour is concatenated with an embedding of its log-bucketed time gap to
the request, then multi-head target attention. A DIN unit over the short history runs beside it
(`use_short`), as in the paper's deployed model. Head: MLP over [target, short, long interest].
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.embeddings.collate import Batch
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models.base import CTRModel, Embedded, InputSpec
from lifelong.models.gsu.base import gather_rows, valid_slots
from lifelong.models.gsu.hard import HardSearchGSU, HardSearchPrefilter
from lifelong.models.layers import ActivationUnit, TargetAttention, TimeGapEmbedding, mlp
from lifelong.models.registry import register


@dataclass(frozen=True)
class SIMHardConfig:
    k: int = 100
    heads: int = 4
    attention_dim: int = 32
    gap_dim: int = 8
    gap_buckets: int = 24
    use_short: bool = True
    gsu_in_collate: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)


@register("sim_hard", SIMHardConfig)
class SIMHard(CTRModel):
    def __init__(self, config: SIMHardConfig, embeddings: nn.Module, spec: FeatureSpec) -> None:
        super().__init__(embeddings, spec)
        E = spec.behaviour_dim
        self.config = config
        self.gsu = HardSearchGSU(config.k)
        self.gap = TimeGapEmbedding(config.gap_dim, config.gap_buckets)
        self.esu = TargetAttention(E, E + config.gap_dim, config.attention_dim, config.heads)
        self.unit = ActivationUnit(E, config.attention_hidden) if config.use_short else None
        self.head = mlp(E + config.attention_dim + (E if config.use_short else 0), config.head_hidden, 1)

    @classmethod
    def inputs(cls, config: SIMHardConfig) -> InputSpec:
        return InputSpec(use_long=True, prefilter=HardSearchPrefilter(config.k) if config.gsu_in_collate else None)

    def select(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The k selected behaviours (B, k, E), their timestamps (B, k) and mask (B, k)."""
        if emb.long.shape[1] <= self.config.k and self.config.gsu_in_collate:
            return emb.long, batch.long_ts, emb.long_mask
        idx, scores = self.gsu(batch.sparse["target_cat"].values(), emb.long_cat, emb.long_mask)
        return gather_rows(emb.long, idx), batch.long_ts.gather(1, idx), valid_slots(scores)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        seq, ts, mask = self.select(batch, emb)
        z = torch.cat([seq, self.gap(batch.target_ts, ts)], -1)  # (B, k, E + gap_dim)
        parts = [emb.target, self.esu(emb.target, z, mask)]
        if self.unit is not None:
            parts.append(self.unit(emb.target, emb.short, emb.short_mask))
        return torch.cat(parts, -1)
