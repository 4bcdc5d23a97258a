"""Every model, in one process, on the planted SYNTHETIC log (tests/test_planted.py's setting).

Prints one Markdown table: valid AUC after each epoch, train loss, GSU consistency recall and
wall time per model. Single process, unsharded (`trainers/local.py`), so it isolates the models
from Ray and sharding. Usage:

    .venv/bin/python benchmarks/zoo_planted.py [--users 300] [--seq-len 1000] [--epochs 2] [--models a,b]
"""
from __future__ import annotations

import argparse
import time

import pyarrow as pa
import pyarrow.compute as pc

from lifelong.data.samples import SampleConfig, build_local
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.embeddings.spec import FeatureSpec
from lifelong.models import entry, names
from lifelong.models.two_stage import TwoStage
from lifelong.trainers.config import JobSpec, TrainConfig
from lifelong.trainers.local import fit_local


def samples(users: int, seq_len: int, seed: int) -> tuple[pa.Table, object, SampleConfig]:
    log, meta = generate(SyntheticConfig(n_users=users, seq_len=seq_len, seed=seed))
    sc = SampleConfig(max_len=seq_len, short_len=50, sample_behaviors=(1,), history_behaviors=(0,))
    return build_local(log, sc), meta, sc


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=300)
    p.add_argument("--seq-len", type=int, default=1000)
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--k", type=int, default=50)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--models", default=",".join(names()))
    a = p.parse_args()
    s, meta, sc = samples(a.users, a.seq_len, a.seed)
    train, valid = s.filter(pc.equal(s["split"], 0)), s.filter(pc.not_equal(s["split"], 0))
    print(f"SYNTHETIC planted log: {a.users} users, L={a.seq_len}; {train.num_rows} train / "
          f"{valid.num_rows} valid samples; {a.epochs} epochs, batch 128, seed 0, one process\n")
    print("| model | valid AUC per epoch | train loss | GSU recall | wall s |\n|---|---|---|---|---|")
    for name in a.models.split(","):
        cfg = {"k": a.k} if issubclass(entry(name).module, TwoStage) else {}
        job = JobSpec(name, cfg, FeatureSpec(meta.n_items, meta.n_categories, 16), sc,
                      TrainConfig(epochs=a.epochs, batch_size=128, seed=0, diagnostic_batches=2))
        t = time.perf_counter()
        _, h = fit_local(job, train, valid)
        recall = h[-1].get("valid_gsu_recall")
        aucs = " / ".join("%.4f" % e["valid_auc"] for e in h)
        shown = "–" if recall is None else "%.3f" % recall
        print(f"| {name} | {aucs} | {h[-1]['train_loss']:.4f} | {shown} | {time.perf_counter() - t:.0f} |", flush=True)


if __name__ == "__main__":
    main()
