"""Our DIN and DIEN beside deepctr-torch's on the same MovieLens samples: training samples per
CPU-second (one thread, batch building included, evaluation excluded) and valid AUC (issue 17;
the MovieLens rows of its peer table; FuxiCTR's whole pipeline is not wired in yet, see
`gsu_peer.py` for its SDIM and ETA operators).

    python3 -m venv /tmp/peers-venv && /tmp/peers-venv/bin/pip install torch==2.13.0 deepctr-torch==0.3.0
    .venv/bin/python benchmarks/peers.py --peer-python /tmp/peers-venv/bin/python [--models din,dien] [--repeats 2]

Samples: `configs/movielens.yaml`'s (built in-process with the same per-user function Ray Data
runs), train and valid splits. Both models read the target item, its category, the user and the
last S = 20 behaviours (item and category), embedding width 16, attention MLP (64, 32), head MLP
(128, 64), batch 256, one pass, the same shuffled order. Ours: `din` with the trainer's optimisers
(row-wise Adagrad 0.05 on the tables, Adam 1e-3 dense), batches collated from Arrow by our
`Collator` into KJTs. deepctr-torch 0.3.0's `DIN` (its own venv): Adam 1e-3 on everything, its
`fit` over NumPy arrays padded to 20 (its defaults otherwise: Dice activation in the attention,
L2 1e-6 on embeddings, init N(0, 1e-4)). DIEN: ours (GRU, AUGRU, auxiliary loss α 0.05 with
in-batch negatives) against deepctr-torch's `DIEN(gru_type="AUGRU", use_negsampling=True,
alpha=0.05)`, whose negatives are given as arrays: each sample's history events at the same
steps of another (random) sample, as our in-batch draw. Repeats alternate the two systems; the
table gives each system's best repeat (the least disturbed by other work on the machine) and
every repeat's value.
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
import torch

S, DIM, BATCH, ATT, HEAD = 20, 16, 256, (64, 32), (128, 64)


def build(config: str):
    """(train, valid) Arrow sample tables and the log meta, built in-process."""
    from lifelong.data.samples import build_local
    from lifelong.jobs.config import load_run_file
    from lifelong.jobs.prepare import load_log

    run = load_run_file(config)
    table, meta, _ = load_log(run)
    samples = build_local(table, run.samples)
    split = samples.column("split").to_numpy()
    pick = lambda code: samples.filter(pa.array(split == code)).drop_columns(["split"])  # noqa: E731
    return run, meta, pick(0), pick(1)


def padded(table: pa.Table, column: str, width: int) -> tuple[np.ndarray, np.ndarray]:
    """The last `width` events of a list column, valid first and zero-padded after: (N, width), lengths."""
    from lifelong.data.samples import list_arrays

    offsets, values = list_arrays(table.column(column))
    lengths = np.minimum(np.diff(offsets), width)
    out = np.zeros((len(lengths), width), np.int64)
    for i, (end, n) in enumerate(zip(offsets[1:], lengths)):
        out[i, :n] = values[end - n:end]
    return out, lengths


def ours(model_name: str, run, meta, train: pa.Table, valid: pa.Table, seed: int) -> dict:
    from lifelong.models.base import loss as ctr_loss
    from lifelong.trainers.local import batches, local_optimizer
    from lifelong.trainers.loop import evaluate
    from lifelong.trainers.model_setup import plain_model
    from lifelong.jobs.train import job_spec

    cfg = {"attention_hidden": ATT, "head_hidden": HEAD} if model_name == "din" else {"head_hidden": HEAD}
    run = replace(run, model=model_name, model_config=cfg, embedding_dim=DIM,
                  samples=replace(run.samples, short_len=S), train=replace(run.train, batch_size=BATCH))
    job = job_spec(run, meta)
    torch.manual_seed(seed)
    model = plain_model(job)
    opt = local_optimizer(job, model)
    model.train()
    cpu, wall = time.process_time(), time.perf_counter()
    for batch in batches(train, job, BATCH, seed):  # collate included
        loss = ctr_loss(batch, model(batch))
        opt.zero_grad()
        loss.backward()
        opt.step()
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    auc = evaluate(model, batches(valid, job, 4096, None), torch.device("cpu"))["auc"]
    return {"samples_per_cpu_s": train.num_rows / cpu, "samples_per_s": train.num_rows / wall, "valid_auc": auc}


def peer_arrays(meta, train: pa.Table, valid: pa.Table, seed: int, folder: Path) -> None:
    """The same samples, in the shuffled order, as the NumPy arrays deepctr-torch reads."""
    for name, t in (("train", train.take(pa.array(np.random.default_rng(seed).permutation(train.num_rows)))),
                    ("valid", valid)):
        hist_item, lengths = padded(t, "hist_item", S)
        hist_cat, _ = padded(t, "hist_cat", S)
        other = np.random.default_rng(seed + 1).permutation(len(lengths))  # DIEN's negatives: another row's
        np.savez(folder / f"{name}.npz", user=t.column("user_id").to_numpy(), item=t.column("item_id").to_numpy(),
                 cat=t.column("category_id").to_numpy(), hist_item=hist_item, hist_cat=hist_cat,
                 neg_hist_item=hist_item[other], neg_hist_cat=hist_cat[other],
                 seq_length=lengths, label=t.column("label").to_numpy().astype(np.float32))
    (folder / "meta.json").write_text(json.dumps({"users": meta.n_users + 1, "items": meta.n_items + 1,
                                                  "cats": meta.n_categories + 1}))


def deepctr(model_name: str, folder: Path, seed: int) -> dict:
    """deepctr-torch's DIN or DIEN on the arrays under `folder` (runs in the peer's venv)."""
    from deepctr_torch.inputs import SparseFeat, VarLenSparseFeat
    from deepctr_torch.models import DIEN, DIN
    from sklearn.metrics import roc_auc_score

    vocab = json.loads((folder / "meta.json").read_text())
    seq = lambda name, table: VarLenSparseFeat(  # noqa: E731
        SparseFeat(name, vocab[table + "s"], DIM, embedding_name=table), S, length_name="seq_length")
    columns = [SparseFeat("user", vocab["users"], DIM), SparseFeat("item", vocab["items"], DIM),
               SparseFeat("cat", vocab["cats"], DIM), seq("hist_item", "item"), seq("hist_cat", "cat")]
    data = {name: dict(np.load(folder / f"{name}.npz")) for name in ("train", "valid")}
    torch.manual_seed(seed)
    if model_name == "din":
        model = DIN(columns, ["item", "cat"], dnn_hidden_units=HEAD, att_hidden_size=ATT, seed=seed)
    else:
        columns += [seq("neg_hist_item", "item"), seq("neg_hist_cat", "cat")]
        model = DIEN(columns, ["item", "cat"], gru_type="AUGRU", use_negsampling=True, alpha=0.05,
                     dnn_hidden_units=HEAD, att_hidden_units=ATT, seed=seed)
    model.compile("adam", "binary_crossentropy")
    keep = {c.name for c in columns} | {"seq_length"}
    for part in data.values():
        for k in [k for k in part if k not in keep | {"label"}]:
            del part[k]
    x = {k: v for k, v in data["train"].items() if k != "label"}
    cpu, wall = time.process_time(), time.perf_counter()
    model.fit(x, data["train"]["label"], batch_size=BATCH, epochs=1, verbose=0, shuffle=False)
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    n = len(data["train"]["label"])
    pred = model.predict({k: v for k, v in data["valid"].items() if k != "label"}, batch_size=4096)
    return {"samples_per_cpu_s": n / cpu, "samples_per_s": n / wall,
            "valid_auc": float(roc_auc_score(data["valid"]["label"], pred))}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/movielens.yaml")
    p.add_argument("--peer-python", default="/tmp/peers-venv/bin/python")
    p.add_argument("--models", default="din,dien")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--worker", default="", help=argparse.SUPPRESS)  # the peer side: "model,folder"
    a = p.parse_args()
    torch.set_num_threads(1)
    if a.worker:
        model_name, folder = a.worker.split(",", 1)
        print(json.dumps(deepctr(model_name, Path(folder), a.seed)))
        return
    run, meta, train, valid = build(a.config)
    print(f"MovieLens ({a.config}): {train.num_rows:,} train / {valid.num_rows:,} valid samples; S {S}, "
          f"width {DIM}, batch {BATCH}, one pass, one thread\n", flush=True)
    systems = ("lifelong", "deepctr-torch 0.3.0")
    results = {(m, s): [] for m in a.models.split(",") for s in systems}
    with tempfile.TemporaryDirectory() as tmp:
        peer_arrays(meta, train, valid, a.seed, Path(tmp))
        for _ in range(a.repeats):
            for m in a.models.split(","):
                results[(m, systems[0])].append(ours(m, run, meta, train, valid, a.seed))
                out = subprocess.run([a.peer_python, __file__, "--worker", f"{m},{tmp}", "--seed", str(a.seed)],
                                     capture_output=True, text=True)
                if out.returncode:
                    raise SystemExit(f"peer run failed ({a.peer_python}): {out.stderr.strip().splitlines()[-1]}")
                results[(m, systems[1])].append(json.loads(out.stdout.strip().splitlines()[-1]))
    best = {k: max(r["samples_per_cpu_s"] for r in v) for k, v in results.items()}
    print("| model | system | train samples per CPU-second (best; every repeat) | samples/s (wall, best) | "
          "valid AUC |\n|---|---|---|---|---|")
    for (m, name), runs in results.items():
        every = ", ".join(f"{r['samples_per_cpu_s']:,.0f}" for r in runs)
        aucs = ", ".join(f"{r['valid_auc']:.4f}" for r in runs)
        print(f"| {m} | {name} | {best[(m, name)]:,.0f} ({every}) | {max(r['samples_per_s'] for r in runs):,.0f} | "
              f"{aucs} |")
    for m in a.models.split(","):
        print(f"{m}: lifelong / deepctr-torch = {best[(m, systems[0])] / best[(m, systems[1])]:.2f}x "
              "samples per CPU-second")


if __name__ == "__main__":
    main()
