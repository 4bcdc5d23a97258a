"""What a second CPU worker costs, measured without Ray (issue 17's bar: two workers >= 1.6x one).

    .venv/bin/python benchmarks/scaling_costs.py                      # both tables
    .venv/bin/python benchmarks/scaling_costs.py --only exchange --payloads-mb 0,0.38,0.76,1.5

1. **Contention.** `make run`'s training step (its run file's defaults: SIM-hard on MovieLens,
   batch 256, DMP over a one-rank gloo group, one thread, the trainer's optimisers and malloc
   settings) on pre-collated batches, in one process bound to core 0, then in two processes bound
   to cores 0 and 1 at the same time (no gradient exchange between them), alternated `--rounds`
   times. Each cell: ms of wall and of the training thread's CPU per step, the median of the
   process's passes over the batches. If the two cores shared something scarce (memory bandwidth,
   a cache), a pair's steps would cost more CPU than one alone's.
2. **Exchange.** Two gloo ranks, one bound to each core; every step `--busy-ms` of matrix products
   (a step's compute, so the ranks arrive with a real skew), then the mean of a payload over the
   ranks by each of the trainer's DDP hooks for CPU ranks: `comm.NodeExchange` (shared memory, the
   one used when the ranks share a host) and `comm.exchange_mean` (one gloo all-to-all), with the
   trainers' malloc settings. Each cell, per exchange and payload over `--steps` steps (the first 5
   left out): ms of wall per exchange (median and mean: a few slow exchanges pull the mean up), of
   the calling thread's CPU and of the whole process's (gloo's threads too), both means.
   The job's bucket is 0.76 MB (sim_hard on MovieLens, 80 % of it the item table).

Prints two Markdown tables. Pair this with `benchmarks/cpu_by_thread.py` beside a running job.
"""
from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import statistics
import time

import torch
import torch.distributed as dist

PORT = 29_650


def _bind(core: int) -> None:
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)


def _group(rank: int, world: int, port: int) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)


def job_batches(n: int) -> tuple:
    """`make run`'s job spec and its first `n` training batches (shuffled order, collated)."""
    import pyarrow as pa

    from lifelong.data.samples import build_local
    from lifelong.jobs.config import run_file
    from lifelong.jobs.prepare import load_log
    from lifelong.jobs.train import job_spec
    from lifelong.trainers.local import batches

    run = run_file({})
    table, meta, _ = load_log(run)
    samples = build_local(table, run.samples)
    train = samples.filter(pa.array(samples.column("split").to_numpy() == 0)).drop_columns(["split"])
    job = job_spec(run, meta)
    return job, [b for _, b in zip(range(n), batches(train, job, job.train.batch_size, job.train.seed))]


def _steps(core: int, job, batches: list, passes: int, start: mp.Barrier, out: mp.Queue) -> None:
    """One training process on `core`: warm up, wait for the others, time `passes` passes."""
    from lifelong.models.base import loss as ctr_loss
    from lifelong.trainers.allocator import keep_freed_memory
    from lifelong.trainers.model_setup import sharded_model

    keep_freed_memory()  # as the trainers do
    _bind(core)
    _group(0, 1, PORT + 1 + core)
    torch.manual_seed(job.train.seed)
    model, opt, _ = sharded_model(job, torch.device("cpu"), dist.group.WORLD)

    def step(b) -> None:
        loss = ctr_loss(b, model(b))
        opt.zero_grad()
        loss.backward()
        opt.step()

    for b in batches[:10]:
        step(b)
    start.wait()
    wall, cpu = [], []
    for _ in range(passes):
        t, c = time.perf_counter(), time.thread_time()
        for b in batches:
            step(b)
        wall.append(1e3 * (time.perf_counter() - t) / len(batches))
        cpu.append(1e3 * (time.thread_time() - c) / len(batches))
    out.put((core, statistics.median(wall), statistics.median(cpu)))
    dist.destroy_process_group()


def contention(rounds: int, n_batches: int, passes: int) -> list[tuple]:
    """(round, processes, core, wall ms, CPU ms) per process, one alone then two at once per round."""
    job, batches = job_batches(n_batches)
    ctx = mp.get_context("fork")  # the children share the parent's batches
    rows = []
    for r in range(rounds):
        for cores in ((0,), (0, 1)):
            start, out = ctx.Barrier(len(cores)), ctx.Queue()
            procs = [ctx.Process(target=_steps, args=(c, job, batches, passes, start, out)) for c in cores]
            for p in procs:
                p.start()
            got = sorted(out.get() for _ in procs)
            for p in procs:
                p.join()
            rows += [(r, len(cores), *g) for g in got]
    return rows


def _exchange(rank: int, payloads: list[int], busy_ms: float, steps: int, out: mp.Queue) -> None:
    from lifelong.trainers.allocator import keep_freed_memory
    from lifelong.trainers.comm import NodeExchange, exchange_mean

    keep_freed_memory()  # as the trainers do: without it each exchange's buffers fault their pages in anew
    _bind(rank)
    _group(rank, 2, PORT)
    node = NodeExchange.open(dist.group.WORLD)
    ways = {"shared memory": node.mean_, "all-to-all": lambda b: exchange_mean(dist.group.WORLD, b).wait()}
    a = torch.randn(128, 128)
    for n in payloads:
        for way, mean in ways.items():
            buf = torch.randn(n)
            walls, cpu, pcpu = [], 0.0, 0.0
            for s in range(steps + 5):
                t = time.perf_counter()
                while (time.perf_counter() - t) * 1e3 < busy_ms:
                    a @ a
                t, c, pc = time.perf_counter(), time.thread_time(), time.process_time()
                mean(buf)
                if s >= 5:
                    walls.append(1e3 * (time.perf_counter() - t))
                    cpu += time.thread_time() - c
                    pcpu += time.process_time() - pc
            out.put((n, way, rank, statistics.median(walls), statistics.mean(walls), 1e3 * cpu / steps,
                     1e3 * pcpu / steps))
    node.close()
    dist.destroy_process_group()


def exchange(payloads_mb: list[float], busy_ms: float, steps: int) -> list[tuple]:
    """(floats, exchange, rank, median wall ms, mean wall ms, mean thread CPU ms, mean process CPU ms)
    per payload, exchange and rank."""
    sizes = [max(1, int(mb * 1e6 / 4)) for mb in payloads_mb]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_exchange, args=(r, sizes, busy_ms, steps, out)) for r in range(2)]
    for p in procs:
        p.start()
    rows = sorted(out.get() for _ in range(4 * len(sizes)))
    for p in procs:
        p.join()
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("contention", "exchange"), help="one table (default: both)")
    ap.add_argument("--rounds", type=int, default=2, help="contention: rounds of (one alone, two at once)")
    ap.add_argument("--batches", type=int, default=60, help="contention: batches per pass")
    ap.add_argument("--passes", type=int, default=4, help="contention: timed passes per process")
    ap.add_argument("--payloads-mb", default="0,0.19,0.38,0.76", help="exchange: payloads, MB (0: 4 bytes)")
    ap.add_argument("--busy-ms", type=float, default=30.0, help="exchange: compute per step before it")
    ap.add_argument("--steps", type=int, default=100, help="exchange: timed steps per payload")
    a = ap.parse_args()
    if len(os.sched_getaffinity(0)) < 2:
        raise SystemExit("needs two cores")
    if a.only in (None, "contention"):
        print("| round | processes | core | wall ms / step | thread CPU ms / step |\n|---|---|---|---|---|")
        for r, n, core, wall, cpu in contention(a.rounds, a.batches, a.passes):
            print(f"| {r} | {n} | {core} | {wall:.2f} | {cpu:.2f} |", flush=True)
        print()
    if a.only in (None, "exchange"):
        print("| payload MB | exchange | rank | wall ms / exchange, median | mean | calling thread CPU ms | "
              "process CPU ms |\n|---|---|---|---|---|---|---|")
        for n, way, rank, median, mean, cpu, pcpu in exchange([float(x) for x in a.payloads_mb.split(",")],
                                                              a.busy_ms, a.steps):
            print(f"| {4 * n / 1e6:.2f} | {way} | {rank} | {median:.2f} | {mean:.2f} | {cpu:.2f} | {pcpu:.2f} |")


if __name__ == "__main__":
    main()
