"""Learned models on The Complete Journey (real lifelong histories) beside the history-count
rules: does a model read more than counting the target in the history does?

    .venv/bin/python benchmarks/completejourney_models.py --variants din,din+match,sim_hard,twin,twin+match \
        --seeds 0,1,2 [--test]

Every variant trains the run file's budget (`configs/completejourney.yaml`: one epoch, batch 256,
2 Ray workers, sharded tables) on the same samples, once per seed (`train.seed`: initialisation
and shuffling; the negatives are fixed by the data seed). A run name that already finished is
re-reported, not retrained. The table gives valid AUC / GAUC / logloss (mean ± std over seeds) and
samples/s; with `--test` each run's checkpoint is scored once on the test split too (do that
only after every choice was made on valid). Variants:
"""
from __future__ import annotations

import argparse
import math
from dataclasses import replace

import numpy as np

from lifelong.jobs.config import load_run_file
from lifelong.jobs.evaluate import evaluate
from lifelong.jobs.train import train

CACHE = {"key_cache_every": 20, "dedup_ids": True}
VARIANTS = {  # name -> (model, model_config, train overrides)
    "din": ("din", {}, {}),
    "din+match": ("din", {"match": True}, {}),
    "sim_hard": ("sim_hard", {"k": 100}, {}),
    "sim_hard+match": ("sim_hard", {"k": 100, "match": True}, {}),
    "eta+match": ("eta", {"k": 100, "match": True}, CACHE),
    "lic+match": ("lic", {"k": 100, "match": True}, CACHE),
    "twin": ("twin", {"k": 100}, CACHE),
    "twin+match": ("twin", {"k": 100, "match": True}, CACHE),
}
__doc__ += "".join(f"\n    {k}: model {m}, model_config {c}, train {t}" for k, (m, c, t) in VARIANTS.items())


def pm(xs: list[float], d: int = 4) -> str:
    xs = [x for x in xs if not math.isnan(x)]
    return f"{np.mean(xs):.{d}f}" + (f" ± {np.std(xs, ddof=1):.{d}f}" if len(xs) > 1 else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/completejourney.yaml")
    p.add_argument("--variants", default=",".join(VARIANTS))
    p.add_argument("--seeds", default="0")
    p.add_argument("--test", action="store_true", help="also score each run's checkpoint on the test split")
    a = p.parse_args()
    base = load_run_file(a.config)
    rows = []
    for variant in a.variants.split(","):
        model, cfg, extra = VARIANTS[variant]
        runs = []
        for seed in (int(s) for s in a.seeds.split(",")):
            run = replace(base, name=f"{base.name}-{variant}.s{seed}", model=model, model_config=cfg,
                          train=replace(base.train, seed=seed, **extra))
            s = train(run)
            if a.test:
                s.update({f"test_{k}": v for k, v in evaluate(s["checkpoint"], "test").items()
                          if k in ("auc", "gauc", "logloss")})
            runs.append(s)
        rows.append((variant, runs))
    split_cols = ["valid"] + (["test"] if a.test else [])
    head = " | ".join(f"{sp} {m}" for sp in split_cols for m in ("AUC", "GAUC", "logloss"))
    print(f"\n| variant | seeds | {head} | train samples/s |\n|---|---|" + "---|" * (3 * len(split_cols) + 1))
    for variant, runs in rows:
        cells = " | ".join(pm([r[f"{sp}_{m}"] for r in runs]) for sp in split_cols for m in ("auc", "gauc", "logloss"))
        print(f"| {variant} | {len(runs)} | {cells} | {pm([r['train_samples_per_s'] for r in runs], 0)} |")


if __name__ == "__main__":
    main()
