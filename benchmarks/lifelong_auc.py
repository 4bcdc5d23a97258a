"""AUC at lifelong length on planted SYNTHETIC data: each model trained on the same samples, in
one process each, with its samples/s, next to the brute-force din_full.

    .venv/bin/python benchmarks/lifelong_auc.py --seq-len 10000 --users 300 \
        --models din_full,sim_hard,twin+cache,eta+cache,lic+cache

One planted log (`lifelong/data/synthetic.py`), its samples in the sequence-store layout, split
by time (train / valid); every model trains `--epochs` epochs, batch `--batch` (128), unsharded
(`trainers/local.py`). `+cache` runs the GSU on the key cache refreshed every `--refresh` steps,
`+dedup` also deduplicates lookups. AUC's standard error (Hanley & McNeil) is printed beside it:
two models whose AUCs differ by less than ~2 standard errors are a tie. With several `--seeds`
each model's row is the mean ± std over seeds (the standard error column is of the mean AUC's
validation sample, not the seed spread). The popularity and logistic-regression baselines
(`trainers/baselines.py`) are scored on the same split. `--label presence` swaps the planted
clicks for a control task every attention model should learn (click iff the target's category
occurs in the history); `--init-bound` sets the embedding tables' initial range.
"""
from __future__ import annotations

import argparse
import math
import time

import numpy as np
import pyarrow.compute as pc

from lifelong.data.samples import SampleConfig, build_local, build_store_local
from lifelong.data.store import SequenceStore
from lifelong.data.synthetic import SyntheticConfig, generate, presence_labels
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models import entry
from lifelong.models.two_stage import TwoStage
from lifelong.trainers.baselines import BASELINES, evaluate_baseline
from lifelong.trainers.config import JobSpec, TrainConfig
from lifelong.trainers.local import fit_local


def auc_se(auc: float, pos: int, neg: int) -> float:
    """Hanley & McNeil (1982) standard error of an AUC."""
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    return math.sqrt((auc * (1 - auc) + (pos - 1) * (q1 - auc * auc) + (neg - 1) * (q2 - auc * auc)) / (pos * neg))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seq-len", type=int, default=10000)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--impressions", type=int, default=40)
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--dense-lr", type=float, default=TrainConfig.dense_lr)
    p.add_argument("--sparse-lr", type=float, default=TrainConfig.sparse_lr)
    p.add_argument("--init-bound", type=float, default=0.0, help="embedding rows start in ±this; 0 = TorchRec's")
    p.add_argument("--label", choices=("planted", "presence"), default="planted",
                   help="presence: the control task 'click iff the target's category is in the history'")
    p.add_argument("--k", type=int, default=100)
    p.add_argument("--refresh", type=int, default=20)
    p.add_argument("--seed", type=int, default=1, help="the log's seed")
    p.add_argument("--seeds", default="0", help="training seeds, comma-separated")
    p.add_argument("--models", default="din_full,sim_hard,twin+cache,eta+cache,lic+cache")
    a = p.parse_args()
    log, meta = generate(SyntheticConfig(n_users=a.users, seq_len=a.seq_len, n_impressions=a.impressions,
                                         guard=min(100, a.seq_len // 10), seed=a.seed))
    if a.label == "presence":
        log = presence_labels(log)
    sc = SampleConfig(max_len=a.seq_len, short_len=50, sample_behaviors=(1,), history_behaviors=(0,), layout="store")
    s = build_local(log, sc)
    store = SequenceStore(build_store_local(log, sc), "synthetic store")
    train, valid = s.filter(pc.equal(s["split"], 0)), s.filter(pc.not_equal(s["split"], 0))
    pos = int(pc.sum(valid["label"]).as_py())
    print(f"SYNTHETIC {a.label} labels: {a.users} users, L = {a.seq_len:,}; {train.num_rows} train / {valid.num_rows} "
          f"valid samples ({pos} clicks); {a.epochs} epoch(s), batch {a.batch}, k = {a.k}, one process, "
          f"dense lr {a.dense_lr}, sparse lr {a.sparse_lr}, embedding init ±{a.init_bound or 'sqrt(1/rows)'}, "
          f"key cache refreshed every {a.refresh} steps\n")
    print(f"| model | valid AUC ({len(a.seeds.split(','))} seed(s)) | GAUC | logloss | train samples/s "
          "| x din_full | last train loss | wall s |\n"
          "|---|---|---|---|---|---|---|---|")
    base = None
    seeds = [int(x) for x in a.seeds.split(",")]
    pm = lambda xs, d: f"{np.mean(xs):.{d}f}" + (f" ± {np.std(xs, ddof=1):.{d}f}" if len(xs) > 1 else "")  # noqa: E731
    features = FeatureSpec(meta.n_items, meta.n_categories, 16, init_bound=a.init_bound)
    for variant in a.models.split(","):
        name, *opts = variant.split("+")
        cfg = {"k": a.k} if issubclass(entry(name).module, TwoStage) else {}
        t = time.perf_counter()
        runs = []
        for seed in seeds:
            job = JobSpec(name, cfg, features, sc, TrainConfig(
                epochs=a.epochs, batch_size=a.batch, eval_batch_size=256, seed=seed, diagnostic_batches=0,
                dense_lr=a.dense_lr, sparse_lr=a.sparse_lr,
                key_cache_every=a.refresh if "cache" in opts else 0, dedup_ids="dedup" in opts))
            runs.append(fit_local(job, train, valid, store)[1][-1])
        col = lambda k: [r[k] for r in runs]  # noqa: E731
        rate = float(np.mean(col("train_samples_per_s")))
        base = rate if name == "din_full" else base
        se = auc_se(float(np.mean(col("valid_auc"))), pos, valid.num_rows - pos)
        ratio = f"{rate / base:.1f}" if base else "–"
        print(f"| {variant} | {pm(col('valid_auc'), 4)} (s.e. {se:.4f}) | {pm(col('valid_gauc'), 4)} "
              f"| {pm(col('valid_logloss'), 4)} | {rate:.0f} | {ratio} | {pm(col('train_loss'), 4)} "
              f"| {time.perf_counter() - t:.0f} |", flush=True)
    cols = ["user_id", "item_id", "category_id", "timestamp", "label"]
    for name in BASELINES:
        m = evaluate_baseline(name, train.select(cols), valid.select(cols))
        se = auc_se(m["auc"], pos, valid.num_rows - pos)
        print(f"| {name} (baseline) | {m['auc']:.4f} (s.e. {se:.4f}) | {m['gauc']:.4f} | {m['logloss']:.4f} "
              f"| – | – | – | – |", flush=True)


if __name__ == "__main__":
    main()
