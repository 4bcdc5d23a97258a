"""Cached GSU keys: per-id projections of the live embeddings, kept in TorchRec tables.

A two-stage model whose GSU scores behaviours on a projection of their embeddings (TWIN's
`K_h W_h`, LIC's `W_b b`, ETA's SimHash signature) names one cache table per (source table,
projection) (`CacheTable`); the tables live in their own `EmbeddingCollection`, which the
planner shards like any other (constraints follow the source table's). The GSU then reads
`dim` numbers per behaviour from the cache instead of the full embedding, and only the k
selected behaviours are looked up in the main tables.

The trainer refreshes the cache from the live parameters every N steps (`refresh`): each rank
recomputes the rows it holds, reading their source embeddings through the (sharded) main
collection, so any plan works. Between refreshes the keys are stale; `refresh` reports how
far they had drifted. Lookups can be deduplicated (`dedup_lookup`): each distinct id of a
feature is looked up once and expanded after.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.distributed as dist
from torchrec import EmbeddingCollection, EmbeddingConfig, KeyedJaggedTensor
from torchrec.sparse.jagged_tensor import JaggedTensor

from lifelong.embeddings.spec import GROUPS, TABLE_COLUMNS, FeatureSpec, feature_name


@dataclass(frozen=True)
class CacheTable:
    """Cache table `name`: one `dim`-wide projection of main table `source`'s rows, read for `groups`."""

    name: str
    source: str
    groups: tuple[str, ...]
    dim: int

    def __post_init__(self) -> None:
        if self.source not in TABLE_COLUMNS:
            raise ValueError(f"cache table '{self.name}': source '{self.source}' not in {list(TABLE_COLUMNS)}")
        if self.dim <= 0:
            raise ValueError(f"cache table '{self.name}': dim must be > 0, not {self.dim}")
        bad = [g for g in self.groups if g not in GROUPS]
        if bad:
            raise ValueError(f"cache table '{self.name}': unknown group(s) {bad}; choose from {GROUPS}")


def cache_collection(spec: FeatureSpec, tables: tuple[CacheTable, ...],
                     device: torch.device | str = "cpu") -> EmbeddingCollection:
    """The cache's collection: one table per CacheTable, its rows like its source table's."""
    ec = EmbeddingCollection(tables=[
        EmbeddingConfig(name=t.name, embedding_dim=t.dim, num_embeddings=spec.num_embeddings(t.source),
                        feature_names=[feature_name(g, t.name) for g in t.groups]) for t in tables],
        device=torch.device(device))
    if torch.device(device).type != "meta":
        for p in ec.parameters():
            torch.nn.init.zeros_(p)
    return ec


def unique_ids(ids: torch.Tensor, n_rows: Optional[int] = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(sorted distinct ids, inverse) like `torch.unique(return_inverse=True)`; with the table's row
    count given and not much larger than len(ids), by counting rows (O(N + rows), no sort), the
    inverse then in int32 (half the bytes of every pass that reads it)."""
    if n_rows is None or n_rows > 4 * ids.numel() + 1024 or n_rows >= 2**31:
        return torch.unique(ids, return_inverse=True)
    present = torch.bincount(ids, minlength=n_rows) > 0  # (rows,); ids < 0 raise here
    if len(present) > n_rows:
        raise ValueError(f"id {int(ids.max())} is out of range for a table of {n_rows} rows")
    rank = (present.cumsum(0) - 1).to(torch.int32)  # row -> its index among the present rows
    return present.nonzero().squeeze(1), rank.index_select(0, ids)


WHOLE_TABLE_RATIO = 4  # unique_lookup(whole_tables=True): rows x stride <= 4 N reads the whole table


def unique_lookup(ec: torch.nn.Module, ids: dict[str, torch.Tensor], stride: int,
                  rows: Optional[dict[str, int]] = None, whole_tables: bool = False
                  ) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Each feature's distinct ids (feature -> its ids, in order, (N,)) looked up once: feature ->
    (rows (U, D), inverse (N,)) with rows[inverse] the embeddings of the feature's ids in order. The
    looked-up KJT (`stride` rows) holds each feature's unique ids in its first row. `rows`: feature
    -> its table's row count (enables `unique_ids`' fast form). With `whole_tables` (no gradient
    may reach the tables: every row read gets one), a table of at most WHOLE_TABLE_RATIO N / stride
    rows is read whole and the ids are the inverse: a score per (row, batch row) then costs less
    than finding the distinct ids (two passes over N)."""
    keys, uniq, inverse, lengths = list(ids), [], [], []
    for key in keys:
        n_rows = (rows or {}).get(key)
        if whole_tables and n_rows is not None and n_rows * stride <= WHOLE_TABLE_RATIO * ids[key].numel():
            u, inv = torch.arange(n_rows, device=ids[key].device), ids[key]  # ids in range: checked at collate
        else:
            u, inv = unique_ids(ids[key], n_rows)
        uniq.append(u)
        inverse.append(inv)
        row = torch.zeros(stride, dtype=torch.int32, device=u.device)
        row[:1] = u.numel()
        lengths.append(row)
    looked = ec(KeyedJaggedTensor.from_lengths_sync(keys, torch.cat(uniq), torch.cat(lengths)))
    return {key: (looked[key].values(), inv) for key, inv in zip(keys, inverse)}


def dedup_lookup(ec: torch.nn.Module, kjt: KeyedJaggedTensor, rows: Optional[dict[str, int]] = None
                 ) -> dict[str, JaggedTensor]:
    """`ec(kjt)` with each feature's distinct ids looked up once and expanded back (gradients sum
    per id, as the embedding kernels do for repeated ids)."""
    features = kjt.to_dict()
    looked = unique_lookup(ec, {key: jt.values() for key, jt in features.items()}, kjt.stride(), rows)
    return {key: JaggedTensor(values=r[inv], lengths=features[key].lengths()) for key, (r, inv) in looked.items()}


def table_rows(spec: FeatureSpec, tables: tuple[CacheTable, ...]) -> dict[str, int]:
    """Cache feature -> row count of its table."""
    return {feature_name(g, t.name): spec.num_embeddings(t.source) for t in tables for g in t.groups}


def cache_sources(tables: tuple[CacheTable, ...], sparse: KeyedJaggedTensor) -> dict[str, JaggedTensor]:
    """Cache feature -> the batch's ids it reads (its source table's feature of the same group)."""
    return {feature_name(g, t.name): sparse[feature_name(g, t.source)] for t in tables for g in t.groups}


def cache_kjt(tables: tuple[CacheTable, ...], sparse: KeyedJaggedTensor) -> KeyedJaggedTensor:
    """The batch's ids under the cache features' names (a cache table reads its source's ids)."""
    src = cache_sources(tables, sparse)
    return KeyedJaggedTensor.from_lengths_sync(list(src), torch.cat([j.values() for j in src.values()]),
                                               torch.cat([j.lengths() for j in src.values()]))


def lookup(ec: torch.nn.Module, tables: tuple[CacheTable, ...], sparse: KeyedJaggedTensor, widths: dict[str, int],
           dedup: Optional[dict[str, int]]) -> dict[str, torch.Tensor]:
    """Cached keys of the batch: cache feature -> (B, width of its group, dim), zero padded.
    `dedup`: None, or feature -> table rows (`table_rows`) to look each distinct id up once."""
    kjt = cache_kjt(tables, sparse)
    out = dedup_lookup(ec, kjt, dedup) if dedup is not None else ec(kjt)
    return {feature_name(g, t.name): out[feature_name(g, t.name)].to_padded_dense(desired_length=widths[g])
            for t in tables for g in t.groups}  # (B, T, dim)


def lookup_rows(ec: torch.nn.Module, tables: tuple[CacheTable, ...], sparse: KeyedJaggedTensor,
                dedup: Optional[dict[str, int]]) -> dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]:
    """Cached keys of the batch, jagged: cache feature -> (rows, inverse) with rows[inverse] the
    feature's keys in order (N, dim); inverse is None without dedup (rows are already in order).
    With dedup, a small table comes whole (`unique_lookup`'s whole_tables: the GSU reads the cache
    without gradients)."""
    if dedup is not None:  # each feature's ids straight from the batch: no concatenated copy
        ids = {feature: jt.values() for feature, jt in cache_sources(tables, sparse).items()}
        return unique_lookup(ec, ids, sparse.stride(), dedup, whole_tables=True)
    return {k: (jt.values(), None) for k, jt in ec(cache_kjt(tables, sparse)).items()}


def _local_blocks(ec: torch.nn.Module, table: str) -> list[tuple[torch.Tensor, int, int]]:
    """This rank's pieces of a (possibly sharded) table: (tensor view, first row, first column)."""
    w = ec.state_dict()[f"embeddings.{table}.weight"]
    if hasattr(w, "local_shards"):  # ShardedTensor (row-, table-, column-wise)
        return [(s.tensor, s.metadata.shard_offsets[0], s.metadata.shard_offsets[1]) for s in w.local_shards()]
    return [(w, 0, 0)]  # unsharded or data-parallel: the whole table


@torch.no_grad()
def refresh(cache_ec: torch.nn.Module, main_ec: torch.nn.Module, main_keys: list[str],
            tables: tuple[CacheTable, ...], project: Callable[[CacheTable, torch.Tensor], torch.Tensor],
            device: torch.device, chunk: int = 65536) -> dict[str, float]:
    """Recompute every cache row this rank holds from the live main tables; returns the drift of
    the old keys over all ranks: `rel_change` = |new - old| / |new| (Frobenius) and
    `rows_changed` = share of rows whose keys changed. A collective under DMP: every rank takes
    part, also one that holds no cache rows (table-wise plans)."""
    blocks = [(t, *b) for t in tables for b in _local_blocks(cache_ec, t.name)]
    wanted = {s: torch.cat([torch.arange(r0, r0 + blk.shape[0], device=device) for t, blk, r0, _ in blocks
                            if t.source == s] or [torch.zeros(0, dtype=torch.long, device=device)])
              for s in TABLE_COLUMNS}  # source table -> row ids this rank needs
    n = torch.tensor([max(len(v) for v in wanted.values())], device=device)
    if dist.is_initialized():
        dist.all_reduce(n, op=dist.ReduceOp.MAX)  # every rank runs the same number of lookups
    rows: dict[str, list[torch.Tensor]] = {s: [] for s in TABLE_COLUMNS}
    for start in range(0, int(n.item()), chunk):
        ids = {s: v[start:start + chunk] for s, v in wanted.items()}
        feats = {feature_name("long", s): ids[s] for s in TABLE_COLUMNS}
        values = [feats.get(k, torch.zeros(0, dtype=torch.long, device=device)) for k in main_keys]
        kjt = KeyedJaggedTensor.from_lengths_sync(
            main_keys, torch.cat(values), torch.tensor([len(v) for v in values], device=device))  # one row per key
        out = main_ec(kjt)
        for s in TABLE_COLUMNS:
            rows[s].append(out[feature_name("long", s)].values())
    emb = {s: torch.cat(v) if v else None for s, v in rows.items()}
    offset = {s: 0 for s in TABLE_COLUMNS}
    diff = torch.zeros(3, dtype=torch.float64, device=device)  # |new - old|^2, |new|^2, rows changed
    total_rows = torch.zeros(1, dtype=torch.float64, device=device)
    for t, blk, _, c0 in blocks:
        n_rows = blk.shape[0]
        x = emb[t.source][offset[t.source]:offset[t.source] + n_rows]  # (rows, D) source embeddings
        offset[t.source] += n_rows
        new = project(t, x)[:, c0:c0 + blk.shape[1]].to(blk.dtype)  # (rows, this block's columns)
        delta = new - blk
        diff += torch.stack([delta.pow(2).sum(), new.pow(2).sum(), (delta != 0).any(1).sum()]).double()
        total_rows += n_rows
        blk.copy_(new)
    stats = torch.cat([diff, total_rows])
    if dist.is_initialized():
        dist.all_reduce(stats)
    return {"rel_change": (stats[0] / stats[1].clamp(min=1e-30)).sqrt().item(),
            "rows_changed": (stats[2] / stats[3].clamp(min=1)).item()}
