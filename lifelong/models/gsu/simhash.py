"""SimHash, written once: signatures `sign(x R)` for a fixed Gaussian R, packed into int64 words,
Hamming distance by byte popcount, the ETA GSU (top-k by smallest Hamming distance) and SDIM's
τ-bit bucket codes.

Charikar's SimHash: for Gaussian R, P(bit of x == bit of y) = 1 - θ(x, y)/π, so Hamming distance
estimates the angle and more bits estimate it better.
"""
from __future__ import annotations

import torch
from torch import nn

from lifelong.models.gsu.base import GSU

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)  # per byte


class SimHash(nn.Module):
    """Fixed random projection R (dim, bits); not trained, saved with the model (seeded)."""

    def __init__(self, dim: int, bits: int, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.bits = bits
        self.register_buffer("R", torch.randn(dim, bits, generator=g))
        weights = 2 ** torch.arange(64, dtype=torch.int64)  # bit j -> 2^j; bit 63 wraps to -2^63
        self.register_buffer("weights", weights)

    def sign_bits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., bits) bool: x R > 0."""
        return (x.detach() @ self.R) > 0

    def pack(self, bits: torch.Tensor) -> torch.Tensor:
        """(..., n) bool -> (..., ceil(n / 64)) int64 words, bit j of a word = bit 64w + j."""
        n = bits.shape[-1]
        words = -(-n // 64)
        padded = torch.nn.functional.pad(bits.long(), (0, words * 64 - n))  # (..., words * 64)
        return (padded.view(*bits.shape[:-1], words, 64) * self.weights).sum(-1)  # (..., words)

    def signature(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> packed int64 signature (..., words)."""
        return self.pack(self.sign_bits(x))

    def codes(self, x: torch.Tensor, tau: int) -> torch.Tensor:
        """SDIM: (..., dim) -> (..., bits // tau) bucket ids in [0, 2^tau), tau bits per function."""
        b = self.sign_bits(x)
        fns = self.bits // tau
        b = b[..., :fns * tau].reshape(*b.shape[:-1], fns, tau).long()  # (..., m, tau)
        return (b * (2 ** torch.arange(tau, device=b.device))).sum(-1)  # (..., m)


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distance of packed signatures a (..., W), b (..., W) (broadcast) -> (...)."""
    x = torch.bitwise_xor(a, b).contiguous()
    per_byte = _POPCOUNT.to(x.device)[x.view(torch.uint8).long()]  # (..., W * 8)
    return per_byte.sum(-1)


class SimHashGSU(GSU):
    """query: packed signature (B, W); candidates: packed signatures (B, L, W). Score = -Hamming."""

    def score(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return -hamming(query.unsqueeze(1), candidates).float()  # (B, L)
