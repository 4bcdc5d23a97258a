"""The two-stage frame shared by SIM, ETA, TWIN, LIC and CAIN's main branch.

A subclass names its GSU (`self.gsu`, one of `models/gsu/`), says what the GSU reads
(`gsu_inputs`: query and a cheap per-behaviour key), what its ESU would score over all L
(`esu_relevance`, head-mean attention logits; for the consistency diagnostic) and how the
interest is read from a set of selected positions (`interest_from`). The frame then gives the
trained path (GSU top-k, then ESU), the brute-force path (ESU over every valid behaviour) and
the GSU/ESU consistency recall. `GapSearch` fills in SIM's ESU for SIM hard/soft and ETA,
`TwinFrame` TWIN's attention for TWIN and CAIN.

Cached keys (`embeddings/key_cache.py`): a model that names `cache_tables` and returns its scheme
from `cached_keys()` (`models/cached_keys.py`: projected keys for TWIN and LIC, SimHash signatures
for ETA) can run its GSU on per-id keys cached in TorchRec tables (its `SparseArch` holds them when
the trainer built it with a cache); the forward pass then looks up only the k selected behaviours
in the main tables (`sparse_arch.select_long`). With a fresh cache this gives the same logits and
gradients as the plain path.
"""
from __future__ import annotations

from typing import Optional

import torch

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch, select_long
from lifelong.models.base import CTRModel, Embedded, Output
from lifelong.models.cached_keys import CachedKeys, select_fast, select_reference
from lifelong.models.gsu.base import GSU, gather_rows, masked_topk, valid_slots
from lifelong.models.layers import ActivationUnit, GapAttention


class TwoStage(CTRModel):
    """The frame: a subclass sets `self.gsu` and implements the three hooks below; `cached_keys`
    when its GSU has a key-cache form."""

    gsu: GSU

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        """(query, candidates) the GSU scores: a cheap query and per-behaviour key over all L."""
        raise NotImplementedError(f"{type(self).__name__} must define gsu_inputs")

    def esu_relevance(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        """The ESU's relevance of every behaviour (B, L), head-mean attention logits: what the GSU
        approximates (the consistency diagnostic, `gsu_recall`)."""
        raise NotImplementedError(f"{type(self).__name__} must define esu_relevance")

    def interest_from(self, batch: Batch, emb: Embedded, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The interest features (B, F) read from the behaviours at positions idx (B, k) where valid."""
        raise NotImplementedError(f"{type(self).__name__} must define interest_from")

    def cached_keys(self) -> Optional[CachedKeys]:
        """How the GSU runs on the key cache (`models/cached_keys.py`); None: no cache form."""
        return None

    def refresh_keys(self, chunk: int = 65536) -> dict[str, float]:
        """Recompute the cached keys from the live tables and dense parameters (collective)."""
        device = next(self.head.parameters()).device
        return self.sparse.refresh_cache(self.cached_keys().project, device, chunk)

    def select_cached(self, batch: Batch, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """GSU top-k positions (B, k) and validity from the cached keys of the full history: the fast
        form, or its plain `reference`."""
        if reference:
            return select_reference(self.cached_keys(), self.sparse, batch)
        return select_fast(self.cached_keys(), self.sparse, batch, self.gsu.k)

    reads_match = False  # a subclass whose GSU / ESU reads target-match features says so

    def long_match(self, batch: Batch) -> Optional[torch.Tensor]:
        """Match buckets (B, L) of the batch's lifelong behaviours against the target
        (`layers.match_buckets`) when the model reads them, else None."""
        return self.target_match(batch, "long", batch.long_len) if self.reads_match else None

    def match_of(self, batch: Batch, emb: Embedded, idx: Optional[torch.Tensor] = None) -> Optional[torch.Tensor]:
        """`long_match` computed once per batch (kept in `emb.cache`), at positions idx (B, T) if given."""
        if "match" not in emb.cache:
            emb.cache["match"] = self.long_match(batch)
        match = emb.cache["match"]
        return match if match is None or idx is None else self.gather(match, idx)

    def forward(self, batch: Batch) -> Output:
        if self.sparse.key_cache is None or (batch.long_len <= self.gsu.k and not self.gsu.filters):
            return super().forward(batch)
        idx, valid = self.select_cached(batch)
        selected = select_long(batch, idx, valid)
        emb = self.lookup(selected)  # full-width embeddings of the k selected behaviours only
        k = idx.shape[1]
        return self.output(self.logits(self.interest_from(
            selected, emb, torch.arange(k, device=idx.device).expand_as(idx), valid), emb), emb)

    def gsu_scores(self, batch: Batch, emb: Embedded) -> Optional[torch.Tensor]:
        """The GSU's score of every behaviour, `self.gsu.score(*self.gsu_inputs(batch, emb))` (B, L),
        without building the GSU's keys, for models with such a folded form (TWIN, CAIN, LIC); None
        where the GSU module on its inputs is the only form."""
        return None

    def select(self, batch: Batch, emb: Embedded, reference: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """GSU top-k positions and validity; with L <= k (and a GSU that does not filter) every
        valid behaviour, in order, without scoring. The same top-k (`masked_topk`) on `gsu_scores`
        where the model has them, unless `reference`: the GSU module on its built inputs."""
        B, L = emb.long_mask.shape
        if L <= self.gsu.k and not self.gsu.filters:
            return torch.arange(L, device=emb.long_mask.device).expand(B, L), emb.long_mask
        with torch.no_grad():
            scores = None if reference else self.gsu_scores(batch, emb)
            if scores is None:
                idx, scores = self.gsu(*self.gsu_inputs(batch, emb), emb.long_mask)
            else:
                idx, scores = masked_topk(scores, emb.long_mask, self.gsu.k)
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
    config needs heads, attention_dim, gap_dim, gap_buckets, match, match_dim, use_short,
    attention_hidden, head_hidden; a subclass sets `self.gsu` and `gsu_inputs`. With `match` (our
    addition) the ESU's keys and values carry each behaviour's target-match embedding."""

    def __init__(self, config, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E = spec.behaviour_dim
        self.esu = GapAttention(E, config.gap_dim, config.gap_buckets, config.attention_dim, config.heads,
                                config.match_dim if config.match else 0)
        self.unit = ActivationUnit(E, config.attention_hidden) if config.use_short else None
        self.head = self.make_head(E + config.attention_dim + (E if config.use_short else 0), config.head_hidden)

    @property
    def reads_match(self) -> bool:
        return self.config.match

    def esu_relevance(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.esu.logits(emb.target, batch.target_ts, emb.long, batch.long_ts,
                               self.match_of(batch, emb)).mean(1)  # (B, L)

    def interest_from(self, batch: Batch, emb: Embedded, idx: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        seq, ts = self.gather(emb.long, idx), self.gather(batch.long_ts, idx)  # (B, k, E), (B, k)
        match = self.match_of(batch, emb, idx)  # (B, k) or None
        parts = [emb.target, self.esu(emb.target, batch.target_ts, seq, ts, valid, match)]
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

    @property
    def reads_match(self) -> bool:
        return self.cross.match is not None

    def keys(self, batch: Batch, emb: Embedded, idx: torch.Tensor) -> torch.Tensor:
        """[K_h, K_c] of the behaviours at idx (B, T): (B, T, D + J c)."""
        pos = idx if batch.long_pos is None else self.gather(batch.long_pos, idx)
        count = emb.long_mask.sum(1) if batch.long_count is None else batch.long_count
        k_c = self.cross(batch.target_ts, self.gather(batch.long_ts, idx), count, pos, self.match_of(batch, emb, idx))
        return torch.cat([self.gather(self.item_keys(emb), idx), k_c], -1)

    def all_keys(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        B, L = emb.long_mask.shape
        return self.keys(batch, emb, torch.arange(L, device=emb.long_mask.device).expand(B, L))

    def gsu_inputs(self, batch: Batch, emb: Embedded) -> tuple[torch.Tensor, torch.Tensor]:
        return emb.target, self.all_keys(batch, emb)

    def mean_cross_relevance(self, batch: Batch, match: Optional[torch.Tensor], reference: bool = False
                             ) -> torch.Tensor:
        """Head mean of the cross features' terms of α for every lifelong behaviour, one scalar per
        bucket of each feature (`TwinAttention.mean_cross_scalars`) read per behaviour
        (`CrossFeatures.bucket_sum`); `reference`: every feature's buckets, then
        `TwinAttention.mean_cross_bias`. match (B, L) when the model reads it. (B, L)."""
        lengths = batch.sparse["long_item"].lengths()
        count = lengths if batch.long_count is None else batch.long_count
        if reference:
            pos = torch.arange(batch.long_len, device=lengths.device).expand(len(lengths), -1)  # (B, L)
            pos = pos if batch.long_pos is None else batch.long_pos
            return self.attention.mean_cross_bias(self.cross.tables(), self.cross.buckets_of(
                batch.target_ts, batch.long_ts, count, pos, match))
        return self.cross.bucket_sum(self.attention.mean_cross_scalars(self.cross.tables()), batch.target_ts,
                                     batch.long_ts, count, batch.long_pos, match)

    def gsu_scores(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        """The GSU's score of every behaviour, `self.gsu.score(*self.gsu_inputs(...))`, without
        building the (B, L, D + J c) keys: the item part folded into the query
        (`TwinAttention.mean_item_relevance`), plus `mean_cross_relevance`. (B, L)."""
        return (self.attention.mean_item_relevance(emb.target, self.item_keys(emb))
                + self.mean_cross_relevance(batch, self.match_of(batch, emb)))

    def esu_relevance(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        return self.attention(emb.target, self.all_keys(batch, emb)).mean(1)  # (B, L)
