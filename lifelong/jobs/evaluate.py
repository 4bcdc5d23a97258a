"""The evaluate job: re-score a saved checkpoint (or a run's newest complete one) on any
split, in one process.

The checkpoint holds the job (model, config, features, samples) and every rank's DCP shards;
the run directory beside it holds the run file, so the same (cached) samples are found or
rebuilt. DCP reassembles the shards into the unsharded model whatever plan wrote them.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.parquet as pq
import torch

from lifelong.cluster.connect import connect
from lifelong.data.samples import SPLITS
from lifelong.data.store import SequenceStore, store_path
from lifelong.jobs.config import RUN_FILE, run_file
from lifelong.jobs.prepare import prepare
from lifelong.trainers import checkpoint
from lifelong.trainers.config import JobSpec
from lifelong.trainers.local import batches
from lifelong.trainers.loop import evaluate as evaluate_batches
from lifelong.trainers.model_setup import plain_model


def evaluate(ckpt: str | Path, split: str = "valid", batch_size: int = 1024) -> dict:
    ckpt = checkpoint.resolve(ckpt)  # a run directory means its newest complete checkpoint
    if split not in SPLITS:
        raise ValueError(f"split '{split}' not in {SPLITS}")
    job = JobSpec.from_dict(checkpoint.read_job(ckpt))
    run_path = ckpt.parent / RUN_FILE
    if not run_path.exists():
        raise FileNotFoundError(f"{run_path}: the run file saved beside the checkpoint is missing")
    run = run_file(json.loads(run_path.read_text()), str(run_path))
    connect(run.cluster)  # only used if the samples must be rebuilt
    samples_dir, _, _ = prepare(run)
    table = pq.read_table(samples_dir / split)
    model = plain_model(job)
    checkpoint.load(model, ckpt)
    path = store_path(samples_dir, job.samples.layout)
    store = SequenceStore.read(path) if path else None
    metrics = evaluate_batches(model, batches(table, job, batch_size, None, store=store), torch.device("cpu"))
    out = {"checkpoint": str(ckpt), "split": split, "model": job.model, **metrics}
    print(json.dumps(out, indent=2), flush=True)
    return out
