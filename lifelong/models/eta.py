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
import torch

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.embeddings.spec import TABLE_COLUMNS
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.cached_keys import SimHashKeys, simhash_tables
from lifelong.models.gsu.simhash import HALF, SimHash, SimHashGSU
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
    def __init__(self, config: ETAConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        self.hash = SimHash(spec.behaviour_dim, config.bits, config.hash_seed, blocks=len(TABLE_COLUMNS))
        self.gsu = SimHashGSU(config.k)

    @classmethod
    def inputs(cls, config: ETAConfig) -> InputSpec:
        return InputSpec(use_long=True)

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return self.hash.signature(emb.target), self.hash.signature(emb.long)  # (B, W), (B, L, W)

    @classmethod
    def cache_tables(cls, config: ETAConfig) -> tuple:
        return simhash_tables(config.bits)

    def cached_keys(self) -> SimHashKeys:
        """The signatures' bits per id from the `item_sig`, `cat_sig` cache tables."""
        return SimHashKeys(self.hash, self.config.bits, self.gsu)
