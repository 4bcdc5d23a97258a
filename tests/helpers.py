"""Shared test fixtures: tiny jobs and sample tables built by the real sample builder."""
from __future__ import annotations


from lifelong.data.samples import SampleConfig, build_local
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.embeddings.spec import FeatureSpec
from lifelong.trainers.config import JobSpec, TrainConfig


def tiny_samples(n_users: int = 12, seq_len: int = 300, seed: int = 0, max_len: int = 64, short_len: int = 8):
    # dense old interests (2 x 60 events, none in the last 8) so that short windows of the tiny
    # histories hold many events of a target's category
    syn = SyntheticConfig(n_users=n_users, seq_len=seq_len, n_impressions=20, n_categories=32, n_background=8,
                          items_per_category=5, n_interests=2, interest_events=60, guard=8, seed=seed)
    log, meta = generate(syn)
    samples = build_local(log, SampleConfig(max_len=max_len, short_len=short_len,
                                            sample_behaviors=(1,), history_behaviors=(0,)))
    return samples, meta


def tiny_job(model: str, meta, model_config=None, max_len=64, short_len=8, users: bool = False, **train) -> JobSpec:
    """A small job; its tables go to TorchRec's planner unless `replicate_mb` is given (the tests
    built on it check the sharded path; `TrainConfig.replicate_mb` would replicate tables this small)."""
    train.setdefault("replicate_mb", 0.0)
    return JobSpec(model=model, model_config=model_config or {},
                   features=FeatureSpec(meta.n_items, meta.n_categories, 8, meta.n_users if users else 0),
                   samples=SampleConfig(max_len=max_len, short_len=short_len),
                   train=TrainConfig(**train))


def train_steps(job: JobSpec, model, opt, tables: list, device=None) -> None:
    """One training step per sample table (collated, moved to `device` if given)."""
    from lifelong.models.base import loss as ctr_loss
    from lifelong.trainers.inputs import make_collator

    collate = make_collator(job)
    for t in tables:
        b = collate(t) if device is None else collate(t).to(device)
        loss = ctr_loss(b, model(b))
        opt.zero_grad()
        loss.backward()
        opt.step()


def local_steps(job: JobSpec, tables: list):
    """The in-process trainer's steps, one per sample table, from a seed-0 model: (the trained
    model, its initial state dict)."""
    import torch

    from lifelong.trainers.local import local_optimizer
    from lifelong.trainers.model_setup import plain_model

    torch.manual_seed(0)
    model = plain_model(job)
    init = {k: v.clone() for k, v in model.state_dict().items()}
    train_steps(job, model, local_optimizer(job, model), tables)
    return model, init


def store_run(tmp_path, name: str, model: str, model_config: dict, sharding=None, **train):
    """A small Ray run file: planted synthetic log (60 users x 400 events), store layout, 2 workers."""
    from lifelong.jobs.config import run_file

    return run_file({"name": name, "output_dir": str(tmp_path), "model": model, "model_config": model_config,
                     "data": {"format": "synthetic", "synthetic": {"n_users": 60, "seq_len": 400, "guard": 40,
                                                                   "n_impressions": 20, "seed": 9}},
                     "samples": {"max_len": 256, "short_len": 20, "sample_behaviors": [1], "history_behaviors": [0],
                                 "layout": "store"},
                     "train": {"batch_size": 64, "epochs": 1, "diagnostic_batches": 2, **train},
                     "sharding": sharding or {}, "cluster": {"num_workers": 2}})


def check_shard_bench(out_dir, run) -> None:
    """What a `lifelong shard-bench` run on 1 and 2 workers must have written under `out_dir`: every
    plan the CPU allows ran (data-parallel as replicated collections), and the measurements behave as
    the plans say (row-wise halves memory per rank, one rank moves nothing, data-parallel replaces the
    all-to-alls with an all-reduce of the tables); the run file's `sharding` constraints hold in the
    planner's plan; no scratch runs left."""
    import json
    from pathlib import Path

    import pytest

    out = Path(out_dir) / run.name
    rows = json.loads((out / "shard_bench.json").read_text())
    by = {(r["world_size"], r["plan"]): r for r in rows}
    plans = ["planner", "data_parallel", "table_wise", "column_wise", "row_wise"]
    assert sorted(by) == sorted((w, p) for w in (1, 2) for p in plans)
    errors = {k: r["error"] for k, r in by.items() if r.get("error")}
    assert not errors, errors
    # On CPU, TorchRec's data-parallel EmbeddingCollection kernel is unusable (one row per bag, not per
    # id): there the forced data_parallel plan replicates the collection under DDP, and says so.
    for w in (1, 2):
        assert by[w, "data_parallel"]["note"].startswith("replicated on cpu (data_parallel): item, cat")
        assert "data_parallel (replicated" in by[w, "data_parallel"]["plan_text"]
    # with no constraints, a model this small is replicated on CPU by default (`train.replicate_mb`), and
    # the planner's row is the plan `train` uses
    replicated_default = not run.sharding and run.train.replicate_mb > 0
    for w in (1, 2):
        lines = by[w, "planner"]["plan_text"].splitlines()
        assert all("data_parallel (replicated" in line for line in lines) == replicated_default, lines
    for r in rows:
        assert r["samples_per_s"] > 0 and len(r["emb_mb"]) == len(r["est_mb"]) == r["world_size"]
        assert all(x > 0 for x in r["est_mb"]) or r["plan"] in ("table_wise", "data_parallel") or (
            r["plan"] == "planner" and replicated_default)  # the planner's estimates leave replicated tables out
    for table, types in run.sharding.items():
        assert any(f"{table}: {t}" in by[2, "planner"]["plan_text"] for t in types), (table, types)
    for p in plans:
        if (1, p) not in errors:
            assert by[1, p]["a2a_mb_per_step"] == [0.0] and by[1, p]["allreduce_mb_per_step"] == 0.0
    full = by[1, "table_wise"]["emb_mb"][0]
    rw = by[2, "row_wise"]["emb_mb"]
    assert all(abs(x - full / 2) < 0.1 * full for x in rw), (rw, full)  # each rank holds half the rows
    assert by[2, "data_parallel"]["emb_mb"] == pytest.approx([full, full], rel=0.05)  # replicated
    assert by[2, "data_parallel"]["a2a_mb_per_step"] == [0.0, 0.0]
    # DP all-reduces every table's gradient beyond the dense part.
    assert by[2, "data_parallel"]["allreduce_mb_per_step"] > by[2, "table_wise"]["allreduce_mb_per_step"]
    for p in ("table_wise", "row_wise", "column_wise"):
        assert sum(by[2, p]["a2a_mb_per_step"]) > 0
    for f in ("shard_bench.md", "shard_bench.csv", "shard_bench.png", "plans.txt"):
        assert (out / f).stat().st_size > 0
    assert "# world 2, planner\n" in (out / "plans.txt").read_text()
    assert not list(out.parent.glob(f"{run.name}.w*")) and not [p for p in out.iterdir() if p.name.startswith("w")]


# What every multi-process test's ranks import: loaded once, in the fork server they are forked from.
RANK_PRELOAD = ["torch", "torchrec", "lifelong.trainers.model_setup", "lifelong.trainers.checkpoint",
                "lifelong.embeddings.state", "lifelong.trainers.inputs", "tests.helpers"]


def start_ranks(fn, args: tuple, nprocs: int, timeout_s: float = 600.0) -> None:
    """Run `fn(rank, *args)` in `nprocs` processes forked from a fork server that imported torch,
    TorchRec and lifelong once (a spawned rank spends ~4 s importing them); raises if a rank fails or
    the ranks are still running after `timeout_s`."""
    import multiprocessing
    import time

    import torch.multiprocessing as mp

    multiprocessing.get_context("forkserver").set_forkserver_preload(RANK_PRELOAD + [fn.__module__])
    ranks = mp.start_processes(fn, args=args, nprocs=nprocs, join=False, start_method="forkserver")
    deadline = time.monotonic() + timeout_s
    while not ranks.join(timeout=1):
        if time.monotonic() > deadline:
            for p in ranks.processes:
                p.kill()
            raise TimeoutError(f"{nprocs} rank(s) of {fn.__name__} still running after {timeout_s:.0f} s")
