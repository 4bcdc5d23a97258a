"""ETA: End-to-end Target Attention (Chen et al., "Efficient Long Sequential User Data Modeling
for Click-Through Rate Prediction", 2022).

The GSU and ESU share the item embeddings (end to end: no separate search table). GSU: SimHash
signatures (`bits` random hyperplanes, packed in int64) of the target and of every behaviour;
the k behaviours with the smallest Hamming distance to the target (`gsu/simhash.py`). ESU: SIM's
time-gap target attention over the k, plus a DIN unit on the short history. The hash matrix is
fixed and seeded (`hash_seed`) and saved with the model.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.embeddings.collate import Batch
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.gsu.simhash import SimHash, SimHashGSU
from lifelong.models.registry import register
from lifelong.models.two_stage import GapSearch


@dataclass(frozen=True)
class ETAConfig:
    k: int = 100
    bits: int = 64
    hash_seed: int = 0
    heads: int = 4
    attention_dim: int = 32
    gap_dim: int = 8
    gap_buckets: int = 24
    use_short: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)


@register("eta", ETAConfig)
class ETA(GapSearch):
    def __init__(self, config: ETAConfig, embeddings: nn.Module, spec: FeatureSpec) -> None:
        super().__init__(config, embeddings, spec)
        self.hash = SimHash(spec.behaviour_dim, config.bits, config.hash_seed)
        self.gsu = SimHashGSU(config.k)

    @classmethod
    def inputs(cls, config: ETAConfig) -> InputSpec:
        return InputSpec(use_long=True)

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hash.signature(emb.target), self.hash.signature(emb.long)  # (B, W), (B, L, W)
