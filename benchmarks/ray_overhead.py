"""Fixed costs of a Ray Train run and of a Ray Data epoch on this machine (issue 18): how long a
`ray.train.report` waits for the controller's poll, and what the Parquet reader and a global
shuffle add to every pass over a sample split.

    .venv/bin/python benchmarks/ray_overhead.py                      # MovieLens, the `make run` samples
    .venv/bin/python benchmarks/ray_overhead.py --reps 3 --reports 6

Prints two markdown tables. Reports: 2 Ray Train workers whose loop only calls `ray.train.report`
`--reports` times, at Ray's default poll interval (2 s) and at lifelong's `cluster.poll_s` (0.5 s):
the wall time of `fit()`, the loop's own time on rank 0 (the reports' waits) and the time from the
loop's end to `fit()` returning. Reads: one pass over the train split, `streaming_split(2)` consumed
by two threads as two workers would, per reader (`train.parquet_reader`) with and without Ray Data's
seeded `random_shuffle` (what `train.shuffle: global` cost each epoch until the train split was
written shuffled at build time); the time to the first batch and to the end.
Every cell is the median of `--reps` runs. Writes nothing but the sample cache under --output-dir.
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from pathlib import Path

import ray
import ray.data
import ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer

from lifelong.cluster.connect import ClusterConfig, connect, controller_env
from lifelong.jobs.config import run_file
from lifelong.jobs.prepare import prepare
from lifelong.trainers.trainer import read_samples


def _report_loop(config: dict) -> None:
    t0 = time.perf_counter()
    for i in range(config["reports"]):
        ray.train.report({"i": i})
    if ray.train.get_context().get_world_rank() == 0:
        Path(config["marks"]).write_text(f"{time.perf_counter() - t0} {time.time()}")


def reports(poll_s: float, n: int, storage: Path) -> dict:
    """fit() wall, the loop's time (rank 0) and loop end -> fit() return, in seconds."""
    controller_env(ClusterConfig(poll_s=poll_s))
    marks = storage / "marks.txt"
    t0 = time.perf_counter()
    TorchTrainer(_report_loop, train_loop_config={"reports": n, "marks": str(marks)},
                 scaling_config=ScalingConfig(num_workers=2),
                 run_config=RunConfig(name=f"poll{poll_s}", storage_path=str(storage))).fit()
    wall, returned = time.perf_counter() - t0, time.time()
    loop_s, loop_end = (float(x) for x in marks.read_text().split())
    return {"fit_s": wall, "loop_s": loop_s, "tail_s": returned - loop_end}


def one_pass(ds: ray.data.Dataset, batch_size: int) -> dict:
    """Seconds to the first batch (the slower worker) and to the end of the pass."""
    firsts: list[float] = []
    t0 = time.perf_counter()

    def consume(it) -> None:
        for i, _ in enumerate(it.iter_batches(batch_size=batch_size, batch_format="pyarrow")):
            if i == 0:
                firsts.append(time.perf_counter() - t0)

    threads = [threading.Thread(target=consume, args=(it,)) for it in ds.streaming_split(2, equal=True)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    return {"first_s": max(firsts), "pass_s": time.perf_counter() - t0}


def med(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--output-dir", default="runs")
    p.add_argument("--reps", type=int, default=2)
    p.add_argument("--reports", type=int, default=6)
    args = p.parse_args()
    run = run_file({"name": "overhead", "output_dir": args.output_dir, "model": "sim_hard"})  # `make run`'s data
    connect(run.cluster)
    ray.data.DataContext.get_current().enable_progress_bars = False
    samples_dir, _, report = prepare(run)
    print(f"**Reports: 2 workers, {args.reports} `ray.train.report` calls, median of {args.reps}**\n")
    print("| poll interval s | fit() s | the loop's reports s | loop end -> fit() returns s |")
    print("|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for poll in (2.0, 0.5):
            rows = [reports(poll, args.reports, Path(tmp)) for _ in range(args.reps)]
            print(f"| {poll:g} | {med(rows, 'fit_s'):.1f} | {med(rows, 'loop_s'):.1f} | {med(rows, 'tail_s'):.1f} |")
    n = report["samples"]["train"]
    print(f"\n**Reads: one pass over MovieLens train ({n:,} samples, L = {run.samples.max_len}, copy layout), "
          f"2 consumers, batch {run.train.batch_size}, median of {args.reps}**\n")
    print("| parquet_reader | read | first batch s | whole pass s |")
    print("|---|---|---|---|")
    for reader in ("tasks", "footer_actors"):
        for shuffle in ("as written", "random_shuffle"):
            rows = []
            for _ in range(args.reps):
                ds = read_samples(samples_dir / "train", reader)
                ds = ds.random_shuffle(seed=0) if shuffle == "random_shuffle" else ds
                rows.append(one_pass(ds, run.train.batch_size))
            print(f"| {reader} | {shuffle} | {med(rows, 'first_s'):.1f} | {med(rows, 'pass_s'):.1f} |")


if __name__ == "__main__":
    main()
