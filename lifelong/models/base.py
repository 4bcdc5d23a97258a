"""Shared frame of every CTR model: embedding lookup of the batch's sequences and the head.

A model gets its `SparseArch` passed in (`embeddings/sparse_arch.py`: its collections and the one
lookup, plain in unit tests, sharded under DMP).
`inputs(config)` tells the collator what the model reads: whether it needs the lifelong
history, which collate-time GSU (if any) cuts it down before lookup, and which side tables the
model owns. `forward` returns an `Output`: the logits and the sum of the pass's auxiliary losses
(DIEN's and SIM-soft's, the batch-wise embedding L2), which the models add to the pass's
`Embedded.aux` in training mode; `loss(batch, output)` is the CTR loss plus them.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn

from lifelong.embeddings.batch import Batch, Prefilter
from lifelong.embeddings.spec import SideTable, feature_name
from lifelong.embeddings.sparse_arch import Embedded, SparseArch
from lifelong.models.layers import match_buckets, mlp

__all__ = ["CTRModel", "Embedded", "InputSpec", "Output", "loss"]


@dataclass(frozen=True)
class InputSpec:
    use_long: bool
    prefilter: Optional[Prefilter] = None
    side_tables: tuple[SideTable, ...] = ()


class Output(NamedTuple):
    """What a forward pass returns: logits (B,) and the sum of its auxiliary losses (a scalar, 0
    when there are none, as in eval mode)."""

    logits: torch.Tensor
    aux: torch.Tensor


def loss(batch: Batch, out: Output) -> torch.Tensor:
    """The training loss: binary cross-entropy of the logits, plus the pass's auxiliary losses."""
    return nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels) + out.aux


class CTRModel(nn.Module):
    """Base: subclasses build `self.head = self.make_head(F, hidden)` and implement
    `interest(batch, emb) -> (B, F)`; the head also reads the user embedding when there is one."""

    def __init__(self, config, sparse: SparseArch) -> None:
        super().__init__()
        self.config = config
        self.sparse = sparse  # the tables and their reads (plain, or sharded under DMP)
        self.spec = sparse.spec

    @classmethod
    def inputs(cls, config) -> InputSpec:
        return InputSpec(use_long=False)

    @classmethod
    def cache_tables(cls, config) -> tuple:
        """Cache tables (`embeddings/key_cache.py`, with their widths) the model's GSU can read; () = none.
        The trainer builds them into the `SparseArch` when `train.key_cache_every` > 0."""
        return ()

    def lookup(self, batch: Batch) -> Embedded:
        """The batch's embeddings (`SparseArch.forward`); a model that derives more from them per
        batch (CAIN's context) extends this."""
        return self.sparse(batch)

    @staticmethod
    def target_match(batch: Batch, group: str, width: int) -> torch.Tensor:
        """Match buckets (B, width) of a sequence group's behaviours against the target: whether each
        one's item and category are the target's (`layers.match_buckets`), from the raw ids."""
        sp = batch.sparse
        ids = lambda t: sp[feature_name(group, t)].to_padded_dense(desired_length=width)  # noqa: E731
        return match_buckets(sp[feature_name("target", "item")].values(), sp[feature_name("target", "cat")].values(),
                             ids("item"), ids("cat"))  # (B, width)

    def make_head(self, interest_dim: int, hidden: Sequence[int]) -> nn.Module:
        """The shared head: MLP over [interest features, user embedding] -> logit."""
        return mlp(interest_dim + self.spec.user_dim, hidden, 1)

    def logits(self, interest: torch.Tensor, emb: Embedded) -> torch.Tensor:
        return self.head(torch.cat([interest, emb.user], -1)).squeeze(-1)  # (B,)

    @staticmethod
    def output(logits: torch.Tensor, emb: Embedded) -> Output:
        return Output(logits, sum(emb.aux) if emb.aux else logits.new_zeros(()))

    def forward(self, batch: Batch) -> Output:
        emb = self.lookup(batch)
        return self.output(self.logits(self.interest(batch, emb), emb), emb)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """Embedding-table parameters (main and side collections): the sparse optimiser's."""
        return self.sparse.sparse_parameters()
