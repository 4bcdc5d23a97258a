"""How much of The Complete Journey's next-purchase signal lies beyond the short window: the
history-count rules (`trainers/rules.py`) and the popularity / logistic-regression baselines on
the samples of `configs/completejourney.yaml`, at several history lengths L.

    .venv/bin/python benchmarks/completejourney_rules.py --lens 50,500,4096 [--split valid]

Samples come from the sample cache (built on an embedded Ray the first time). Each rule is fit
on train (P(click | feature value)) and scored on `--split` (valid unless you are reporting the
final numbers once). A rule over the last L events and its last-S twin (S = short_len = 50)
differ only in how far back they count.
"""
from __future__ import annotations

import argparse

import pyarrow.parquet as pq

from lifelong.cluster.connect import connect
from lifelong.data.store import SequenceStore, store_path
from lifelong.jobs.config import load_run_file
from lifelong.jobs.prepare import prepare
from lifelong.trainers.baselines import BASELINES, evaluate_baseline
from lifelong.trainers.rules import evaluate_rules

COLUMNS = ["user_id", "item_id", "category_id", "timestamp", "label"]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/completejourney.yaml")
    p.add_argument("--lens", default="50,500,4096", help="comma-separated L for the whole-history rules")
    p.add_argument("--split", default="valid", choices=("valid", "test"))
    a = p.parse_args()
    run = load_run_file(a.config)
    connect(run.cluster)
    samples_dir, meta, report = prepare(run)
    path = store_path(samples_dir, run.samples.layout)
    store = SequenceStore.read(path) if path else None
    train, scored = pq.read_table(samples_dir / "train"), pq.read_table(samples_dir / a.split)
    S = run.samples.short_len
    print(f"\n{meta.name}: {report['samples']} samples, {a.split} split scored, S = {S}\n")
    print(f"| rule ({a.split}) | " + " | ".join(f"L = {L}" for L in a.lens.split(",")) + f" | last S = {S} |")
    print("|---|" + "---|" * (len(a.lens.split(",")) + 1))
    by_len = {int(L): evaluate_rules(train, scored, int(L), S, store) for L in a.lens.split(",")}
    first = next(iter(by_len.values()))
    for name in (n for n in first if "(L)" in n):
        short = first[name.replace("(L)", "(last S)")]["auc"]
        cells = " | ".join(f"{by_len[L][name]['auc']:.4f}" for L in by_len)
        print(f"| {name.replace(' (L)', '')} | {cells} | {short:.4f} |")
    for name in BASELINES:
        m = evaluate_baseline(name, train.select(COLUMNS), scored.select(COLUMNS))
        print(f"| {name} (no history) | " + " | ".join(f"{m['auc']:.4f}" for _ in by_len) + f" | {m['auc']:.4f} |")


if __name__ == "__main__":
    main()
