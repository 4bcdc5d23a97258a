"""Every registered model trains on 2 Ray workers with sharded tables, on real MovieLens and on
planted synthetic data: finite metrics, a falling training loss (the loss of the first train batch,
scored without dropout before and after the pass, on rank 0: the same rows, so batch-to-batch
label noise does not enter; 40 steps' quarter means differed by less than that noise for the short
models on the planted log) and a DCP checkpoint that reloads into a freshly sharded model with the
same valid AUC.

All models of both data sets share one Ray Train run (`zoo_loop_per_worker`: per model the same
sharded build, collate, train pass, evaluation and checkpoint functions the train job's worker
uses), so the suite pays for one worker-group start instead of one per model. Each worker reads its
rows of each data set's sample files once (rank-strided batches of the shuffled train split and the
first `VALID_BATCHES` validation batches of its own), and every model collates and trains on those
same batches. The train job's own loop (streamed Ray Data shards, resume, reports, curves) is
tests/test_ray.py's and test_recovery.py's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from lifelong.embeddings.plan import describe
from lifelong.data.store import store_path
from lifelong.jobs.config import run_file
from lifelong.jobs.prepare import prepare
from lifelong.jobs.train import job_spec
from lifelong.models import names
from lifelong.trainers import checkpoint
from lifelong.trainers.config import JobSpec
from lifelong.trainers.inputs import load_store, make_collator, make_eval_collator
from lifelong.trainers.loop import evaluate, fit_epoch
from lifelong.trainers.model_setup import sharded_model
from lifelong.trainers.trainer import make_trainer
from lifelong.models.base import loss as ctr_loss

pytestmark = pytest.mark.ray

DATA = {
    "movielens": {"data": {"format": "movielens"}, "samples": {"max_len": 64, "short_len": 20},
                  "train": {"batch_size": 256, "max_steps": 40, "dense_lr": 3e-3}},
    # planted log with dense old interests (3 x 60 events, reaching into the short window: guard 10)
    # and a low click rate (0.26): every model, short or lifelong, has something to learn in 40
    # steps (with the defaults' 0.45 the loss moved by 0.005-0.017, within noise)
    "synthetic": {"data": {"format": "synthetic",
                           "synthetic": {"n_users": 200, "seq_len": 400, "n_impressions": 40, "guard": 10,
                                         "interest_events": 60, "interest_p": 0.5, "unseen_p": 0.02, "seed": 2}},
                  "samples": {"max_len": 256, "short_len": 30, "sample_behaviors": [1], "history_behaviors": [0]},
                  "train": {"batch_size": 64, "max_steps": 40, "dense_lr": 3e-3}},
}
SMALL_K = {"k": 16}
VALID_BATCHES = 2  # per rank: up to 2 x 2 x 1,024 validation rows score each model and its reloaded copy
TWO_STAGE = {"sim_hard", "sim_soft", "eta", "twin", "cain", "lic"}
RESULTS = "zoo.json"


@torch.no_grad()
def first_batch_loss(model, batch, device) -> float:
    """The CTR loss of one batch in eval mode (no dropout, no auxiliary loss); the model is left training."""
    model.eval()
    batch = batch.to(device)
    loss = ctr_loss(batch, model(batch)).item()
    model.train()
    return loss


def zoo_loop_per_worker(config: dict) -> None:
    """Ray Train worker: for each data set, each job in turn is sharded, trained one pass of
    `max_steps`, evaluated, checkpointed and reloaded into a fresh sharded model; rank 0 writes every
    model's metrics."""
    device, pg = ray.train.torch.get_device(), dist.group.WORLD
    rank, world, run_dir = dist.get_rank(), dist.get_world_size(), Path(config["run_dir"])
    results: dict = {}
    for data, spec in config["data"].items():
        store = load_store(spec)
        first = JobSpec.from_dict(spec["jobs"][0]).train  # every job of a data set has the same train section
        train, valid = (pq.read_table(Path(spec["samples"]) / split) for split in ("train", "valid"))
        b, eb = first.batch_size, first.eval_batch_size
        train_rows = [train.slice((i * world + rank) * b, b) for i in range(first.max_steps)]
        n = min(VALID_BATCHES * eb, valid.num_rows // world)  # this rank's validation rows, in batches
        valid_rows = [valid.slice(rank * n + i, min(eb, n - i)) for i in range(0, n, eb)]
        assert train_rows[-1].num_rows == b and n > 0
        for job_dict in spec["jobs"]:
            job = JobSpec.from_dict(job_dict)
            t = job.train
            torch.manual_seed(t.seed)
            model, optimizer, plan = sharded_model(job, device, pg)
            collate, valid_collate = make_collator(job, store=store), make_eval_collator(job, store=store)
            before = first_batch_loss(model, collate(train_rows[0]), device)
            metrics = fit_epoch(model, optimizer, t, device, map(collate, train_rows), map(valid_collate, valid_rows))
            metrics["first_batch_loss"] = [before, first_batch_loss(model, collate(train_rows[0]), device)]
            path = run_dir / data / job.model
            checkpoint.save(model, path, job_dict, describe(plan), metrics, optimizer)
            fresh, fresh_optimizer, _ = sharded_model(job, device, pg)
            checkpoint.load(fresh, path, fresh_optimizer)
            results.setdefault(data, {})[job.model] = {
                **metrics, "reloaded_auc": evaluate(fresh, map(collate, valid_rows), device)["auc"]}
    if rank == 0:
        (run_dir / RESULTS).write_text(json.dumps(results))
    ray.train.report({"models": sum(map(len, results.values()))})


@pytest.fixture(scope="module")
def zoo(ray_local, tmp_path_factory) -> dict:
    """One Ray Train run of every model on every data set: data name -> model -> metrics."""
    out = tmp_path_factory.mktemp("zoo")
    data, first = {}, None
    for name in sorted(DATA):
        runs = [run_file({"name": "zoo", "output_dir": str(out), "model": m,
                          "model_config": SMALL_K if m in TWO_STAGE else {}, **DATA[name],
                          "train": {**DATA[name]["train"], "diagnostic_batches": 2}, "cluster": {"num_workers": 2}})
                for m in names()]
        samples_dir, meta, _ = prepare(runs[0])  # every model of a data set reads the same samples
        store = store_path(samples_dir, runs[0].samples.layout)
        data[name] = {"samples": str(samples_dir), "store": str(store) if store else None,
                      "jobs": [job_spec(r, meta).to_dict() for r in runs]}
        first = first or (runs[0], samples_dir, data[name]["jobs"][0])
    run, samples_dir, job = first  # its splits are the Ray Data sets Ray Train requires; the loop reads files
    make_trainer(JobSpec.from_dict(job), samples_dir, run.cluster, run.name, out, loop=zoo_loop_per_worker,
                 loop_config={"data": data}).fit()
    return json.loads((out / run.name / RESULTS).read_text())


@pytest.mark.parametrize("data", sorted(DATA))
@pytest.mark.parametrize("model", names())
def test_model_trains_on_two_workers(zoo, data, model):
    s = zoo[data][model]
    assert all(math.isfinite(s[k]) for k in ("valid_auc", "valid_logloss", "train_loss")), s
    before, after = s["first_batch_loss"]
    assert after < before - 0.01, (before, after)
    assert s["train_steps"] == DATA[data]["train"]["max_steps"]
    assert s["reloaded_auc"] == pytest.approx(s["valid_auc"], abs=1e-6)  # the checkpoint holds what was trained
    if model in TWO_STAGE:
        assert 0 <= s["valid_gsu_recall"] <= 1 and s["valid_gsu_recall_rows"] > 0, s
    else:
        assert "valid_gsu_recall" not in s
