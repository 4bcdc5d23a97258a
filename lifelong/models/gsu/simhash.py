"""SimHash, written once: signatures `sign(x R)` for a fixed Gaussian R, packed into int64 words,
Hamming distance by byte popcount, the ETA GSU (top-k by smallest Hamming distance) and SDIM's
τ-bit bucket codes.

Charikar's SimHash: for Gaussian R, P(bit of x == bit of y) = 1 - θ(x, y)/π, so Hamming distance
estimates the angle and more bits estimate it better.
"""
from __future__ import annotations

import sys

import torch
from torch import nn

from lifelong.models.gsu.base import GSU

_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)  # per byte


HALF = 16  # bits per cached signature piece: a float32 holds 0..65535 exactly
CHUNK_ROWS = 16384  # rows hashed at a time: the (rows, bits) projections stay in cache, not in fresh pages


def by_chunks(fn, x: torch.Tensor, rows: int = CHUNK_ROWS) -> torch.Tensor:
    """fn over the rows of x (..., dim) `rows` at a time, fn mapping (n, dim) -> (n, w): (..., w).
    The same values as fn(x) in one piece (each row's result is its own); at (640k, 32) -> 64 bits,
    2.4x faster on CPU, as the float projections never leave the cache."""
    flat = x.reshape(-1, x.shape[-1])  # (N, dim)
    if flat.shape[0] <= rows:
        out = fn(flat)
    else:
        first = fn(flat[:rows])
        out = torch.empty(flat.shape[0], first.shape[1], dtype=first.dtype, device=first.device)
        out[:rows] = first
        for start in range(rows, flat.shape[0], rows):
            out[start:start + rows] = fn(flat[start:start + rows])
    return out.view(*x.shape[:-1], out.shape[-1])  # (..., w)


def or_bits(b: torch.Tensor) -> torch.Tensor:
    """(..., w) uint8 bits (w <= 8) -> (..., ) uint8 with bit i = b[..., i]: shifts and ors."""
    out = b[..., 0].clone()
    for i in range(1, b.shape[-1]):
        out |= b[..., i] << i
    return out


class SimHash(nn.Module):
    """Fixed random projection R (dim, bits); not trained, saved with the model (seeded).

    With `blocks` > 1, R is block-diagonal: the input splits into `blocks` equal parts (e.g. the
    item and category embeddings) and each part gets its own bits / blocks hyperplanes, so each
    part's bits can be computed, and cached, on its own (`part_halves`)."""

    def __init__(self, dim: int, bits: int, seed: int = 0, blocks: int = 1) -> None:
        super().__init__()
        if dim % blocks or bits % blocks:
            raise ValueError(f"SimHash: dim {dim} and bits {bits} must split into {blocks} blocks")
        g = torch.Generator().manual_seed(seed)
        self.bits, self.blocks = bits, blocks
        R = torch.randn(dim, bits, generator=g)
        db, bb = dim // blocks, bits // blocks
        keep = torch.block_diag(*[torch.ones(db, bb)] * blocks)  # (dim, bits)
        self.register_buffer("R", R * keep)
        weights = 2 ** torch.arange(64, dtype=torch.int64)  # bit j -> 2^j; bit 63 wraps to -2^63
        self.register_buffer("weights", weights)

    def sign_bits(self, x: torch.Tensor) -> torch.Tensor:
        """(..., dim) -> (..., bits) bool: x R > 0."""
        flat = x.detach().reshape(-1, x.shape[-1])  # (N, dim): one 2-D matmul, faster than a batched one on CPU
        return ((flat @ self.R) > 0).view(*x.shape[:-1], self.bits)  # (..., bits)

    def pack(self, bits: torch.Tensor) -> torch.Tensor:
        """(..., n) bool -> (..., ceil(n / 64)) int64 words, bit j of a word = bit 64w + j. Eight
        bits at a time into uint8 bytes, read as int64 words (little-endian byte order);
        `pack_reference` is the plain weighted sum."""
        if sys.byteorder != "little":
            return self.pack_reference(bits)
        n = bits.shape[-1]
        words = -(-n // 64)
        b = torch.nn.functional.pad(bits.to(torch.uint8), (0, words * 64 - n))  # (..., words * 64)
        byte = or_bits(b.view(*bits.shape[:-1], words * 8, 8))  # (..., bytes)
        return byte.contiguous().view(torch.int64)  # (..., words): byte j of a word holds bits 8j..8j+7

    def pack_reference(self, bits: torch.Tensor) -> torch.Tensor:
        """`pack` as the weighted sum of its bits, in int64 (bit 63 wraps to -2^63)."""
        n = bits.shape[-1]
        words = -(-n // 64)
        padded = torch.nn.functional.pad(bits.long(), (0, words * 64 - n))  # (..., words * 64)
        return (padded.view(*bits.shape[:-1], words, 64) * self.weights).sum(-1)  # (..., words)

    def signature(self, x: torch.Tensor, rows: int = CHUNK_ROWS) -> torch.Tensor:
        """(..., dim) -> packed int64 signature (..., words), `rows` rows at a time (`by_chunks`)."""
        return by_chunks(lambda flat: self.pack(self.sign_bits(flat)), x.detach(), rows)

    def part_halves(self, x: torch.Tensor, part: int) -> torch.Tensor:
        """Bits of block `part` from that part's input x (..., dim / blocks), as 16-bit pieces held
        in float32 (exact integers 0..65535): (..., bits / blocks / 16)."""
        db, bb = self.R.shape[0] // self.blocks, self.bits // self.blocks
        bits = (x.detach() @ self.R[part * db:(part + 1) * db, part * bb:(part + 1) * bb]) > 0  # (..., bb)
        pieces = bits.view(*bits.shape[:-1], bb // HALF, HALF).long()  # (..., bb / 16, 16)
        return (pieces * self.weights[:HALF]).sum(-1).float()

    def pack_halves(self, halves: torch.Tensor) -> torch.Tensor:
        """16-bit pieces in bit order (..., n) -> the packed signature (..., ceil(n / 4)) int64, as
        `signature` gives it."""
        h = halves.long()
        n = h.shape[-1]
        h = torch.nn.functional.pad(h, (0, -n % 4)).view(*h.shape[:-1], -1, 4)  # (..., words, 4)
        return h[..., 0] | (h[..., 1] << 16) | (h[..., 2] << 32) | (h[..., 3] << 48)  # bit 63 wraps like pack

    def codes(self, x: torch.Tensor, tau: int) -> torch.Tensor:
        """SDIM: (..., dim) -> (..., bits // tau) bucket ids in [0, 2^tau), tau bits per function:
        bit i of function j's id is sign bit j tau + i. Shifts and ors in uint8 (tau <= 8);
        `codes_reference` is the plain arithmetic."""
        if not 1 <= tau <= 8:
            raise ValueError(f"SimHash codes: tau {tau} must be in [1, 8]")
        fns = self.bits // tau

        def part(flat: torch.Tensor) -> torch.Tensor:
            b = self.sign_bits(flat)[:, :fns * tau].to(torch.uint8)
            return or_bits(b.view(-1, fns, tau)).long()  # (n, m)
        return by_chunks(part, x.detach())  # (..., m)

    def codes_reference(self, x: torch.Tensor, tau: int) -> torch.Tensor:
        """`codes` as plain arithmetic: sum_i bit_i 2^i in int64."""
        b = self.sign_bits(x)
        fns = self.bits // tau
        b = b[..., :fns * tau].reshape(*b.shape[:-1], fns, tau).long()  # (..., m, tau)
        return (b * (2 ** torch.arange(tau, device=b.device))).sum(-1)  # (..., m)


def hamming(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Hamming distance of packed signatures a (..., W), b (..., W) (broadcast) -> (...): the
    word-parallel (SWAR) popcount of the xor, in int64 arithmetic (the arithmetic shifts of
    negative words are masked off); `hamming_reference` counts bits by a per-byte table."""
    x = torch.bitwise_xor(a, b)
    x = x - ((x >> 1) & 0x5555555555555555)  # 2-bit counts
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)  # 4-bit counts
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F  # 8-bit counts
    return (((x * 0x0101010101010101) >> 56) & 0xFF).sum(-1)  # the byte sums gather in the top byte


def hamming_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`hamming` by a popcount table over the xor's bytes."""
    x = torch.bitwise_xor(a, b).contiguous()
    per_byte = _POPCOUNT.to(x.device)[x.view(torch.uint8).long()]  # (..., W * 8)
    return per_byte.sum(-1)


class SimHashGSU(GSU):
    """query: packed signature (B, W); candidates: packed signatures (B, L, W). Score = -Hamming."""

    def score(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return -hamming(query.unsqueeze(1), candidates).float()  # (B, L)
