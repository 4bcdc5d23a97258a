"""SIM with soft search (Pi et al., CIKM 2020, section 3.1).

A separate, lower-dimensional search table `e'` (TorchRec side tables over the item and category
ids, sharded like the main ones) scores behaviours by `r_i = <W_b e'_i, W_a e'_q>`; the GSU keeps
the top-k by r (maximum inner-product search, `gsu/relevance.py`). The search table is trained by
an auxiliary CTR head on the pooled lifelong sequence, as the paper's joint auxiliary task; we
pool twice, plain mean (the paper's sum pooling, scaled) and r-softmax weighted, so that W_a and
W_b are trained too (top-k itself passes no gradient). ESU: SIM's time-gap target attention.
Total loss = CTR + aux_weight * aux CTR.
Our addition, off by default (`match: true`): the ESU's keys and values also carry whether each
behaviour's item and category are the target's (`layers.GapAttention`), as TWIN's `match` does.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.embeddings.spec import SideTable
from lifelong.models.base import Embedded, InputSpec
from lifelong.models.gsu.relevance import InnerProduct, RelevanceGSU
from lifelong.models.layers import masked_softmax, mlp
from lifelong.models.registry import register
from lifelong.models.two_stage import GapSearch


@dataclass(frozen=True)
class SIMSoftConfig:
    k: int = 100
    search_dim: int = 8  # width of each search table (item and category)
    search_proj_dim: int = 16  # width of W_a, W_b
    aux_weight: float = 1.0
    aux_hidden: tuple[int, ...] = (64,)
    heads: int = 4
    attention_dim: int = 32
    gap_dim: int = 8
    gap_buckets: int = 24
    match: bool = False  # the ESU reads target-match features (our addition, `layers.GapAttention`)
    match_dim: int = 8
    use_short: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)


def search_tables(config: SIMSoftConfig) -> tuple[SideTable, ...]:
    return (SideTable("search_item", "item", config.search_dim), SideTable("search_cat", "cat", config.search_dim))


@register("sim_soft", SIMSoftConfig)
class SIMSoft(GapSearch):
    def __init__(self, config: SIMSoftConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        S = 2 * config.search_dim
        self.relevance = InnerProduct(S, S, config.search_proj_dim)
        self.gsu = RelevanceGSU(self.relevance, config.k)
        self.aux_head = mlp(3 * S, config.aux_hidden, 1)

    @classmethod
    def inputs(cls, config: SIMSoftConfig) -> InputSpec:
        return InputSpec(use_long=True, side_tables=search_tables(config))

    def search(self, emb: Embedded, group: str) -> torch.Tensor:
        """e' of a group: concat(search_item, search_cat): (B, 2 s) or (B, L, 2 s)."""
        return torch.cat([emb.side[t.name][group] for t in search_tables(self.config)], -1)

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return self.search(emb, "target"), self.search(emb, "long")

    def aux_logits(self, emb: Embedded) -> torch.Tensor:
        """Auxiliary CTR logits (B,) from the search table alone."""
        q, seq, mask = self.search(emb, "target"), self.search(emb, "long"), emb.long_mask
        mean = (seq * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)  # (B, 2s)
        w = masked_softmax(self.relevance(q, seq).squeeze(1), mask)  # (B, L)
        weighted = torch.einsum("bl,bld->bd", w, seq)  # (B, 2s)
        return self.aux_head(torch.cat([mean, weighted, q], -1)).squeeze(-1)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        if self.training:
            aux = nn.functional.binary_cross_entropy_with_logits(self.aux_logits(emb), batch.labels)
            emb.aux.append(self.config.aux_weight * aux)
        return super().interest(batch, emb)
