"""DIN: Deep Interest Network (Zhou et al., KDD 2018): `din` on the short history, `din_full` on
the whole lifelong history (the brute-force reference two-stage models approximate).

The activation unit scores each of the last S behaviours against the target with an MLP over
[e, q, e - q, e * q] and sums them with those weights (no softmax: the interest keeps its
strength). Head: MLP over [target, interest]. Default activation: PReLU. Our addition, off by
default (`match: true`): the unit also reads whether each behaviour's item / category is the
target's (`layers.ActivationUnit`), as TWIN's `match` cross feature does. Also ours, off by
default: `unit: hit_similarity` replaces the unit by `layers.HitSimilarityUnit` (an exact-hit and a
learned category-similarity channel, each a softmax with a sink, so related but unequal categories
can be learned beside exact repeats), and `head_target: false` keeps the target's embedding out of
the head, which then reads only what the unit found.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import CTRModel, Embedded, InputSpec
from lifelong.models.layers import ActivationUnit, HitSimilarityUnit
from lifelong.models.registry import register


@dataclass(frozen=True)
class DINConfig:
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)
    match: bool = False  # the unit reads target-match features (our addition)
    match_dim: int = 8
    unit: str = "din"  # "din" (the paper's activation unit) or "hit_similarity" (ours; needs match)
    similarity_dim: int = 16  # width of hit_similarity's shared category projection
    head_target: bool = True  # the head reads the target's embedding beside the unit's readout

    def __post_init__(self) -> None:
        if self.unit not in ("din", "hit_similarity"):
            raise ValueError(f"din: unit '{self.unit}' not in ('din', 'hit_similarity')")
        if self.unit == "hit_similarity" and not self.match:
            raise ValueError("din: unit 'hit_similarity' reads the match buckets: set match: true")


@register("din", DINConfig)
class DIN(CTRModel):
    def __init__(self, config: DINConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E = spec.behaviour_dim
        if config.unit == "hit_similarity":
            self.unit = HitSimilarityUnit(spec.dim, config.similarity_dim, config.match_dim, config.attention_hidden)
        else:
            self.unit = ActivationUnit(E, config.attention_hidden, config.match_dim if config.match else 0)
        readout = 2 if config.unit == "hit_similarity" else E
        self.head = self.make_head(readout + (E if config.head_target else 0), config.head_hidden)

    def readout(self, batch: Batch, emb: Embedded, group: str) -> torch.Tensor:
        """The unit over one sequence group, beside the target when the head reads it: (B, F)."""
        seq, mask, width = (emb.short, emb.short_mask, batch.short_len) if group == "short" else \
            (emb.long, emb.long_mask, batch.long_len)
        match = self.target_match(batch, group, width) if self.config.match else None
        if self.config.unit == "hit_similarity":
            cats = slice(-self.spec.dim, None)  # the category table's columns of a behaviour
            out = self.unit(emb.target[:, cats], seq[..., cats], mask, match)  # (B, 2)
        else:
            out = self.unit(emb.target, seq, mask, match)  # (B, E)
        return torch.cat([emb.target, out], -1) if self.config.head_target else out

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.readout(batch, emb, "short")


@register("din_full", DINConfig)
class DINFull(DIN):
    """DIN's unit over all L lifelong behaviours: every behaviour gets a full-width lookup."""

    @classmethod
    def inputs(cls, config: DINConfig) -> InputSpec:
        return InputSpec(use_long=True)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.readout(batch, emb, "long")
