"""The gradient exchange through shared memory (`comm.NodeExchange`) against gloo's all-reduce."""
from __future__ import annotations

import os
import random
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist

from tests.helpers import start_ranks

SHM = Path("/dev/shm") if os.access("/dev/shm", os.W_OK) else Path("/tmp")


def _leftovers() -> set[str]:
    return {p.name for p in SHM.glob("lifelong-exchange-*")}


def _rounds_worker(rank, world, init_file, out):
    from lifelong.trainers import comm

    comm.CHUNK = 1000  # small rounds: a 2,500-float buffer takes three
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    ex = comm.NodeExchange.open(dist.group.WORLD, timeout_s=60)
    assert ex is not None
    gen, skew = torch.Generator().manual_seed(rank), random.Random(rank)
    got, want = [], []
    for n in (2500, 1, 999, 1000, 1001, 2500, 7) * 3:
        mine = torch.randn(n, generator=gen)
        if skew.random() < 0.3:
            time.sleep(skew.random() / 50)  # one rank a round ahead of another now and then
        everyone = [torch.empty(n) for _ in range(world)]
        dist.all_gather(everyone, mine)
        want.append(torch.stack(everyone).sum(0) / world)  # (W, n) -> (n,) in rank order
        got.append(ex.mean_(mine.clone()))
    ex.close()
    torch.save((got, want), f"{out}.{rank}")
    dist.destroy_process_group()


def test_node_exchange_averages_in_rounds_alike_on_every_rank_and_leaves_no_files():
    """Three ranks, buffers shorter and longer than a round's chunk, ranks skewed: every rank gets
    the rank-order mean, bit for bit the same on each; the shared files are gone once opened."""
    world, before = 3, _leftovers()
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "x")
        start_ranks(_rounds_worker, (world, os.path.join(tmp, "pg"), out), world)
        results = [torch.load(f"{out}.{r}", weights_only=True) for r in range(world)]
    assert _leftovers() == before
    for got, want in results:
        assert len(got) == len(want) == 21
        for g, w in zip(got, want):
            torch.testing.assert_close(g, w, rtol=1e-6, atol=1e-7)
    for r in range(1, world):
        assert all(torch.equal(a, b) for a, b in zip(results[0][0], results[r][0]))


def _verdict(ex, out: str, error: type[Exception]) -> None:
    """Into `out`: "returned", or the seconds an exchange took to raise `error`, then its message."""
    t = time.monotonic()
    try:
        ex.mean_(torch.ones(10))
        Path(out).write_text("returned")
    except error as e:
        Path(out).write_text(f"{time.monotonic() - t:.2f} {e}")


def _timeout_worker(rank, init_file, out):
    from lifelong.trainers.comm import NodeExchange

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ex = NodeExchange.open(dist.group.WORLD, timeout_s=0.5)
    if rank == 0:
        _verdict(ex, out, TimeoutError)
    dist.barrier()  # rank 1 never exchanged: it waits here for rank 0's verdict
    dist.destroy_process_group()


def test_a_silent_peer_times_the_exchange_out_naming_the_round():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "verdict")
        start_ranks(_timeout_worker, (os.path.join(tmp, "pg"), out), 2)
        waited, message = Path(out).read_text().split(" ", 1)
    assert 0.5 <= float(waited) < 5, waited
    assert "rank 0: 1 of 1 peer(s) did not reach gradient exchange round 1 in 0.5 s" in message


def _exit_worker(rank, init_file, out):
    from lifelong.trainers.comm import NodeExchange

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    ex = NodeExchange.open(dist.group.WORLD, timeout_s=60)
    if rank == 1:
        os._exit(0)  # gone without a word
    _verdict(ex, out, RuntimeError)


def test_a_peer_that_exited_fails_the_exchange_within_seconds_naming_it():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "verdict")
        start_ranks(_exit_worker, (os.path.join(tmp, "pg"), out), 2)
        waited, message = Path(out).read_text().split(" ", 1)
    assert float(waited) < 5, waited
    assert message.startswith("rank 0: rank 1 (pid ") and "exited before gradient exchange round 1" in message


def _hosts_worker(rank, init_file, out):
    from lifelong.trainers import comm

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    comm.host_id = lambda: f"host-{rank}"  # as if each rank ran on a host of its own
    net = torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(3, 1))
    Path(f"{out}.{rank}").write_text(str(comm.use_exchange(net, dist.group.WORLD)))
    dist.destroy_process_group()


def test_ranks_on_different_hosts_use_the_all_to_all():
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "kind")
        start_ranks(_hosts_worker, (os.path.join(tmp, "pg"), out), 2)
        kinds = [Path(f"{out}.{r}").read_text() for r in range(2)]
    assert kinds == ["all-to-all", "all-to-all"]
