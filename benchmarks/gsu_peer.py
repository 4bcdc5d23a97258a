"""Lifelong-sequence operators, ours beside FuxiCTR's, on the same tensors and hyperplanes:
forward + backward time per batch on one CPU thread, and whether the outputs agree (issue 17;
the whole-pipeline peer table is `peers.py`).

    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install torch==2.13.0 fuxictr==2.3.10
    .venv/bin/python benchmarks/gsu_peer.py --peer-python /tmp/peers-venv/bin/python \
        --lens 256,1000 --sdim 2x4,48x3 --eta 32x50,64x100

`sdim` (setting m x τ: hash functions x bits): the mean over functions of the L2-normalised sum
of the behaviours that collide with the target. Ours: `SimHash.codes` + the `gather` form
(`lifelong/models/sdim.py`); FuxiCTR's `SDIM.lsh_attentioin` with `l2_norm` on (it normalises
per function as the paper and we do): `lsh_hash` (argmax over ±rotations) + `F.embedding_bag`
over the colliding positions. Agreement: the largest absolute difference of the outputs.

`eta` (setting bits x k): ETA's retrieval, the k behaviours nearest the target in Hamming
distance of their SimHash signatures, gathered (the ESU then reads them; backward through the
gather). Ours: `SimHash.signature` (packed int64) + `SimHashGSU` (byte-popcount Hamming,
`masked_topk`, ties to the most recent) + `gather_rows`; FuxiCTR's `ETA.topk_retrieval`: float
sign codes, L1 distance, `topk`. Ties may pick different behaviours, so agreement is whether the
sorted distances of the selected behaviours are equal in every row.

Both sides read FuxiCTR's (d, ·, ·) rotations as our SimHash's R, from
`../shared/peers/fuxictr-longctr` (Apache-2.0) run in the peer's own venv. Prints one Markdown
table of milliseconds per batch (median of --reps).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import torch

PEERS = Path(__file__).resolve().parents[1].parent / "shared" / "peers" / "fuxictr-longctr"


def inputs(B: int, L: int, d: int, *planes: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Behaviours (B, L, d), target (B, d), mask (B, L), hyperplanes (d, *planes): the same on both sides."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(B, L, d, generator=g)
    target = torch.randn(B, d, generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
    return seq, target, mask, torch.randn(d, *planes, generator=g)


def timed(fn, reps: int) -> float:
    """Median milliseconds of fn() over reps, after one warm-up call."""
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(out)


def ours_sdim(B: int, L: int, d: int, m: int, tau: int, reps: int) -> tuple[float, torch.Tensor]:
    from lifelong.models.gsu.simhash import SimHash
    from lifelong.models.sdim import collision_gather

    seq, target, mask, rotations = inputs(B, L, d, m, tau)
    h = SimHash(d, m * tau, seed=0)
    h.R.copy_(rotations.reshape(d, m * tau))  # function j's bits are j τ .. j τ + τ - 1 on both sides
    seq.requires_grad_(True)

    def step() -> torch.Tensor:
        per_fn = collision_gather(h.codes(target, tau), h.codes(seq, tau), seq, mask)  # (B, m, d)
        out = torch.nn.functional.normalize(per_fn, dim=-1).mean(1)  # (B, d)
        out.sum().backward()
        return out.detach()
    return timed(step, reps), step()


def theirs_sdim(B: int, L: int, d: int, m: int, tau: int, reps: int) -> tuple[float, torch.Tensor]:
    sys.path.insert(0, str(PEERS))
    from SDIM.SDIM import SDIM  # FuxiCTR's LongCTR zoo

    me = SimpleNamespace(reuse_hash=True, num_hashes=m, hash_bits=tau, l2_norm=True,
                         powers_of_two=torch.tensor([2.0 ** i for i in range(tau)]))
    me.lsh_hash = lambda vecs, rot: SDIM.lsh_hash(me, vecs, rot)
    seq, target, mask, rotations = inputs(B, L, d, m, tau)
    rotations = rotations.unsqueeze(0)  # (1, d, m, τ)
    seq.requires_grad_(True)

    def step() -> torch.Tensor:
        out = SDIM.lsh_attentioin(me, rotations, target, seq, mask.float())  # (B, d)
        out.sum().backward()
        return out.detach()
    return timed(step, reps), step()


def ours_eta(B: int, L: int, d: int, bits: int, k: int, reps: int) -> tuple[float, torch.Tensor]:
    from lifelong.models.gsu.base import gather_rows
    from lifelong.models.gsu.simhash import SimHash, SimHashGSU, hamming

    seq, target, mask, rotations = inputs(B, L, d, bits)
    h = SimHash(d, bits, seed=0)
    h.R.copy_(rotations)
    gsu = SimHashGSU(k)
    seq.requires_grad_(True)

    def step() -> torch.Tensor:
        q, keys = h.signature(target), h.signature(seq)  # (B, W), (B, L, W)
        idx, scores = gsu(q, keys, mask)  # (B, k)
        gather_rows(seq, idx).sum().backward()
        return -scores  # the selected distances
    ms = timed(step, reps)
    dist = hamming(h.signature(target).unsqueeze(1), h.signature(seq)).float()  # (B, L)
    chosen = dist.gather(1, gsu(h.signature(target), h.signature(seq), mask)[0])
    valid = gsu(h.signature(target), h.signature(seq), mask)[1] > float("-inf")
    return ms, torch.where(valid, chosen, torch.full_like(chosen, float("inf"))).sort(1).values


def theirs_eta(B: int, L: int, d: int, bits: int, k: int, reps: int) -> tuple[float, torch.Tensor]:
    sys.path.insert(0, str(PEERS))
    from ETA.ETA import ETA  # FuxiCTR's LongCTR zoo

    me = SimpleNamespace(reuse_hash=True, hash_bits=bits)
    me.lsh_hash = lambda vecs, rot: ETA.lsh_hash(me, vecs, rot)
    seq, target, mask, rotations = inputs(B, L, d, bits)
    rotations = rotations.unsqueeze(0)  # (1, d, bits)
    seq.requires_grad_(True)

    def step() -> None:
        emb, _ = ETA.topk_retrieval(me, rotations, target, seq, mask.float(), k)
        emb.sum().backward()
    ms = timed(step, reps)
    with torch.no_grad():
        dist = (me.lsh_hash(seq, rotations) - me.lsh_hash(target.unsqueeze(1), rotations)).abs().sum(-1)  # (B, L)
        dist = dist.masked_fill(~mask, float("inf"))
        chosen = dist.topk(min(k, L), dim=1, largest=False).values  # (B, k), padding last as inf
    return ms, chosen.sort(1).values


OPS = {"sdim": (ours_sdim, theirs_sdim), "eta": (ours_eta, theirs_eta)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-python", default="/tmp/peers-venv/bin/python")
    p.add_argument("--lens", default="256,1000")
    p.add_argument("--sdim", default="2x4,48x3", help="SDIM settings m x τ: hash functions x bits per function")
    p.add_argument("--eta", default="32x50,64x100", help="ETA settings bits x k (FuxiCTR's default 32 x 50)")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=32, help="behaviour width (item + category embeddings)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # the peer side: "op,B,L,d,a,b,reps,out.pt"
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.worker:
        op, *dims, path = a.worker.split(",")
        ms, out = OPS[op][1](*(int(x) for x in dims))
        torch.save(out, path)
        print(json.dumps(ms))
        return
    print(f"Operators, forward + backward, batch {a.batch}, d {a.dim}, 1 CPU thread, median of {a.reps}; "
          f"ms per batch\n")
    print("| op | L | setting | ours ms | FuxiCTR ms | FuxiCTR / ours | agreement |\n|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for L in (int(x) for x in a.lens.split(",")):
            for op in OPS:
                for setting in (x for x in getattr(a, op).split(",") if x):
                    x, y = (int(v) for v in setting.split("x"))
                    mine, mine_out = OPS[op][0](a.batch, L, a.dim, x, y, a.reps)
                    path = Path(tmp) / f"peer-{op}-{L}-{setting}.pt"
                    args = f"{op},{a.batch},{L},{a.dim},{x},{y},{a.reps},{path}"
                    run = subprocess.run([a.peer_python, __file__, "--worker", args], capture_output=True, text=True)
                    if run.returncode:
                        raise SystemExit(f"peer run failed ({a.peer_python}): "
                                         f"{run.stderr.strip().splitlines()[-1]}")
                    peer, theirs_out = json.loads(run.stdout.strip().splitlines()[-1]), torch.load(path)
                    if op == "sdim":
                        agree = f"max diff {(theirs_out - mine_out).abs().max().item():.1e}"
                    else:
                        agree = f"{(theirs_out == mine_out).all(1).float().mean().item():.0%} rows equal"
                    print(f"| {op} | {L:,} | {x} x {y} | {mine:.1f} | {peer:.1f} | {peer / mine:.2f} | {agree} |",
                          flush=True)

if __name__ == "__main__":
    main()
