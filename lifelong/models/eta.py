"""ETA: End-to-end Target Attention (Chen et al., "Efficient Long Sequential User Data Modeling
for Click-Through Rate Prediction", 2022).

The GSU and ESU share the item embeddings (end to end: no separate search table). GSU: SimHash
signatures (`bits` random hyperplanes, packed in int64) of the target and of every behaviour;
the k behaviours with the smallest Hamming distance to the target (`gsu/simhash.py`). ESU: SIM's
time-gap target attention over the k, plus a DIN unit on the short history. The hash matrix is
fixed and seeded (`hash_seed`) and saved with the model; it is block-diagonal over the item and
category embeddings (bits / 2 hyperplanes each), so with the trainer's key cache each id's bits
come from a cache table (`item_sig`, `cat_sig`, 16 bits per float) and only the k selected
behaviours are looked up in full.
Our addition, off by default (`match: true`): the ESU's keys and values also carry whether each
behaviour's item and category are the target's (`layers.GapAttention`), as TWIN's `match` does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import nn

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.key_cache import CacheTable
from lifelong.embeddings.spec import TABLE_COLUMNS, FeatureSpec, feature_name
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.gsu.simhash import HALF, SimHash, SimHashGSU, hamming
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
    match: bool = False  # the ESU reads target-match features (our addition, `layers.GapAttention`)
    match_dim: int = 8
    use_short: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        if self.bits <= 0 or self.bits % (HALF * len(TABLE_COLUMNS)):
            raise ValueError(f"eta bits {self.bits} must be a positive multiple of {HALF * len(TABLE_COLUMNS)}")


@register("eta", ETAConfig)
class ETA(GapSearch):
    def __init__(self, config: ETAConfig, embeddings: nn.Module, spec: FeatureSpec) -> None:
        super().__init__(config, embeddings, spec)
        self.hash = SimHash(spec.behaviour_dim, config.bits, config.hash_seed, blocks=len(TABLE_COLUMNS))
        self.gsu = SimHashGSU(config.k)

    @classmethod
    def inputs(cls, config: ETAConfig) -> InputSpec:
        return InputSpec(use_long=True)

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hash.signature(emb.target), self.hash.signature(emb.long)  # (B, W), (B, L, W)

    @classmethod
    def cache_tables(cls, config: ETAConfig) -> tuple[CacheTable, ...]:
        return tuple(CacheTable(f"{t}_sig", t, ("target", "long")) for t in TABLE_COLUMNS)

    @property
    def halves(self) -> int:
        """16-bit pieces of one table's bits."""
        return self.config.bits // len(TABLE_COLUMNS) // HALF

    @property
    def key_dim(self) -> int:
        return -(-self.halves // 4) * 4  # FBGEMM tables are a multiple of 4 wide; the rest is zeros

    def project(self, table: CacheTable, x: torch.Tensor) -> torch.Tensor:
        h = self.hash.part_halves(x, list(TABLE_COLUMNS).index(table.source))  # (N, halves)
        return torch.nn.functional.pad(h, (0, self.key_dim - self.halves))  # (N, key_dim)

    def cached_gsu_inputs(self, batch: Batch, cached: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        sig = lambda g: self.hash.pack_halves(torch.cat(  # noqa: E731
            [cached[feature_name(g, f"{t}_sig")][..., :self.halves] for t in TABLE_COLUMNS], -1))  # (B, T, W)
        return sig("target").squeeze(1), sig("long")

    # The fast form: the signature is item bits | category bits, so the Hamming distance is the
    # sum of each table's; each table's words are compared once per distinct id and query.
    fast_cached = True

    def cached_queries(self, rows: dict[str, tuple[torch.Tensor, Optional[torch.Tensor]]]
                       ) -> dict[str, torch.Tensor]:
        expand = lambda r, inv: r if inv is None else r[inv]  # noqa: E731
        return {feature_name("long", f"{t}_sig"): expand(*rows[feature_name("target", f"{t}_sig")])
                for t in TABLE_COLUMNS}  # (B, key_dim) halves

    def pair_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        words = lambda h: self.hash.pack_halves(h[:, :self.halves])  # noqa: E731
        return -hamming(words(keys).unsqueeze(1), words(queries).unsqueeze(0)).float()  # (U, B)

    def row_scores(self, keys: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        words = lambda h: self.hash.pack_halves(h[:, :self.halves])  # noqa: E731
        return -hamming(words(keys), words(queries)).float()  # (N,)
