"""Every registered model trains on 2 Ray workers with sharded tables, on real MovieLens and on
planted synthetic data: finite metrics, a falling training loss (mean of the last quarter of one
epoch's steps below the first quarter's, rank 0) and a DCP checkpoint that reloads into a freshly
sharded model with the same valid AUC.

All models of one data set share one Ray Train run (`zoo_loop_per_worker`: per model the same
sharded build, collate, train pass, evaluation and checkpoint functions the train job's worker
uses), so the suite pays for one worker-group start per data set instead of one per model. Each
worker reads its shards once, as Arrow batches, and every model collates and trains on those same
batches: a Ray Data iteration takes ~4 s here to deliver its first batch, and the four per model
(train, valid, diagnostics, the reloaded model's valid) were ~70 % of the zoo's time. The train
job's own loop (streamed shards, resume, reports, curves) is tests/test_ray.py's and
test_recovery.py's.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from lifelong.embeddings.plan import describe
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
TWO_STAGE = {"sim_hard", "sim_soft", "eta", "twin", "cain", "lic"}
RESULTS = "zoo.json"


def zoo_loop_per_worker(config: dict) -> None:
    """Ray Train worker: each job in turn is sharded, trained one pass of `max_steps`, evaluated,
    checkpointed and reloaded into a fresh sharded model; rank 0 writes every model's metrics."""
    device, pg = ray.train.torch.get_device(), dist.group.WORLD
    train_shard, valid_shard = ray.train.get_dataset_shard("train"), ray.train.get_dataset_shard("valid")
    store, run_dir = load_store(config), Path(config["run_dir"])
    first = JobSpec.from_dict(config["jobs"][0]).train  # every job of a data set has the same train section
    # the whole shard is read (both ranks' iterations end together) but only the first max_steps batches kept
    train_rows = [b for i, b in enumerate(train_shard.iter_batches(
        batch_size=first.batch_size, batch_format="pyarrow", drop_last=True)) if i < first.max_steps]
    valid_rows = list(valid_shard.iter_batches(batch_size=first.eval_batch_size, batch_format="pyarrow"))
    results = {}
    for job_dict in config["jobs"]:
        job = JobSpec.from_dict(job_dict)
        t = job.train
        torch.manual_seed(t.seed)
        model, optimizer, plan = sharded_model(job, device, pg)
        collate, valid = make_collator(job, store=store), make_eval_collator(job, store=store)
        metrics = fit_epoch(model, optimizer, t, device, map(collate, train_rows), map(valid, valid_rows))
        checkpoint.save(model, run_dir / job.model, job_dict, describe(plan), metrics, optimizer)
        fresh, fresh_optimizer, _ = sharded_model(job, device, pg)
        checkpoint.load(fresh, run_dir / job.model, fresh_optimizer)
        results[job.model] = {**metrics, "reloaded_auc": evaluate(fresh, map(collate, valid_rows), device)["auc"]}
    if dist.get_rank() == 0:
        (run_dir / RESULTS).write_text(json.dumps(results))
    ray.train.report({"models": len(results)})


@pytest.fixture(scope="module", params=sorted(DATA))
def zoo(request, ray_local, tmp_path_factory) -> tuple[str, dict]:
    """One Ray Train run of every model on one data set: (data name, model -> metrics)."""
    data = request.param
    out = tmp_path_factory.mktemp(f"zoo-{data}")
    runs = [run_file({"name": f"zoo-{data}", "output_dir": str(out), "model": m,
                      "model_config": SMALL_K if m in TWO_STAGE else {}, **DATA[data],
                      "train": {**DATA[data]["train"], "diagnostic_batches": 2}, "cluster": {"num_workers": 2}})
            for m in names()]
    samples_dir, meta, _ = prepare(runs[0])  # every model reads the same samples
    jobs = [job_spec(r, meta) for r in runs]
    make_trainer(jobs[0], samples_dir, runs[0].cluster, runs[0].name, out, loop=zoo_loop_per_worker,
                 loop_config={"jobs": [j.to_dict() for j in jobs]}).fit()
    return data, json.loads((out / runs[0].name / RESULTS).read_text())


@pytest.mark.parametrize("model", names())
def test_model_trains_on_two_workers(zoo, model):
    data, results = zoo
    s = results[model]
    assert all(math.isfinite(s[k]) for k in ("valid_auc", "valid_logloss", "train_loss")), s
    assert s["train_loss_end"] < s["train_loss_start"], (s["train_loss_start"], s["train_loss_end"])
    assert s["train_steps"] == DATA[data]["train"]["max_steps"]
    assert s["reloaded_auc"] == pytest.approx(s["valid_auc"], abs=1e-6)  # the checkpoint holds what was trained
    if model in TWO_STAGE:
        assert 0 <= s["valid_gsu_recall"] <= 1 and s["valid_gsu_recall_rows"] > 0, s
    else:
        assert "valid_gsu_recall" not in s
