"""The sparse arch: a model's embedding tables and the one place a batch's KJT becomes tensors.

After TorchRec's DLRM `SparseArch`: a module, passed to every model's constructor, that owns the
main `EmbeddingCollection`, the side collection (tables a model keeps to itself, e.g. SIM-soft's
search tables; their features follow the main ones in the KJT) and the GSU key cache
(`key_cache.py`), plus how they are read: `forward(batch) -> Embedded` (each distinct id looked
up once when `dedup_ids`; the batch-wise L2 of the rows read), the cached keys of a batch
(`cached`, `cached_rows`) and their refresh, and the two-phase lookup's cut of the lifelong group
to the GSU's selection (`select_long`). The same module runs plain in unit tests and under DMP,
which shards the collections it holds.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import nn
from torchrec import KeyedJaggedTensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from lifelong.embeddings import key_cache
from lifelong.embeddings.batch import Batch
from lifelong.embeddings.key_cache import CacheTable, dedup_lookup
from lifelong.embeddings.spec import TABLE_COLUMNS, USER, FeatureSpec, SideTable, feature_name, features


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


def _dense(jt: JaggedTensor, width: int) -> torch.Tensor:
    """Jagged (N, D) -> (B, width, D), zero padded."""
    return jt.to_padded_dense(desired_length=width) if width else jt.values().new_zeros(
        (jt.lengths().numel(), 0, jt.values().shape[-1]))


def length_mask(lengths: torch.Tensor, width: int) -> torch.Tensor:
    """(B, width) True at each row's first `lengths` positions."""
    return torch.arange(width, device=lengths.device).unsqueeze(0) < lengths.unsqueeze(1)  # (B, T)


def widths(batch: Batch) -> dict[str, int]:
    """Padded width of each feature group of the batch."""
    return {"target": 1, "short": batch.short_len, "long": batch.long_len}


def l2_of_rows(looked_up: Sequence[JaggedTensor], batch_size: int) -> torch.Tensor:
    """Sum of squares of every embedding row the batch looked up (once per occurrence), per sample:
    L2 regularisation of the rows a batch touches only, as DIN's mini-batch aware regulariser does
    (without its 1 / frequency weights, our simplification). It is part of the loss, so the
    in-process and the fused sharded optimisers apply it alike, and untouched rows never decay."""
    return sum((jt.values() ** 2).sum() for jt in looked_up) / batch_size


def select_long(batch: Batch, idx: torch.Tensor, valid: torch.Tensor) -> Batch:
    """The batch with its lifelong group cut to positions idx (B, k) where valid (a prefix of each
    row): the KJT's long features hold only those ids; positions and counts are kept."""
    sp = batch.sparse
    long_keys = {feature_name("long", t) for t in TABLE_COLUMNS}
    lengths = valid.sum(1).to(sp.lengths().dtype)  # (B,)
    values, lens = [], []
    for key in sp.keys():
        jt = sp[key]
        if key in long_keys:
            flat = (jt.offsets()[:-1].unsqueeze(1) + idx)[valid]  # (n,) flat positions of the kept ids
            values.append(jt.values()[flat])
            lens.append(lengths)
        else:
            values.append(jt.values())
            lens.append(jt.lengths())
    kjt = KeyedJaggedTensor.from_lengths_sync(sp.keys(), torch.cat(values), torch.cat(lens))
    count = sp[feature_name("long", "item")].lengths()
    return dataclasses.replace(batch, sparse=kjt, long_ts=batch.long_ts.gather(1, idx) * valid,
                               long_len=idx.shape[1], long_pos=idx, long_count=count)


class SparseArch(nn.Module):
    """A model's collections and their reads. `side_tables` name the side collection's tables (its
    features follow the main ones in the KJT); `cache_tables` the key cache's (None: no cache, the
    GSU runs on live embeddings). `dedup_ids` looks each distinct id of a feature up once;
    `embedding_l2` > 0 adds that times `l2_of_rows` to a training pass's auxiliary losses."""

    def __init__(self, spec: FeatureSpec, embeddings: nn.Module, side_embeddings: Optional[nn.Module] = None,
                 side_tables: tuple[SideTable, ...] = (), key_cache: Optional[nn.Module] = None,
                 cache_tables: tuple[CacheTable, ...] = (), dedup_ids: bool = False,
                 embedding_l2: float = 0.0) -> None:
        super().__init__()
        if bool(side_tables) != (side_embeddings is not None):
            raise ValueError("a side collection goes with its side tables, and side tables with one")
        if (key_cache is not None) != bool(cache_tables):
            raise ValueError("a key cache goes with its cache tables, and cache tables with one")
        if key_cache is not None and side_tables:
            raise ValueError("a key cache and side tables together are not supported (the two-phase lookup "
                             "cuts only the main tables' lifelong features)")
        self.spec = spec
        self.embeddings = embeddings
        self.side_embeddings = side_embeddings
        self.key_cache = key_cache
        self.side_tables, self.cache_tables = side_tables, cache_tables
        self.dedup_ids, self.embedding_l2 = dedup_ids, embedding_l2

    def forward(self, batch: Batch) -> Embedded:
        sparse, side_sparse = batch.sparse, None
        if self.side_tables:  # side features follow the main ones in the KJT
            n_side = sum(len(s.groups) for s in self.side_tables)
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
        side_out = self.side_embeddings(side_sparse) if self.side_tables else {}
        aux = [self.embedding_l2 * l2_of_rows([*out.values(), *side_out.values()], batch.size)] \
            if self.embedding_l2 and self.training else []
        width = widths(batch)
        side = {s.name: {g: _dense(side_out[feature_name(g, s.name)], width[g]) for g in s.groups}
                for s in self.side_tables}
        for groups in side.values():
            if "target" in groups:
                groups["target"] = groups["target"].squeeze(1)  # (B, D)
        user = _dense(out[USER], 1).squeeze(1) if self.spec.n_users else target.new_zeros(target.shape[0], 0)
        return Embedded(target, cat("short", batch.short_len), length_mask(short_len, batch.short_len),
                        cat("long", batch.long_len), length_mask(long_len, batch.long_len), long_cat, side, user,
                        aux=aux)

    def sparse_parameters(self) -> list[nn.Parameter]:
        """The tables' parameters (main and side collections; not the key cache, which is refreshed,
        not trained): the sparse optimiser's."""
        side = list(self.side_embeddings.parameters()) if self.side_embeddings is not None else []
        return list(self.embeddings.parameters()) + side

    @property
    def cache_dedup(self) -> Optional[dict[str, int]]:
        """Cache feature -> table rows when lookups are deduplicated, else None."""
        return key_cache.table_rows(self.spec, self.cache_tables) if self.dedup_ids else None

    def cached(self, batch: Batch) -> dict[str, torch.Tensor]:
        """The batch's cached keys, padded: cache feature -> (B, width of its group, dim)."""
        return key_cache.lookup(self.key_cache, self.cache_tables, batch.sparse, widths(batch), self.cache_dedup)

    def cached_rows(self, batch: Batch) -> dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]:
        """The batch's cached keys, jagged: cache feature -> (rows, inverse or None)."""
        return key_cache.lookup_rows(self.key_cache, self.cache_tables, batch.sparse, self.cache_dedup)

    def refresh_cache(self, project: Callable[[CacheTable, torch.Tensor], torch.Tensor], device: torch.device,
                      chunk: int = 65536) -> dict[str, float]:
        """Recompute the cached keys from the live main tables through `project` (a collective under
        DMP); returns how far the old keys had drifted (`key_cache.refresh`)."""
        keys = list(features((), user=self.spec.n_users > 0))
        return key_cache.refresh(self.key_cache, self.embeddings, keys, self.cache_tables, project, device, chunk)
