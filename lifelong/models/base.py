"""Shared frame of every CTR model: embedding lookup of the batch's sequences and the head.

A model gets its EmbeddingCollection passed in (plain in unit tests, sharded under DMP).
`inputs(config)` tells the collator what the model reads: whether it needs the lifelong
history, which collate-time GSU (if any) cuts it down before lookup, and which side tables the
model owns. `forward` returns an `Output`: the logits and the sum of the pass's auxiliary losses
(DIEN's and SIM-soft's, the batch-wise embedding L2), which the models add to the pass's
`Embedded.aux` in training mode; `loss(batch, output)` is the CTR loss plus them.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple, Optional, Sequence

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor

from lifelong.embeddings.batch import Batch, Prefilter
from lifelong.embeddings.key_cache import dedup_lookup
from lifelong.embeddings.spec import TABLE_COLUMNS, USER, FeatureSpec, SideTable, feature_name
from lifelong.models.layers import match_buckets, mlp


@dataclass(frozen=True)
class InputSpec:
    use_long: bool
    prefilter: Optional[Prefilter] = None
    side_tables: tuple[SideTable, ...] = ()


@dataclass
class Embedded:
    """Looked-up batch: target (B, E); sequences (B, T, E) with masks (B, T); E = behaviour dim."""

    target: torch.Tensor
    short: torch.Tensor
    short_mask: torch.Tensor
    long: torch.Tensor
    long_mask: torch.Tensor
    long_cat: torch.Tensor  # (B, K) raw category ids of the long sequence (0 where padded)
    side: dict[str, dict[str, torch.Tensor]]  # side table -> group -> (B, D) target or (B, T, D)
    user: torch.Tensor  # (B, user_dim): the user-id embedding, (B, 0) without a user table
    cache: dict[str, object] = field(default_factory=dict)  # a model's derived tensors of this batch
    aux: list[torch.Tensor] = field(default_factory=list)  # auxiliary losses of this pass (training only)


class Output(NamedTuple):
    """What a forward pass returns: logits (B,) and the sum of its auxiliary losses (a scalar, 0
    when there are none, as in eval mode)."""

    logits: torch.Tensor
    aux: torch.Tensor


def loss(batch: Batch, out: Output) -> torch.Tensor:
    """The training loss: binary cross-entropy of the logits, plus the pass's auxiliary losses."""
    return nn.functional.binary_cross_entropy_with_logits(out.logits, batch.labels) + out.aux


def _dense(jt: JaggedTensor, width: int) -> torch.Tensor:
    """Jagged (N, D) -> (B, width, D), zero padded."""
    return jt.to_padded_dense(desired_length=width) if width else jt.values().new_zeros(
        (jt.lengths().numel(), 0, jt.values().shape[-1]))


def _mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)


def l2_of_rows(looked_up: Sequence[JaggedTensor], batch_size: int) -> torch.Tensor:
    """Sum of squares of every embedding row the batch looked up (once per occurrence), per sample:
    L2 regularisation of the rows a batch touches only, as DIN's mini-batch aware regulariser does
    (without its 1 / frequency weights, our simplification). It is part of the loss, so the
    in-process and the fused sharded optimisers apply it alike, and untouched rows never decay."""
    return sum((jt.values() ** 2).sum() for jt in looked_up) / batch_size


class CTRModel(nn.Module):
    """Base: subclasses build `self.head = self.make_head(F, hidden)` and implement
    `interest(batch, emb) -> (B, F)`; the head also reads the user embedding when there is one."""

    def __init__(self, config, embeddings: nn.Module, spec: FeatureSpec) -> None:
        super().__init__()
        self.config = config
        self.embeddings = embeddings
        self.side_embeddings: Optional[nn.Module] = None  # set by `build_model` for side tables
        self.dedup_ids = False  # look each distinct id of a feature up once (set by the trainer)
        self.embedding_l2 = 0.0  # batch-wise L2 on the looked-up rows (set by the trainer, `l2_of_rows`)
        self.key_cache: Optional[nn.Module] = None  # cached GSU keys (set by the trainer; None = plain path)
        self.spec = spec

    @classmethod
    def inputs(cls, config) -> InputSpec:
        return InputSpec(use_long=False)

    @classmethod
    def cache_tables(cls, config) -> tuple:
        """Cache tables (`embeddings/key_cache.py`) the model's GSU can read; () = none."""
        return ()

    def lookup(self, batch: Batch) -> Embedded:
        side_tables = self.inputs(self.config).side_tables
        sparse, side_sparse = batch.sparse, None
        if side_tables:  # side features follow the main ones in the KJT
            n_side = sum(len(s.groups) for s in side_tables)
            sparse, side_sparse = batch.sparse.split([len(sparse.keys()) - n_side, n_side])
        out = dedup_lookup(self.embeddings, sparse, self.spec.feature_rows()) if self.dedup_ids \
            else self.embeddings(sparse)  # feature -> JaggedTensor (N, D)
        cat = lambda g, w: torch.cat([_dense(out[feature_name(g, t)], w) for t in TABLE_COLUMNS], -1)  # noqa: E731
        target = cat("target", 1).squeeze(1)  # (B, E)
        sp = batch.sparse
        short_len = sp["short_item"].lengths()
        long_jt = sp["long_cat"]
        long_len = long_jt.lengths()
        long_cat = long_jt.to_padded_dense(desired_length=batch.long_len) if batch.long_len else \
            torch.zeros(len(long_len), 0, dtype=torch.long, device=long_len.device)
        widths = {"target": 1, "short": batch.short_len, "long": batch.long_len}
        side_out = self.side_embeddings(side_sparse) if side_tables else {}
        aux = [self.embedding_l2 * l2_of_rows([*out.values(), *side_out.values()], batch.size)] \
            if self.embedding_l2 and self.training else []
        side = {s.name: {g: _dense(side_out[feature_name(g, s.name)], widths[g]) for g in s.groups}
                for s in side_tables}
        for groups in side.values():
            if "target" in groups:
                groups["target"] = groups["target"].squeeze(1)  # (B, D)
        user = _dense(out[USER], 1).squeeze(1) if self.spec.n_users else target.new_zeros(target.shape[0], 0)
        return Embedded(target, cat("short", batch.short_len), _mask(short_len, batch.short_len),
                        cat("long", batch.long_len), _mask(long_len, batch.long_len), long_cat, side, user,
                        aux=aux)

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
        side = list(self.side_embeddings.parameters()) if self.side_embeddings is not None else []
        return list(self.embeddings.parameters()) + side
