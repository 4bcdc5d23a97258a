"""The two-stage frame shared by SIM, ETA, TWIN, LIC and CAIN's main branch.

A subclass names its GSU (`self.gsu`, one of `models/gsu/`), says what the GSU reads
(`gsu_inputs`: query and a cheap per-behaviour key), what its ESU would score over all L
(`esu_relevance`, head-mean attention logits; for the consistency diagnostic) and how the
interest is read from a set of selected positions (`interest_from`). The frame then gives the
trained path (GSU top-k, then ESU), the brute-force path (ESU over every valid behaviour) and
the GSU/ESU consistency recall. `GapSearch` fills in SIM's ESU for SIM hard/soft and ETA,
`TwinFrame` TWIN's attention for TWIN and CAIN.
"""
from __future__ import annotations

import torch
from torch import nn

from lifelong.embeddings.collate import Batch
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models.base import CTRModel, Embedded
from lifelong.models.gsu.base import GSU, gather_rows, masked_topk, valid_slots
from lifelong.models.layers import ActivationUnit, GapAttention


class TwoStage(CTRModel):
    gsu: GSU

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, candidates (B, L, ...)) in the GSU's cheap representation."""
        raise NotImplementedError

    def esu_relevance(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        """The ESU's attention logits over all L, averaged over heads: (B, L)."""
        raise NotImplementedError

    def interest_from(self, batch: Batch, emb: Embedded, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """Interest (B, F) given selected positions idx (B, k) and their validity (B, k)."""
        raise NotImplementedError

    def select(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        """GSU top-k positions and validity; with L <= k (and a GSU that does not filter) every
        valid behaviour, in order, without scoring."""
        B, L = emb.long_mask.shape
        if L <= self.gsu.k and not self.gsu.filters:
            return torch.arange(L, device=emb.long_mask.device).expand(B, L), emb.long_mask
        idx, scores = self.gsu(*self.gsu_inputs(batch, emb), emb.long_mask)
        return idx, valid_slots(scores)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.interest_from(batch, emb, *self.select(batch, emb))

    def brute_force(self, batch: Batch) -> torch.Tensor:
        """Logits with the ESU over every valid behaviour (no GSU): the reference two-stage approximates."""
        emb = self.lookup(batch)
        B, L = emb.long_mask.shape
        all_idx = torch.arange(L, device=emb.long_mask.device).expand(B, L)
        return self.logits(self.interest_from(batch, emb, all_idx, emb.long_mask), emb)  # (B,)

    @torch.no_grad()
    def gsu_recall(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Per row: |GSU top-k ∩ exact top-k of the ESU's relevance over all L| / |exact top-k|,
        and whether the row is informative (more than k valid behaviours)."""
        emb = self.lookup(batch)
        mask = emb.long_mask
        got, got_scores = self.gsu(*self.gsu_inputs(batch, emb), mask)
        want, want_scores = masked_topk(self.esu_relevance(batch, emb), mask, self.gsu.k)
        hit = lambda idx, scores: torch.zeros(mask.shape, device=mask.device).scatter_add_(  # noqa: E731
            1, idx, valid_slots(scores).float()) > 0  # (B, L)
        both = (hit(got, got_scores) & hit(want, want_scores)).sum(1)
        return both / valid_slots(want_scores).sum(1).clamp(min=1), mask.sum(1) > self.gsu.k

    @staticmethod
    def gather(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
        """x (B, L, ...) or (B, L) at idx (B, k)."""
        return gather_rows(x, idx) if x.dim() > 2 else x.gather(1, idx)


class GapSearch(TwoStage):
    """Two-stage models whose ESU is SIM's (`GapAttention`: behaviour ⊕ time-gap embedding, multi-head
    target attention) with an optional DIN unit on the short history: SIM hard/soft and ETA. The
    config needs heads, attention_dim, gap_dim, gap_buckets, use_short, attention_hidden, head_hidden;
    a subclass sets `self.gsu` and `gsu_inputs`. `extra_dim` widens the head for its own parts."""

    def __init__(self, config, embeddings: nn.Module, spec: FeatureSpec) -> None:
        super().__init__(config, embeddings, spec)
        E = spec.behaviour_dim
        self.esu = GapAttention(E, config.gap_dim, config.gap_buckets, config.attention_dim, config.heads)
        self.unit = ActivationUnit(E, config.attention_hidden) if config.use_short else None
        self.head = self.make_head(E + config.attention_dim + (E if config.use_short else 0), config.head_hidden)

    def esu_relevance(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.esu.logits(emb.target, batch.target_ts, emb.long, batch.long_ts).mean(1)  # (B, L)

    def interest_from(self, batch: Batch, emb: Embedded, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        seq, ts = self.gather(emb.long, idx), self.gather(batch.long_ts, idx)  # (B, k, E), (B, k)
        parts = [emb.target, self.esu(emb.target, batch.target_ts, seq, ts, valid)]
        if self.unit is not None:
            parts.append(self.unit(emb.target, emb.short, emb.short_mask))
        return torch.cat(parts, -1)


class TwinFrame(TwoStage):
    """Two-stage models whose GSU and ESU are TWIN's consistency-preserving attention over
    [per-item keys, cross features] (`gsu/twin.py`): TWIN (keys: behaviour embeddings) and CAIN
    (keys: TCN context). A subclass sets `self.cross` (CrossFeatures), `self.attention`
    (TwinAttention), `self.gsu = RelevanceGSU(self.attention, k)` and `item_keys`."""

    def item_keys(self, emb: Embedded) -> torch.Tensor:
        """Per-behaviour item-inherent keys (B, L, D)."""
        raise NotImplementedError

    def keys(self, batch: Batch, emb: Embedded, idx: torch.Tensor) -> torch.Tensor:
        """[K_h, K_c] of the behaviours at idx (B, T): (B, T, D + J c)."""
        k_c = self.cross(batch.target_ts, self.gather(batch.long_ts, idx), emb.long_mask, idx)
        return torch.cat([self.gather(self.item_keys(emb), idx), k_c], -1)

    def all_keys(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        B, L = emb.long_mask.shape
        return self.keys(batch, emb, torch.arange(L, device=emb.long_mask.device).expand(B, L))

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return emb.target, self.all_keys(batch, emb)

    def esu_relevance(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.attention(emb.target, self.all_keys(batch, emb)).mean(1)  # (B, L)
