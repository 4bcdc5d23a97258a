"""SDIM's long-interest operator, ours beside FuxiCTR's, on the same tensors: forward + backward
time per batch on one CPU thread (issue 17; the whole-pipeline peer table needs `peers.py`, not
built yet).

    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install torch==2.13.0 fuxictr==2.3.10
    .venv/bin/python benchmarks/sdim_peer.py --peer-python /tmp/peers-venv/bin/python \
        --lens 256,1000 --settings 2x4,48x3

Both sides get the same behaviour embeddings (B, L, d), target (B, d), padding mask and hash
settings (m functions x τ bits), and compute the mean over functions of the L2-normalised sum of
the behaviours that collide with the target (FuxiCTR's `SDIM.lsh_attentioin` with `l2_norm` on,
which normalises per function as the paper and we do). Ours: `SimHash.codes` + the `gather` form
(`lifelong/models/sdim.py`); theirs: `lsh_hash` (argmax over ±rotations) + `F.embedding_bag` over
the colliding positions, from `../shared/peers/fuxictr-longctr` (Apache-2.0) run in the peer's
own venv. Both use the same hyperplanes (FuxiCTR's (d, m, τ) rotations are our SimHash's R), so
the outputs must agree: the table gives their largest difference. Prints one Markdown table of
milliseconds per batch (median of --reps).
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


def inputs(B: int, L: int, d: int, m: int, tau: int, seed: int = 0) -> tuple[torch.Tensor, ...]:
    """Behaviours (B, L, d), target (B, d), mask (B, L), hyperplanes (d, m, τ): the same on both sides."""
    g = torch.Generator().manual_seed(seed)
    seq = torch.randn(B, L, d, generator=g)
    target = torch.randn(B, d, generator=g)
    lengths = torch.randint(1, L + 1, (B,), generator=g)
    mask = torch.arange(L).unsqueeze(0) < lengths.unsqueeze(1)  # (B, L)
    return seq, target, mask, torch.randn(d, m, tau, generator=g)


def timed(fn, reps: int) -> float:
    """Median milliseconds of fn() over reps, after one warm-up call."""
    fn()
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(1e3 * (time.perf_counter() - t))
    return statistics.median(out)


def ours(B: int, L: int, d: int, m: int, tau: int, reps: int) -> tuple[float, torch.Tensor]:
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


def theirs(B: int, L: int, d: int, m: int, tau: int, reps: int) -> tuple[float, torch.Tensor]:
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--peer-python", default="/tmp/peers-venv/bin/python")
    p.add_argument("--lens", default="256,1000")
    p.add_argument("--settings", default="2x4,48x3", help="m x τ: hash functions x bits per function")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--dim", type=int, default=32, help="behaviour width (item + category embeddings)")
    p.add_argument("--reps", type=int, default=7)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # the peer side: "B,L,d,m,tau,reps"
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.worker:  # "B,L,d,m,tau,reps,out.pt"
        *dims, path = a.worker.split(",")
        ms, out = theirs(*(int(x) for x in dims))
        torch.save(out, path)
        print(json.dumps(ms))
        return
    print(f"SDIM long-interest operator, forward + backward, batch {a.batch}, d {a.dim}, 1 CPU thread, "
          f"median of {a.reps}; ms per batch\n")
    print("| L | m x τ | ours ms | FuxiCTR ms | FuxiCTR / ours | max abs difference |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for L in (int(x) for x in a.lens.split(",")):
            for setting in a.settings.split(","):
                m, tau = (int(x) for x in setting.split("x"))
                mine, mine_out = ours(a.batch, L, a.dim, m, tau, a.reps)
                path = Path(tmp) / f"peer-{L}-{m}x{tau}.pt"
                args = f"{a.batch},{L},{a.dim},{m},{tau},{a.reps},{path}"
                run = subprocess.run([a.peer_python, __file__, "--worker", args], capture_output=True, text=True)
                if run.returncode:
                    raise SystemExit(f"peer run failed ({a.peer_python}): {run.stderr.strip().splitlines()[-1]}")
                peer = json.loads(run.stdout.strip().splitlines()[-1])
                diff = (torch.load(path) - mine_out).abs().max().item()
                print(f"| {L:,} | {m} x {tau} | {mine:.1f} | {peer:.1f} | {peer / mine:.2f} | {diff:.1e} |", flush=True)


if __name__ == "__main__":
    main()
