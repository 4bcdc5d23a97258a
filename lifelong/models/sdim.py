"""SDIM: Sampling-based Deep Interest Modeling (Cao et al., "Sampling Is All You Need on Modeling
Long-Term User Behaviors for CTR Prediction", CIKM 2022).

No top-k: `hashes` random projections, each giving a `tau`-bit SimHash code of the target and of
every behaviour (`gsu/simhash.py`). Per hash function the behaviours whose code equals the
target's are summed and L2-normalised; the interest is the mean over functions. This equals
attention with weight P(collision) = (1 - θ/π)^τ in expectation. Two forms with one result
(a parity test, forward and backward): `gather` (the default: the collision mask times the
embeddings, one batched matmul over every function) and `bucket` (the paper's BSE: per user and
function, sum behaviours into the 2^τ buckets, target-independent, so one user's sums serve many
targets; a target then reads its bucket). Training reads one target per sample, where `gather`
is the cheaper (measured in BENCHMARKS.md); `bucket` is kept for the serving shape.
Padded behaviours never collide. A DIN unit on the short history runs beside it (`use_short`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lifelong.embeddings.batch import Batch
from lifelong.embeddings.sparse_arch import SparseArch
from lifelong.models.base import CTRModel, Embedded, InputSpec
from lifelong.models.gsu.simhash import SimHash
from lifelong.models.layers import ActivationUnit
from lifelong.models.registry import register

FORMS = ("bucket", "gather")


@dataclass(frozen=True)
class SDIMConfig:
    hashes: int = 48
    tau: int = 3
    hash_seed: int = 0
    form: str = "gather"
    use_short: bool = True
    attention_hidden: tuple[int, ...] = (64, 32)
    head_hidden: tuple[int, ...] = (128, 64)

    def __post_init__(self) -> None:
        if self.form not in FORMS:
            raise ValueError(f"sdim form '{self.form}' not in {FORMS}")
        if not 1 <= self.tau <= 8:
            raise ValueError(f"sdim tau {self.tau} must be in [1, 8] (bits per hash function)")
        if self.hashes < 1:
            raise ValueError(f"sdim hashes {self.hashes} must be >= 1")


def collision_gather(codes_q: torch.Tensor, codes: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Direct form: per function, the sum of colliding behaviours. (B, m), (B, L, m), (B, L, E) -> (B, m, E)."""
    hit = (codes == codes_q.unsqueeze(1)) & mask.unsqueeze(-1)  # (B, L, m)
    return torch.einsum("blm,ble->bme", hit.to(seq.dtype), seq)


def bucket_sums(codes: torch.Tensor, seq: torch.Tensor, mask: torch.Tensor, n_buckets: int) -> torch.Tensor:
    """BSE: per function and bucket, the sum of behaviours. (B, L, m), (B, L, E) -> (B, m, n_buckets, E)."""
    B, L, m = codes.shape
    seq = seq * mask.unsqueeze(-1)  # padding adds nothing
    out = seq.new_zeros(B, m, n_buckets, seq.shape[-1])
    for j in range(m):  # one (B, L, E) scatter per function keeps memory at O(B L E)
        out[:, j].scatter_add_(1, codes[:, :, j].unsqueeze(-1).expand_as(seq), seq)
    return out


def bucket_read(sums: torch.Tensor, codes_q: torch.Tensor) -> torch.Tensor:
    """The target's bucket of every function: (B, m, n_buckets, E), (B, m) -> (B, m, E)."""
    idx = codes_q.unsqueeze(-1).unsqueeze(-1).expand(-1, -1, 1, sums.shape[-1])  # (B, m, 1, E)
    return sums.gather(2, idx).squeeze(2)


@register("sdim", SDIMConfig)
class SDIM(CTRModel):
    def __init__(self, config: SDIMConfig, sparse: SparseArch) -> None:
        super().__init__(config, sparse)
        spec = sparse.spec
        E = spec.behaviour_dim
        self.hash = SimHash(E, config.hashes * config.tau, config.hash_seed)
        self.unit = ActivationUnit(E, config.attention_hidden) if config.use_short else None
        self.head = self.make_head(2 * E + (E if config.use_short else 0), config.head_hidden)

    @classmethod
    def inputs(cls, config: SDIMConfig) -> InputSpec:
        return InputSpec(use_long=True)

    def long_interest(self, emb: Embedded) -> torch.Tensor:
        """(B, E): mean over functions of the L2-normalised colliding sums."""
        tau = self.config.tau
        codes_q, codes = self.hash.codes(emb.target, tau), self.hash.codes(emb.long, tau)  # (B, m), (B, L, m)
        if self.config.form == "gather":
            per_fn = collision_gather(codes_q, codes, emb.long, emb.long_mask)
        else:
            per_fn = bucket_read(bucket_sums(codes, emb.long, emb.long_mask, 2 ** tau), codes_q)
        return nn.functional.normalize(per_fn, dim=-1).mean(1)  # (B, E)

    def interest(self, batch: Batch, emb: Embedded) -> torch.Tensor:
        parts = [emb.target, self.long_interest(emb)]
        if self.unit is not None:
            parts.append(self.unit(emb.target, emb.short, emb.short_mask))
        return torch.cat(parts, -1)
