"""The GSU on cached keys: how a two-stage model scores its lifelong history from per-id keys kept
in TorchRec tables (`embeddings/key_cache.py`, read through the model's `SparseArch`) instead of the
full embeddings.

A model with a cache form returns a `CachedKeys` from `cached_keys()`: its cache tables, how a
source row becomes its cached key (`project`, what the refresh recomputes), the GSU over the
cached inputs, and the parts of the fast form. Two schemes exist: `ProjectedKeys` (GSUs that read
behaviour and target through bias-free linear maps: TWIN, LIC) and `SimHashKeys` (ETA's
signatures). Each selection has a plain reference (`select_reference`: padded keys (B, L, dim)
through the GSU module) and a fast form (`select_fast`: per-table scores on the jagged cache rows,
with dedup once per distinct id and query), equal in what they pick (tests/test_key_cache.py).
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Callable, Optional

import torch
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.key_cache import CacheTable
from lifelong.embeddings.sparse_arch import SparseArch, length_mask
from lifelong.embeddings.spec import TABLE_COLUMNS, feature_name
from lifelong.models.gsu.base import GSU, masked_topk, valid_slots
from lifelong.models.gsu.simhash import HALF, SimHash, hamming

Rows = dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]  # cache feature -> (rows, inverse or None)


def projected_tables(dim: int) -> tuple[CacheTable, ...]:
    """`ProjectedKeys`' cache tables: each main table's `dim`-wide key (long) and query (target) parts."""
    return tuple(CacheTable(f"{t}_{role}", t, (group,), dim) for role, group in
                 (("key", "long"), ("query", "target")) for t in TABLE_COLUMNS)


def signature_halves(bits: int) -> int:
    """`HALF`-bit pieces of one main table's share of a `bits`-bit signature."""
    return bits // len(TABLE_COLUMNS) // HALF


def simhash_tables(bits: int) -> tuple[CacheTable, ...]:
    """`SimHashKeys`' cache tables: each main table's share of the `bits`-bit signature, `HALF` bits per
    float, padded to a multiple of 4 floats (FBGEMM's table widths)."""
    halves = signature_halves(bits)
    return tuple(CacheTable(f"{t}_sig", t, ("target", "long"), -(-halves // 4) * 4) for t in TABLE_COLUMNS)


def _expand(rows: torch.Tensor, inv: Optional[torch.Tensor]) -> torch.Tensor:
    return rows if inv is None else rows[inv]


class CachedKeys(ABC):
    """One cache scheme: tables, keys and the GSU's score on them. The fast form needs the score to
    be a sum over cache tables of a per-(behaviour, query) score plus a lookup-free term."""

    tables: tuple[CacheTable, ...]  # what the model's `cache_tables(config)` declares (a test checks)
    gsu: GSU  # the GSU over `gsu_inputs` (the reference form)
    key_dim: int  # width of every cache table

    @abstractmethod
    def project(self, table: CacheTable, x: torch.Tensor) -> torch.Tensor:
        """Keys of source-table rows x (N, D) for cache `table`: (N, key_dim)."""

    @abstractmethod
    def gsu_inputs(self, batch: Batch, cached: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, candidates) for `gsu` from the padded cache features (B, T, key_dim)."""

    @abstractmethod
    def queries(self, rows: Rows) -> dict[str, torch.Tensor]:
        """Lifelong cache feature -> the query (B, dim) its rows are scored against."""

    @abstractmethod
    def pair_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Every key (U, dim) against every query (B, dim): (U, B)."""

    @abstractmethod
    def row_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """Row-aligned keys and queries (N, dim): (N,)."""

    def segment_scores(self, keys: torch.Tensor, queries: torch.Tensor, row_of: torch.Tensor,
                       lengths: torch.Tensor) -> torch.Tensor:
        """Every behaviour's key (N, dim), rows in order (`lengths` (B,) per row, `row_of` (N,) its
        row), against its row's query (B, dim): (N,)."""
        return self.row_scores(keys, queries[row_of])

    def extra_relevance(self, batch: Batch) -> torch.Tensor | float:
        """The score's lookup-free term over the full history (B, L), or 0."""
        return 0.0


class ProjectedKeys(CachedKeys):
    """GSUs whose relevance reads the behaviour b and the target q only through bias-free linear maps
    `key_proj(b)`, `query_proj(q)` plus per-behaviour features that need no lookup (`extra_keys`).
    As b = [item, category] embeddings, each map splits by table, so the cache holds `item_key`,
    `cat_key` (long) and `item_query`, `cat_query` (target) per id, and summing the tables' parts
    gives the exact projections. The GSU ranks by the head mean of α_h = k_h·q_h / sqrt(d) + e_h,
    which is (k·q) `dot_scale` + mean_h e_h (`extra_relevance`): one dot product of the flat
    projections per behaviour and table, plus lookup-free per-bucket terms."""

    def __init__(self, key_proj: nn.Linear, query_proj: nn.Linear, gsu: GSU, dot_scale: float,
                 extra_keys: Callable[[Batch], torch.Tensor],
                 extra_relevance: Callable[[Batch], torch.Tensor]) -> None:
        self.key_proj, self.query_proj, self.gsu, self.dot_scale = key_proj, query_proj, gsu, dot_scale
        self.extra_keys, self._extra_relevance = extra_keys, extra_relevance
        self.key_dim = key_proj.out_features
        self.tables = projected_tables(self.key_dim)

    def project(self, table: CacheTable, x: torch.Tensor) -> torch.Tensor:
        w = (self.key_proj if table.name.endswith("_key") else self.query_proj).weight  # (out, E)
        i, D = list(TABLE_COLUMNS).index(table.source), x.shape[-1]
        return x @ w[:, i * D:(i + 1) * D].T  # (N, out)

    def gsu_inputs(self, batch: Batch, cached: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        q = sum(cached[feature_name("target", f"{t}_query")] for t in TABLE_COLUMNS).squeeze(1)  # (B, out)
        k = sum(cached[feature_name("long", f"{t}_key")] for t in TABLE_COLUMNS)  # (B, L, out)
        return q, torch.cat([k, self.extra_keys(batch)], -1)

    def queries(self, rows: Rows) -> dict[str, torch.Tensor]:
        q = sum(_expand(*rows[feature_name("target", f"{t}_query")]) for t in TABLE_COLUMNS)  # (B, out)
        return {feature_name("long", f"{t}_key"): q for t in TABLE_COLUMNS}

    def pair_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return (keys @ queries.T) * self.dot_scale  # (U, B)

    def row_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nd,nd->n", keys, queries) * self.dot_scale  # (N,)

    def segment_scores(self, keys: torch.Tensor, queries: torch.Tensor, row_of: torch.Tensor,
                       lengths: torch.Tensor) -> torch.Tensor:
        """One matrix-vector product per row: no (N, dim) copy of the queries."""
        parts = keys.split(lengths.tolist())  # B x (n_b, dim)
        return torch.cat([k @ q for k, q in zip(parts, queries)]) * self.dot_scale  # (N,)

    def extra_relevance(self, batch: Batch) -> torch.Tensor:
        return self._extra_relevance(batch)


class SimHashKeys(CachedKeys):
    """ETA's signatures: the hash matrix is block-diagonal over the item and category embeddings, so
    each id's bits come from a cache table (`item_sig`, `cat_sig`, 16 bits per float) and the
    Hamming distance is the sum of each table's, compared once per distinct id and query."""

    def __init__(self, simhash: SimHash, bits: int, gsu: GSU) -> None:
        self.hash, self.gsu = simhash, gsu
        self.halves = signature_halves(bits)  # 16-bit pieces of one table's bits
        self.tables = simhash_tables(bits)
        self.key_dim = self.tables[0].dim  # a multiple of 4; past `halves` the keys are zeros

    def project(self, table: CacheTable, x: torch.Tensor) -> torch.Tensor:
        h = self.hash.part_halves(x, list(TABLE_COLUMNS).index(table.source))  # (N, halves)
        return torch.nn.functional.pad(h, (0, self.key_dim - self.halves))  # (N, key_dim)

    def gsu_inputs(self, batch: Batch, cached: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        sig = lambda g: self.hash.pack_halves(torch.cat(  # noqa: E731
            [cached[feature_name(g, f"{t}_sig")][..., :self.halves] for t in TABLE_COLUMNS], -1))  # (B, T, W)
        return sig("target").squeeze(1), sig("long")

    def queries(self, rows: Rows) -> dict[str, torch.Tensor]:
        return {feature_name("long", f"{t}_sig"): _expand(*rows[feature_name("target", f"{t}_sig")])
                for t in TABLE_COLUMNS}  # (B, key_dim) halves

    def _words(self, h: torch.Tensor) -> torch.Tensor:
        return self.hash.pack_halves(h[:, :self.halves])

    def pair_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return -hamming(self._words(keys).unsqueeze(1), self._words(queries).unsqueeze(0)).float()  # (U, B)

    def row_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        return -hamming(self._words(keys), self._words(queries)).float()  # (N,)


def _long_mask(batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    lengths = batch.sparse[feature_name("long", "item")].lengths()  # (B,)
    return lengths, length_mask(lengths, batch.long_len)


@torch.no_grad()
def select_reference(keys: CachedKeys, sparse: SparseArch, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """GSU top-k positions (B, k) and validity, the plain form: padded keys (B, L, dim) from the
    sparse arch's cache through the scheme's GSU module."""
    idx, scores = keys.gsu(*keys.gsu_inputs(batch, sparse.cached(batch)), _long_mask(batch)[1])
    return idx, valid_slots(scores)


PAIR_RATIO = 4  # select_fast scores (distinct id, query) pairs while there are at most 4 per behaviour


@torch.no_grad()
def select_fast(keys: CachedKeys, sparse: SparseArch, batch: Batch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same selection scored on the jagged cache rows, or with dedup once per distinct id (or
    table row) and query, then read per behaviour at its padded position (when the (U, B) scores
    are not much more than the N behaviours); nothing (B, L, dim) is built."""
    lengths, mask = _long_mask(batch)
    rows = sparse.cached_rows(batch)
    B, L = len(lengths), batch.long_len
    padded, jagged, row_of = None, None, None
    for feature, q in keys.queries(rows).items():
        found, inv = rows[feature]
        if inv is not None and found.shape[0] * B <= PAIR_RATIO * len(inv):  # (B, U) scores, each row read at its ids
            at = JaggedTensor(values=inv, lengths=lengths).to_padded_dense(desired_length=L)  # (B, L); padding: 0
            part = keys.pair_scores(found, q).T.contiguous().gather(1, at.long())  # (B, L)
            padded = part if padded is None else padded.add_(part)
            continue
        if inv is not None:  # (U, B) would outgrow (N,)
            found = found[inv]
        if row_of is None:  # once for the batch's features
            rows_dtype = torch.int32 if B * max(B, len(found)) < 2**31 else torch.int64
            row_of = torch.repeat_interleave(torch.arange(B, dtype=rows_dtype, device=lengths.device), lengths)  # (N,)
        part = keys.segment_scores(found, q, row_of, lengths)  # (N,)
        jagged = part if jagged is None else jagged.add_(part)
    if jagged is not None:
        jagged = JaggedTensor(values=jagged, lengths=lengths).to_padded_dense(desired_length=L)
        padded = jagged if padded is None else padded.add_(jagged)
    idx, top = masked_topk(padded.add_(keys.extra_relevance(batch)), mask, k)  # (B, L) -> (B, k)
    return idx, valid_slots(top)
