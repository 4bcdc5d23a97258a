"""Models on the planted SYNTHETIC log (`lifelong/data/synthetic.py`), beside the Bayes ceiling of
the information each one sees.

One seeded log (old interests > `guard` events back, nothing planted in the recent window),
samples split by time into train / valid / test. First the ceilings: each statistic of the target
in the history mapped to P(click) by its train click rate (`trainers/rules.py`), AUC on valid and
test: the target category's count in the last S events (what DIN-short sees), over the whole L
(exact category search, what SIM-hard sees) and the target *cluster's* count over L (the planted
label's own statistic: the oracle). Then each variant trains in one process, unsharded
(`trainers/local.py`), once per seed, up to `--epochs` with early stopping on valid AUC
(`--patience`, best epoch restored); its test AUC is read once, after training. Usage:

    .venv/bin/python benchmarks/zoo_planted.py [--users 300] [--seq-len 1000] [--sibling 0.5] \
        [--variants din,sim_hard,twin+match] [--seeds 0,1,2] [--epochs 4] [--patience 1] [--dense-lrs 0.001,0.003]

With several `--dense-lrs` every variant gets the same grid (an equal tuning budget), the rate is
chosen per variant on mean valid AUC, and test is read once per run of the chosen rate only.

A variant is a model name, `+match` for the target-match features, `+key=value` for other model_config
keys (`din_full+match+unit=hit_similarity+head_target=false`).
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import torch
import yaml

from lifelong.data.samples import SampleConfig, build_local
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models import entry
from lifelong.models.two_stage import TwoStage
from lifelong.trainers.config import JobSpec, TrainConfig
from lifelong.trainers.local import batches, fit_local
from lifelong.trainers.loop import evaluate
from lifelong.trainers.rules import evaluate_rules

CEILINGS = {  # rule of `trainers/rules.py` -> whose information it is
    "category count (last S)": "last S events (DIN-short)",
    "category count (L)": "exact category over L (SIM-hard)",
    "cluster count (L)": "target cluster over L (oracle)",
}


def pm(xs: list[float]) -> str:
    return f"{np.mean(xs):.4f}" + (f" ± {np.std(xs, ddof=1):.4f}" if len(xs) > 1 else "")


def split(s: pa.Table) -> list[pa.Table]:
    return [s.filter(pc.equal(s["split"], code)) for code in (0, 1, 2)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=1000)
    p.add_argument("--short-len", type=int, default=50)
    p.add_argument("--sibling", type=float, default=0.0, help="share of interest impressions from an unseen sibling")
    p.add_argument("--data-seed", type=int, default=1)
    p.add_argument("--variants", default="din,din_full,sim_hard,sim_soft,eta,twin,twin+match,lic")
    p.add_argument("--seeds", default="0")
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--patience", type=int, default=1)
    p.add_argument("--lr-decay", type=float, default=1.0, help="train.lr_decay (needs --patience >= 2)")
    p.add_argument("--embedding-l2", type=float, default=0.0, help="train.embedding_l2")
    p.add_argument("--init-bound", type=float, default=0.0, help="embedding init ±b (0 = TorchRec's default)")
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--dense-lrs", "--dense-lr", dest="dense_lrs", default="0.001",
                   help="train.dense_lr, comma-separated: a grid every variant trains alike; per variant the rate "
                   "with the best mean valid AUC over the seeds is chosen and only its runs are scored on test")
    a = p.parse_args()
    lrs = [float(x) for x in a.dense_lrs.split(",")]
    syn = SyntheticConfig(n_users=a.users, seq_len=a.seq_len, sibling=a.sibling, seed=a.data_seed)
    log, meta = generate(syn)
    sc = SampleConfig(max_len=a.seq_len, short_len=a.short_len, sample_behaviors=(1,), history_behaviors=(0,))
    train, valid, test = split(build_local(log, sc))
    print(f"SYNTHETIC planted log v2 (sibling {a.sibling}): {a.users} users, L = {a.seq_len}, S = {a.short_len}; "
          f"{train.num_rows} train / {valid.num_rows} valid / {test.num_rows} test samples\n")
    clusters = syn.cluster(np.arange(syn.n_categories + 1))
    ceil = [evaluate_rules(train, part, a.seq_len, a.short_len, clusters=clusters) for part in (valid, test)]
    print("| Bayes ceiling of | valid AUC | test AUC |\n|---|---|---|")
    for rule, who in CEILINGS.items():
        print(f"| {who} | {ceil[0][rule]['auc']:.4f} | {ceil[1][rule]['auc']:.4f} |")
    print(f"\n{a.epochs} epochs max, patience {a.patience}, lr_decay {a.lr_decay}, "
          f"embedding_l2 {a.embedding_l2}, init ±{a.init_bound or 'TorchRec'}, "
          f"batch {a.batch_size}, k = {a.k}, dense lr {' / '.join(map(str, lrs))} (chosen on valid), "
          "one process; test read once per run, for the chosen rate only\n")
    grid = " | ".join(f"valid AUC, lr {lr}" for lr in lrs)
    print(f"| variant | seeds | {grid} | chosen lr | test AUC (chosen) | epochs (best) | s per run |\n"
          f"|{'---|' * (len(lrs) + 6)}")
    for variant in a.variants.split(","):
        name, *opts = variant.split("+")  # din_full+match+unit=hit_similarity
        cfg = ({"k": a.k} if issubclass(entry(name).module, TwoStage) else {}) | \
            ({"match": True} if "match" in opts else {}) | {
                k: yaml.safe_load(v) for k, v in (o.split("=", 1) for o in opts if "=" in o)}
        runs: dict[float, list] = {}
        for lr in lrs:
            for seed in (int(x) for x in a.seeds.split(",")):
                job = JobSpec(name, cfg, FeatureSpec(meta.n_items, meta.n_categories, 16, init_bound=a.init_bound),
                              sc, TrainConfig(epochs=a.epochs, batch_size=a.batch_size, seed=seed,
                                              patience=a.patience, lr_decay=a.lr_decay, dense_lr=lr,
                                              embedding_l2=a.embedding_l2, diagnostic_batches=0))
                t = time.perf_counter()
                model, h = fit_local(job, train, valid)
                runs.setdefault(lr, []).append((h[-1]["valid_auc"], model, job, h[-1].get("epochs_trained", len(h)),
                                                h[-1].get("best_epoch", len(h) - 1), time.perf_counter() - t))
        chosen = max(lrs, key=lambda lr: np.mean([r[0] for r in runs[lr]]))
        test_aucs = [evaluate(model, batches(test, job, job.train.eval_batch_size, None), torch.device("cpu"))["auc"]
                     for _, model, job, *_ in runs[chosen]]  # test: the chosen rate's runs, once each
        _, _, _, ep, best, _ = zip(*runs[chosen])
        wall = [r[-1] for rs in runs.values() for r in rs]
        cells = " | ".join(pm([r[0] for r in runs[lr]]) for lr in lrs)
        print(f"| {variant} | {len(runs[chosen])} | {cells} | {chosen} | {pm(test_aucs)} | "
              f"{'/'.join(f'{e}({b + 1})' for e, b in zip(ep, best))} | {np.mean(wall):.0f} |", flush=True)

if __name__ == "__main__":
    main()
