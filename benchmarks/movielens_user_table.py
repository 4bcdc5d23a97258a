"""MovieLens, one process: each model with and without the user-id table in its head.

Reads (or builds, through Ray Data) the MovieLens samples of `configs/movielens.yaml` at the given
max_len, trains one epoch per variant unsharded (`trainers/local.py`) and prints a table. Usage:

    .venv/bin/python benchmarks/movielens_user_table.py [--models din,sim_hard] [--max-len 64]
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pyarrow.parquet as pq

from lifelong.cluster.connect import connect
from lifelong.embeddings.spec import FeatureSpec
from lifelong.jobs.config import load_run_file
from lifelong.jobs.prepare import prepare
from lifelong.models import entry
from lifelong.models.two_stage import TwoStage
from lifelong.trainers.config import JobSpec, TrainConfig
from lifelong.trainers.local import fit_local


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="din,sim_hard")
    p.add_argument("--max-len", type=int, default=64)
    p.add_argument("--short-len", type=int, default=20)
    a = p.parse_args()
    run = load_run_file("configs/movielens.yaml")
    run = replace(run, samples=replace(run.samples, max_len=a.max_len, short_len=a.short_len))
    connect(run.cluster)
    samples_dir, meta, _ = prepare(run)
    train, valid = pq.read_table(samples_dir / "train"), pq.read_table(samples_dir / "valid")
    print(f"MovieLens latest-small (real): {train.num_rows} train / {valid.num_rows} valid samples, "
          f"L={a.max_len}, S={a.short_len}, 1 epoch, batch 256, seed 0, one process\n")
    print("| model | user table | valid AUC | GAUC | logloss | wall s |\n|---|---|---|---|---|---|")
    for model in a.models.split(","):
        cfg = {"k": 50} if issubclass(entry(model).module, TwoStage) else {}
        for users in (0, meta.n_users):
            job = JobSpec(model, cfg, FeatureSpec(meta.n_items, meta.n_categories, run.embedding_dim, users),
                          run.samples, TrainConfig(epochs=1, batch_size=256, seed=0, diagnostic_batches=0))
            t = time.perf_counter()
            _, h = fit_local(job, train, valid)
            m = h[-1]
            print(f"| {model} | {'yes' if users else 'no'} | {m['valid_auc']:.4f} | {m['valid_gauc']:.4f} | "
                  f"{m['valid_logloss']:.4f} | {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
