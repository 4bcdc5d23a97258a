"""Bytes of the two sample layouts on the same planted SYNTHETIC log: "copy" (each sample holds its
last-L history) vs "store" (each user's history once; samples hold hist_end).

    .venv/bin/python benchmarks/sequence_store.py --lens 1000,10000 --users 50 --impressions 40

Prints one table: events, samples, Parquet bytes on disk and Arrow bytes in memory per layout
(store = sample rows + store rows), and the copy/store ratios. In-process (`build_local`), so the
numbers do not depend on Ray Data's file splitting.
"""
from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import pyarrow.parquet as pq

from lifelong.data.samples import SampleConfig, build_local, build_store_local
from lifelong.data.synthetic import SyntheticConfig, generate


def disk_bytes(tables, folder: Path) -> int:
    total = 0
    for i, t in enumerate(tables):
        pq.write_table(t, folder / f"{i}.parquet")
        total += (folder / f"{i}.parquet").stat().st_size
    return total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lens", default="1000,10000")
    p.add_argument("--users", type=int, default=50)
    p.add_argument("--impressions", type=int, default=40)
    args = p.parse_args()
    print("| L | users | events | samples | copy disk MB | store disk MB | disk ratio | copy memory MB "
          "| store memory MB | memory ratio |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for L in (int(x) for x in args.lens.split(",")):
        log, _ = generate(SyntheticConfig(n_users=args.users, seq_len=L, n_impressions=args.impressions,
                                          guard=min(100, L // 10), seed=1))
        cfg = SampleConfig(max_len=L, short_len=50, sample_behaviors=(1,), history_behaviors=(0,))
        copy = [build_local(log, cfg)]
        store_cfg = SampleConfig(**{**cfg.__dict__, "layout": "store"})
        store = [build_local(log, store_cfg), build_store_local(log, store_cfg)]
        with tempfile.TemporaryDirectory() as tmp:
            d_copy, d_store = disk_bytes(copy, Path(tmp)), disk_bytes(store, Path(tmp))
        m_copy, m_store = sum(t.nbytes for t in copy), sum(t.nbytes for t in store)
        mb = lambda b: f"{b / 2**20:.2f}"  # noqa: E731
        print(f"| {L:,} | {args.users} | {log.num_rows:,} | {copy[0].num_rows:,} | {mb(d_copy)} | {mb(d_store)} "
              f"| {d_copy / d_store:.1f}x | {mb(m_copy)} | {mb(m_store)} | {m_copy / m_store:.1f}x |", flush=True)


if __name__ == "__main__":
    main()
