"""SIM with hard search (Pi et al., "Search-based User Interest Modeling with Lifelong Sequential
Behavior Data for Click-Through Rate Prediction", CIKM 2020).

GSU: behaviours of the target's category, the k most recent (`gsu/hard.py`). It needs only
category ids, so by default it runs at collate time and the lifelong KJT holds just k ids; if a
longer sequence arrives, the same rule runs here on the looked-up ids (the reference path).
ESU: each selected behaviour is concatenated with an embedding of its log-bucketed time gap to
the request, then multi-head target attention. A DIN unit over the short history runs beside it
(`use_short`), as in the paper's deployed model. Head: MLP over [target, short, long interest].
Our addition, off by default (`match: true`): the ESU's keys and values also carry whether each
behaviour's item and category are the target's (`layers.GapAttention`), as TWIN's `match` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.gsu.hard import HardSearchGSU, HardSearchPrefilter
from lifelong.models.registry import register
from lifelong.models.two_stage import GapSearch


@dataclass(frozen=True)
class SIMHardConfig:
    k: int = 100
    heads: int = 4
    attention_dim: int = 32
    gap_dim: int = 8
    gap_buckets: int = 24
    match: bool = False  # the ESU reads target-match features (our addition, `layers.GapAttention`)
    match_dim: int = 8
    use_short: bool = True
    gsu_in_collate: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)


@register("sim_hard", SIMHardConfig)
class SIMHard(GapSearch):
    def __init__(self, config: SIMHardConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        self.gsu = HardSearchGSU(config.k)

    @classmethod
    def inputs(cls, config: SIMHardConfig) -> InputSpec:
        return InputSpec(use_long=True, prefilter=HardSearchPrefilter(config.k) if config.gsu_in_collate else None)

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return batch.sparse["target_cat"].values(), emb.long_cat  # (B,), (B, L)
