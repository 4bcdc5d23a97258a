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


GATHER = 0x0102040810204080  # sum of 2^(56 - 7 j), j = 0..7


def gather_byte(eights: torch.Tensor) -> torch.Tensor:
    """int64 words whose 8 little-endian bytes are each 0 or 1 -> uint8 with bit i = byte i. The
    product with GATHER puts byte i's bit at 8 i + 56 - 7 j for each j: at bit 56 + i for j = i,
    above bit 63 (dropped) for j < i, and for j > i at distinct bits below 56, so nothing carries."""
    return ((eights * GATHER) >> 56).to(torch.uint8)


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
        """(..., dim) -> (..., bits) bool: x R > 0, one matmul per diagonal block of R (half the
        multiply-adds at two blocks; the block products are what `part_halves` caches);
        `sign_bits_reference` multiplies by all of R and compares into bool.
        The comparison runs in place in float32 (1.0 / 0.0) and is then cast: ATen's CPU compare
        into bool is ~4x slower than the two passes together."""
        flat = x.detach().reshape(-1, x.shape[-1])  # (N, dim): 2-D matmuls, faster than batched ones on CPU
        db, bb = self.R.shape[0] // self.blocks, self.bits // self.blocks
        out = torch.empty(flat.shape[0], self.bits, dtype=torch.bool, device=flat.device)  # (N, bits)
        for p in range(self.blocks):
            block = self.R[p * db:(p + 1) * db, p * bb:(p + 1) * bb]  # (dim / blocks, bits / blocks)
            out[:, p * bb:(p + 1) * bb].copy_((flat[:, p * db:(p + 1) * db] @ block).gt_(0))
        return out.view(*x.shape[:-1], self.bits)  # (..., bits)

    def sign_bits_reference(self, x: torch.Tensor) -> torch.Tensor:
        """`sign_bits` as one product with the whole R: (..., dim) -> (..., bits) bool."""
        return x.detach() @ self.R > 0

    def pack(self, bits: torch.Tensor) -> torch.Tensor:
        """(..., n) bool -> (..., ceil(n / 64)) int64 words, bit j of a word = bit 64w + j. Each 8
        bools (bytes of 0 or 1) read as one int64 and gathered into its top byte by one multiply
        (`gather_byte`), the bytes read as int64 words (little-endian byte order);
        `pack_reference` is the plain weighted sum."""
        if sys.byteorder != "little":
            return self.pack_reference(bits)
        n = bits.shape[-1]
        words = -(-n // 64)
        b = bits.contiguous() if n == words * 64 else torch.nn.functional.pad(bits, (0, words * 64 - n))
        eights = b.view(torch.uint8).view(*bits.shape[:-1], words * 8, 8).view(torch.int64)  # (..., bytes, 1)
        byte = gather_byte(eights.squeeze(-1))  # (..., bytes) uint8
        return byte.view(torch.int64)  # (..., words): byte j of a word holds bits 8j..8j+7

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
    negative words are masked off), in place; `hamming_reference` counts bits by a per-byte table."""
    x = torch.bitwise_xor(a, b)
    y = torch.empty_like(x)  # in place from here: two buffers, not one per step
    torch.bitwise_right_shift(x, 1, out=y).bitwise_and_(0x5555555555555555)
    x -= y  # 2-bit counts
    torch.bitwise_right_shift(x, 2, out=y).bitwise_and_(0x3333333333333333)
    x.bitwise_and_(0x3333333333333333).add_(y)  # 4-bit counts
    x.add_(torch.bitwise_right_shift(x, 4, out=y)).bitwise_and_(0x0F0F0F0F0F0F0F0F)  # 8-bit counts
    x.mul_(0x0101010101010101).bitwise_right_shift_(56)  # the byte sums gather in the top byte (<= 64: sign clear)
    return x.sum(-1)


def hamming_reference(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """`hamming` by a popcount table over the xor's bytes."""
    x = torch.bitwise_xor(a, b).contiguous()
    per_byte = _POPCOUNT.to(x.device)[x.view(torch.uint8).long()]  # (..., W * 8)
    return per_byte.sum(-1)


class SimHashGSU(GSU):
    """query: packed signature (B, W); candidates: packed signatures (B, L, W). Score = -Hamming."""

    def score(self, query: torch.Tensor, candidates: torch.Tensor) -> torch.Tensor:
        return hamming(query.unsqueeze(1), candidates).float().neg_()  # (B, L)
