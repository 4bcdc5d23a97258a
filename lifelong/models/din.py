"""DIN: Deep Interest Network (Zhou et al., KDD 2018): `din` on the short history, `din_full` on
the whole lifelong history (the brute-force reference two-stage models approximate).

The activation unit scores each of the last S behaviours against the target with an MLP over
[e, q, e - q, e * q] and sums them with those weights (no softmax: the interest keeps its
strength). Head: MLP over [target, interest]. Default activation: PReLU. Our addition, off by
default (`match: true`): the unit also reads whether each behaviour's item / category is the
target's (`layers.ActivationUnit`), as TWIN's `match` cross feature does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.embeddings.collate import Batch
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models.base import CTRModel, Embedded, InputSpec
from lifelong.models.layers import ActivationUnit
from lifelong.models.registry import register


@dataclass(frozen=True)
class DINConfig:
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)
    match: bool = False  # the unit reads target-match features (our addition)
    match_dim: int = 8


@register("din", DINConfig)
class DIN(CTRModel):
    def __init__(self, config: DINConfig, embeddings: nn.Module, spec: FeatureSpec) -> None:
        super().__init__(config, embeddings, spec)
        E = spec.behaviour_dim
        self.unit = ActivationUnit(E, config.attention_hidden, config.match_dim if config.match else 0)
        self.head = self.make_head(2 * E, config.head_hidden)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        match = self.target_match(batch, "short", batch.short_len) if self.config.match else None
        return torch.cat([emb.target, self.unit(emb.target, emb.short, emb.short_mask, match)], -1)  # (B, 2E)


@register("din_full", DINConfig)
class DINFull(DIN):
    """DIN's unit over all L lifelong behaviours: every behaviour gets a full-width lookup."""

    @classmethod
    def inputs(cls, config: DINConfig) -> InputSpec:
        return InputSpec(use_long=True)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        match = self.target_match(batch, "long", batch.long_len) if self.config.match else None
        return torch.cat([emb.target, self.unit(emb.target, emb.long, emb.long_mask, match)], -1)  # (B, 2E)
