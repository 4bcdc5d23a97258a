"""Ours beside FuxiCTR's and deepctr-torch's whole training pipelines on the same prepared samples:
training samples per CPU-second (one process, one thread, batch building included, evaluation
excluded) and valid AUC (issue 17's peer table).

    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install torch==2.13.0 \\
        deepctr-torch==0.3.0 fuxictr==2.3.10 keras_preprocessing
    .venv/bin/python benchmarks/peers.py --config configs/movielens.yaml --models din,dien,twin,eta,sdim,sdim-48x3
    .venv/bin/python benchmarks/peers.py --config configs/synthetic.yaml --models din,twin,eta,sdim --max-train 20000

Samples: the run file's, built in-process with the per-user function Ray Data runs, train and valid
splits, one shuffled order for every system. Every system reads the target item, its category, the
user and the history (item and category): the last S (`samples.short_len`) events for DIN / DIEN,
the last L (`samples.max_len`) for TWIN, ETA and SDIM with the last S as their short sequence.
Matched: embedding width 16, batch 256, head MLP (128, 64), DIN attention MLP (64, 32), top k 50,
4 heads x 8 (TWIN / ETA / SDIM attention), ETA 32 bits, SDIM 2 hashes x 4 bits (FuxiCTR's default;
`sdim-48x3` is the paper's). One pass over train. FuxiCTR's DIEN has no auxiliary loss: `dien`
(ours with it, α 0.05) is matched by deepctr-torch's, `dien-noaux` (ours without) by FuxiCTR's.
- ours: the model with the trainer's optimisers (row-wise Adagrad 0.05 on the tables, Adam on the
  rest), batches collated from Arrow (the run file's layout) into KJTs, glibc's malloc thresholds
  as the trainers set them (`trainers/allocator.py`; the peers' processes keep glibc's defaults).
- FuxiCTR 2.3.10 + its LongCTR zoo (`../shared/peers/fuxictr-longctr`): its `LongCTRDataLoader`
  over Parquet (sample rows, one sequence per user, an item table), its `train_step` (Adam 1e-3,
  gradient clipping 10), its defaults otherwise (init N(0, 1e-4), Dice in DIN's attention). Known
  differences (see the peers' README): its TWIN and ETA have no time features, its DIEN no
  auxiliary loss; its DIEN is fed post-padded sequences (its GRU packing needs them).
- deepctr-torch 0.3.0 (DIN, DIEN): its `fit` over NumPy arrays padded to S; DIEN with AUGRU and the
  auxiliary loss (α 0.05) on another sample's history as negatives, as our in-batch draw.
Repeats alternate the systems; the table gives each system's best repeat (the one least disturbed
by other work on the machine) and every repeat's value.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from peer_runs import sdim_setting, split_name

DIM, BATCH, ATT, HEAD, K, HEADS, HEAD_DIM, ETA_BITS = 16, 256, (64, 32), (128, 64), 50, 4, 8, 32
SYSTEMS = {"lifelong": "lifelong", "fuxictr": "FuxiCTR 2.3.10", "deepctr": "deepctr-torch 0.3.0"}
PEERS_OF = {"din": ("fuxictr", "deepctr"), "dien": ("fuxictr", "deepctr")}  # others: FuxiCTR only
VARIANTS = {"sdim": "hashes x bits, e.g. sdim-48x3", "dien": "noaux: auxiliary loss off, as FuxiCTR's DIEN"}


def build(config: str, max_train: int, seed: int):
    """The run file, log meta, the store-layout (train, valid) samples (train shuffled once, cut to
    `max_train`) and the sequence store."""
    from lifelong.data.samples import build_local, build_store_local
    from lifelong.data.store import SequenceStore
    from lifelong.jobs.config import load_run_file
    from lifelong.jobs.prepare import load_log

    run = load_run_file(config)
    table, meta, _ = load_log(run)
    cfg = replace(run.samples, layout="store")
    samples, store = build_local(table, cfg), SequenceStore(build_store_local(table, cfg), "store")
    split = samples.column("split").to_numpy()
    pick = lambda code: samples.filter(pa.array(split == code)).drop_columns(["split"])  # noqa: E731
    train = pick(0)
    train = train.take(pa.array(np.random.default_rng(seed).permutation(train.num_rows)[:max_train or None]))
    return run, meta, train, pick(1), store


def our_config(name: str) -> dict:
    base, variant = split_name(name)
    if variant and (base not in VARIANTS or (base == "dien" and variant != "noaux")):
        raise SystemExit(f"unknown variant {name!r}; variants: {VARIANTS}")
    hashes, tau = sdim_setting(variant if base == "sdim" else "")
    att = {"attention_hidden": ATT, "head_hidden": HEAD}
    return {"din": att, "dien": {"head_hidden": HEAD, **({"aux_weight": 0.0} if variant == "noaux" else {})},
            "twin": {**att, "k": K, "heads": HEADS, "head_dim": HEAD_DIM},
            "eta": {**att, "k": K, "bits": ETA_BITS, "heads": HEADS, "attention_dim": HEADS * HEAD_DIM},
            "sdim": {**att, "hashes": hashes, "tau": tau}}[base]


def ours(name: str, run, meta, train: pa.Table, valid: pa.Table, store, seed: int, sparse: str = "",
         sparse_lr: float = 0.0) -> dict:
    """Our model, unsharded, one pass over `train` in its (already shuffled) order; the samples in
    the run file's layout (`store` None unless it is "store")."""
    from lifelong.models.base import loss as ctr_loss
    from lifelong.trainers.local import batches, local_optimizer
    from lifelong.trainers.loop import evaluate
    from lifelong.trainers.model_setup import plain_model
    from lifelong.jobs.train import job_spec
    from lifelong.trainers.allocator import keep_freed_memory

    keep_freed_memory()  # as the trainers do
    opt = {"sparse_optimizer": sparse, "sparse_lr": sparse_lr} if sparse else {}
    run = replace(run, model=split_name(name)[0], model_config=our_config(name), embedding_dim=DIM,
                  train=replace(run.train, batch_size=BATCH, **opt))
    job = job_spec(run, meta)
    torch.manual_seed(seed)
    model = plain_model(job)
    opt = local_optimizer(job, model)
    model.train()
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches(train, job, BATCH, None, store):  # collate included
        loss = ctr_loss(batch, model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    auc = evaluate(model, batches(valid, job, 4096, None, store), torch.device("cpu"))["auc"]
    return {"samples_per_cpu_s": train.num_rows / cpu, "samples_per_s": train.num_rows / wall, "valid_auc": auc}


def item_categories(train: pa.Table, valid: pa.Table, store, n_items: int) -> np.ndarray:
    """item id -> category id (0 for padding and unseen items); an error if an item has two."""
    items = np.concatenate([store.values["hist_item"]] + [t.column("item_id").to_numpy() for t in (train, valid)])
    cats = np.concatenate([store.values["hist_cat"]] + [t.column("category_id").to_numpy() for t in (train, valid)])
    of = np.zeros(n_items + 1, np.int64)
    of[items] = cats
    if (of[items] != cats).any():
        i = int(np.flatnonzero(of[items] != cats)[0])
        raise SystemExit(f"item {items[i]} has categories {of[items[i]]} and {cats[i]}: FuxiCTR's item table "
                         "needs one category per item")
    return of


def peer_files(run, meta, train: pa.Table, valid: pa.Table, store, seed: int, folder: Path) -> None:
    """The samples as each peer reads them: FuxiCTR's Parquet (sample rows pointing into one sequence
    per user, an item table) and deepctr-torch's padded arrays."""
    s, length = run.samples.short_len, run.samples.max_len
    cat_of = item_categories(train, valid, store, meta.n_items)
    pq.write_table(pa.table({"full_item_seq": pa.ListArray.from_arrays(
        pa.array(store.offsets.astype(np.int32)), pa.array(store.values["hist_item"]))}),
        folder / "fuxictr_user_info.parquet")
    pq.write_table(pa.table({"item_index": np.arange(len(cat_of)), "item_id": np.arange(len(cat_of)),
                             "cat_id": cat_of}), folder / "fuxictr_item_info.parquet")
    for name, t in (("train", train), ("valid", valid)):
        users = t.column("user_id").to_numpy()
        pq.write_table(pa.table({"user_index": store.row[users], "user_id": users, "item_index": t.column("item_id"),
                                 "seq_len": t.column("hist_end").cast(pa.int64()),
                                 "label": t.column("label").cast(pa.int64())}), folder / f"fuxictr_{name}.parquet")
        offsets, values = store.lists(users, t.column("hist_end").to_numpy(), s)
        lengths = np.diff(offsets)
        hist = {c: np.zeros((len(lengths), s), np.int64) for c in ("hist_item", "hist_cat")}
        rows = np.repeat(np.arange(len(lengths)), lengths)
        cols = np.arange(offsets[-1]) - np.repeat(offsets[:-1], lengths)  # each event's slot in its row
        for c in hist:  # valid first, zero-padded after (deepctr-torch's layout)
            hist[c][rows, cols] = values[c]
        other = np.random.default_rng(seed + 1).permutation(len(lengths))  # DIEN's negatives: another row's
        np.savez(folder / f"deepctr_{name}.npz", user=users, item=t.column("item_id").to_numpy(),
                 cat=t.column("category_id").to_numpy(), **hist, neg_hist_item=hist["hist_item"][other],
                 neg_hist_cat=hist["hist_cat"][other], seq_length=lengths,
                 label=t.column("label").to_numpy().astype(np.float32))
    features = [{"user_index": {"type": "meta"}}, {"item_index": {"type": "meta"}}, {"seq_len": {"type": "meta"}},
                {"user_id": {"type": "categorical", "source": "user", "vocab_size": meta.n_users + 1}},
                {"item_id": {"type": "categorical", "source": "item", "vocab_size": meta.n_items + 1,
                             "padding_idx": 0}},
                {"cat_id": {"type": "categorical", "source": "item", "vocab_size": meta.n_categories + 1,
                            "padding_idx": 0}}]
    (folder / "fuxictr_feature_map.json").write_text(json.dumps(
        {"dataset_id": "peers", "num_fields": 3, "total_features": 0, "input_length": 0, "labels": ["label"],
         "features": features}))
    (folder / "settings.json").write_text(json.dumps(
        {"dim": DIM, "batch": BATCH, "seed": seed, "short_len": s, "max_len": length, "attention": ATT,
         "head": HEAD, "heads": HEADS, "head_dim": HEAD_DIM, "k": K, "eta_bits": ETA_BITS,
         "vocab": {"user": meta.n_users + 1, "item": meta.n_items + 1, "cat": meta.n_categories + 1}}))


def peer(python: str, system: str, name: str, folder: Path) -> dict:
    out = subprocess.run([python, str(Path(__file__).with_name("peer_runs.py")), system, name, str(folder)],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{system} {name} failed ({python}):\n{out.stderr.strip()[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/movielens.yaml")
    p.add_argument("--peer-python", default="/tmp/peers-venv/bin/python")
    p.add_argument("--models", default="din,dien,dien-noaux,twin,eta,sdim,sdim-48x3")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--max-train", type=int, default=0, help="train on the first N shuffled samples (0: all)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--sparse-optimizer", default="", help="ours: the tables' optimiser (default: the run file's), "
                   "e.g. adam, as the peers use on everything")
    p.add_argument("--sparse-lr", type=float, default=0.001)
    p.add_argument("--json", default="", help="also write every repeat's results here")
    a = p.parse_args()
    torch.set_num_threads(1)
    run, meta, train, valid, store = build(a.config, a.max_train, a.seed)
    models = a.models.split(",")
    print(f"{meta.name} ({a.config}{', SYNTHETIC' if meta.synthetic else ''}): {train.num_rows:,} train / "
          f"{valid.num_rows:,} valid samples; L {run.samples.max_len}, S {run.samples.short_len}, width {DIM}, "
          f"batch {BATCH}, one pass, one thread, {a.repeats} repeats"
          + (f"; ours with {a.sparse_optimizer} {a.sparse_lr} on the tables" if a.sparse_optimizer else "") + "\n",
          flush=True)
    results = {(m, s): [] for m in models for s in ("lifelong",) + PEERS_OF.get(m, ("fuxictr",))}
    with tempfile.TemporaryDirectory() as tmp:
        peer_files(run, meta, train, valid, store, a.seed, Path(tmp))
        mine = (train, valid, store) if run.samples.layout == "store" else (  # ours reads the run file's layout
            store.expand(train, run.samples.max_len), store.expand(valid, run.samples.max_len), None)
        for _ in range(a.repeats):
            for m, system in results:
                r = (ours(m, run, meta, *mine, a.seed, a.sparse_optimizer, a.sparse_lr)
                     if system == "lifelong"
                     else peer(a.peer_python, system, m, Path(tmp)))
                results[(m, system)].append(r)
                print(f"  {m} {SYSTEMS[system]}: {r['samples_per_cpu_s']:,.0f} samples per CPU-second, "
                      f"valid AUC {r['valid_auc']:.4f}", flush=True)
    best = {k: max(r["samples_per_cpu_s"] for r in v) for k, v in results.items()}
    print("\n| model | system | train samples per CPU-second (best; every repeat) | samples/s (wall, best) | "
          "valid AUC (every repeat) | ours / system |\n|---|---|---|---|---|---|")
    for (m, system), runs in results.items():
        every = ", ".join(f"{r['samples_per_cpu_s']:,.0f}" for r in runs)
        aucs = ", ".join(f"{r['valid_auc']:.4f}" for r in runs)
        ratio = "" if system == "lifelong" else f"{best[(m, 'lifelong')] / best[(m, system)]:.2f}x"
        print(f"| {m} | {SYSTEMS[system]} | {best[(m, system)]:,.0f} ({every}) | "
              f"{max(r['samples_per_s'] for r in runs):,.0f} | {aucs} | {ratio} |")
    print()
    for m in models:
        faster = max((s for (mm, s) in results if mm == m and s != "lifelong"), key=lambda s: best[(m, s)])
        print(f"{m}: ours / the faster peer ({SYSTEMS[faster]}) = {best[(m, 'lifelong')] / best[(m, faster)]:.2f}x "
              "samples per CPU-second (bar: >= 1.5x)")
    if a.json:
        Path(a.json).write_text(json.dumps({f"{m}|{s}": v for (m, s), v in results.items()}, indent=1))


if __name__ == "__main__":
    main()
