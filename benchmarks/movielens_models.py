"""MovieLens latest-small (real): models beside logistic regression and popularity on the same
samples, with the same epoch budget and every choice made on valid; test read once per run.

Samples come from `configs/movielens.yaml` (click = rating >= 4, split by time), built once through
Ray Data and cached. `--history liked` keeps only liked movies in the histories
(`samples.history_behaviors: [1]`; the MovieLens loader's `behavior` is the liked flag, every
history event strictly before its sample), `all` keeps every rated movie. Each variant trains in
one process, unsharded (`trainers/local.py`, the Ray path's optimisers), once per seed, up to
`--epochs` with early stopping on valid AUC (`--patience`, best epoch restored, `--lr-decay` on a
plateau). The baselines train `--epochs` epochs too (they have no validation rule). Usage:

    .venv/bin/python benchmarks/movielens_models.py [--history liked] [--variants din,dien,din+match] \
        [--seeds 0,1,2] [--epochs 3] [--patience 1]

A variant is a model name, `+match` for the target-match features.
"""
from __future__ import annotations

import argparse
import time
from dataclasses import replace

import numpy as np
import yaml
import pyarrow.parquet as pq
import torch

from lifelong.cluster.connect import connect
from lifelong.embeddings.spec import FeatureSpec
from lifelong.jobs.config import load_run_file
from lifelong.jobs.prepare import prepare
from lifelong.trainers.baselines import evaluate_baseline
from lifelong.trainers.config import JobSpec, TrainConfig
from lifelong.trainers.local import batches, fit_local
from lifelong.trainers.loop import evaluate

HISTORY = {"all": (), "liked": (1,)}


def pm(xs: list[float]) -> str:
    return f"{np.mean(xs):.4f}" + (f" ± {np.std(xs, ddof=1):.4f}" if len(xs) > 1 else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/movielens.yaml")
    p.add_argument("--history", choices=list(HISTORY), default="liked")
    p.add_argument("--variants", default="din,dien,din_full,sim_hard,twin")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--lr-decay", type=float, default=1.0)
    p.add_argument("--embedding-l2", type=float, default=0.0, help="train.embedding_l2")
    p.add_argument("--k", type=int, default=0, help="GSU k of the two-stage models (0 = each model's default)")
    p.add_argument("--threads", type=int, default=2)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    run = load_run_file(a.config)
    run = replace(run, samples=replace(run.samples, history_behaviors=HISTORY[a.history]))
    connect(run.cluster)
    samples_dir, meta, report = prepare(run)
    train, valid, test = (pq.read_table(samples_dir / s) for s in ("train", "valid", "test"))
    sc, t = run.samples, run.train
    print(f"MovieLens latest-small (real), history = {a.history}: {train.num_rows} train / {valid.num_rows} valid / "
          f"{test.num_rows} test samples, L = {sc.max_len}, S = {sc.short_len}; up to {a.epochs} epochs, "
          f"patience {a.patience}, lr_decay {a.lr_decay}, embedding_l2 {a.embedding_l2}, "
          f"batch {t.batch_size}, one process; test read once per run\n")
    print("| variant | seeds | valid AUC | valid GAUC | test AUC | test GAUC | test logloss | epochs (best) "
          "| s per run |\n|---|---|---|---|---|---|---|---|---|")
    for name in ("popularity", "logistic"):
        v, s = (evaluate_baseline(name, train, part) for part in (valid, test))
        print(f"| {name} | 1 | {v['auc']:.4f} | {v['gauc']:.4f} | {s['auc']:.4f} | {s['gauc']:.4f} | "
              f"{s['logloss']:.4f} | {3 if name == 'logistic' else '–'} | – |", flush=True)
    for variant in a.variants.split(","):
        name, *opts = variant.split("+")
        cfg = ({"k": a.k} if a.k else {}) | ({"match": True} if "match" in opts else {}) | {  # cain+msia_weights=raw
            k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in opts if "=" in o)}
        runs = []
        for seed in (int(s) for s in a.seeds.split(",")):
            job = JobSpec(name, cfg, FeatureSpec(meta.n_items, meta.n_categories, run.embedding_dim, meta.n_users),
                          sc, TrainConfig(epochs=a.epochs, batch_size=t.batch_size, seed=seed, patience=a.patience,
                                          lr_decay=a.lr_decay, sparse_lr=t.sparse_lr, dense_lr=t.dense_lr,
                                          embedding_l2=a.embedding_l2,
                                          diagnostic_batches=0))
            t0 = time.perf_counter()
            model, h = fit_local(job, train, valid)
            tm = evaluate(model, batches(test, job, job.train.eval_batch_size, None), torch.device("cpu"))
            runs.append((h[-1]["valid_auc"], h[-1]["valid_gauc"], tm["auc"], tm["gauc"], tm["logloss"],
                         f"{h[-1].get('epochs_trained', len(h))}({h[-1].get('best_epoch', len(h) - 1) + 1})",
                         time.perf_counter() - t0))
        cols = list(zip(*runs))
        print(f"| {variant} | {len(runs)} | " + " | ".join(pm(list(c)) for c in cols[:5]) +
              f" | {'/'.join(cols[5])} | {np.mean(cols[6]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
