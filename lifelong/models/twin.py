"""TWIN: TWo-stage Interest Network (Chang et al., KDD 2023).

Behaviour features: item-inherent `K_h` (item and category embeddings) and cross features `K_c`
(time gap to the request and distance from the newest behaviour, J = 2 of width `cross_dim`,
`layers.CrossFeatures`; our logs carry no play time). Each head has its own cross projection
`W^c_a` and β_a (the seed's eq. 8). Our addition, off by default (`match: true`): a third cross
feature, the embedding of whether the behaviour's item and category equal the target's
(`layers.match_buckets`, 4 buckets). It is a user-item cross feature in the paper's sense (it
needs no lookup, so the key cache's GSU scores it exactly), and it lets the relevance tell a
repeat of the target from a merely similar item, which dot products of small, freshly initialised
embeddings cannot (measured on The Complete Journey in BENCHMARKS.md). CP-GSU: the top-k of the ESU's own
relevance α (head mean), computed with the very parameters the ESU trains, so the two stages
agree (`gsu/twin.py`). ESU: 4-head softmax attention over the k, `W_o` on the concatenation.
A DIN unit on the short history runs beside it (`use_short`). With the trainer's key cache the
CP-GSU reads `K_h W_h` and `q W_q` per id from cache tables (`cached_keys.ProjectedKeys`).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.cached_keys import ProjectedKeys, projected_tables
from lifelong.models.gsu.relevance import RelevanceGSU
from lifelong.models.gsu.twin import TwinAttention
from lifelong.models.layers import ActivationUnit, CrossFeatures
from lifelong.models.registry import register
from lifelong.models.two_stage import TwinFrame


@dataclass(frozen=True)
class TWINConfig:
    k: int = 100
    heads: int = 4
    head_dim: int = 8
    cross_dim: int = 8
    cross_buckets: int = 24
    match: bool = False  # a cross feature: is the behaviour's item / category the target's (our addition)
    use_short: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)


@register("twin", TWINConfig)
class TWIN(TwinFrame):
    def __init__(self, config: TWINConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E = spec.behaviour_dim
        self.cross = CrossFeatures(config.cross_dim, config.cross_buckets, match=config.match)
        self.attention = TwinAttention(E, E, self.cross.n_features, config.cross_dim, config.heads, config.head_dim)
        self.gsu = RelevanceGSU(self.attention, config.k)
        self.projected_gsu = RelevanceGSU(self.attention.projected, config.k)  # the key cache's (no parameters)
        self.unit = ActivationUnit(E, config.attention_hidden) if config.use_short else None
        self.head = self.make_head(E + self.attention.out_dim + (E if config.use_short else 0), config.head_hidden)

    @classmethod
    def inputs(cls, config: TWINConfig) -> InputSpec:
        return InputSpec(use_long=True)

    @classmethod
    def cache_tables(cls, config: TWINConfig) -> tuple:
        return projected_tables(config.heads * config.head_dim)  # TwinAttention.w_h, w_q

    def cached_keys(self) -> ProjectedKeys:
        """TWIN's relevance on cached K_h W_h and q W_q per id, its cross features' terms lookup-free."""
        return ProjectedKeys(self.attention.w_h, self.attention.w_q, self.projected_gsu,
                             1.0 / (self.config.heads * math.sqrt(self.config.head_dim)), self.extra_keys,
                             self.extra_relevance)

    def item_keys(self, emb: Embedded) -> torch.Tensor:
        return emb.long  # (B, L, E)

    def extra_relevance(self, batch: Batch) -> torch.Tensor:
        return self.mean_cross_relevance(batch, self.long_match(batch))  # (B, L)

    def extra_keys(self, batch: Batch) -> torch.Tensor:
        lengths = batch.sparse["long_item"].lengths()
        pos = torch.arange(batch.long_len, device=lengths.device).expand(len(lengths), -1)  # (B, L)
        return self.cross(batch.target_ts, batch.long_ts, lengths, pos, self.long_match(batch))  # K_c (B, L, J c)

    def interest_from(self, batch: Batch, emb: Embedded, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        parts = [emb.target, self.attention.read(emb.target, self.keys(batch, emb, idx), valid)]
        if self.unit is not None:
            parts.append(self.unit(emb.target, emb.short, emb.short_mask))
        return torch.cat(parts, -1)
