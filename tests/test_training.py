"""Training that generalises: early stopping on valid AUC with the best epoch's weights restored,
in process (scripted validation scores); on Ray (the same rule through the worker and DCP) it is
tests/test_ray.py's."""
from __future__ import annotations

import itertools
import os

import pytest
import torch

import lifelong.trainers.local as local
import lifelong.trainers.loop as loop
from lifelong.trainers.local import local_optimizer
from lifelong.trainers.loop import EarlyStopping
from lifelong.models.base import loss as ctr_loss
from tests.helpers import tiny_job, tiny_samples


def test_early_stopping_counts_epochs_without_improvement_and_survives_a_restart():
    s = EarlyStopping(2)
    assert s.update(0, {"valid_auc": 0.70}) and not s.stop
    assert not s.update(1, {"valid_auc": 0.69}) and not s.stop
    assert s.update(2, {"valid_auc": 0.71}) and s.bad_epochs == 0  # an improvement resets the count
    assert not s.update(3, {"valid_auc": float("nan")})  # NaN never improves
    again = EarlyStopping(2, s.state())  # as after a resume from a checkpoint
    assert not again.update(4, {"valid_auc": 0.70}) and again.stop and again.best_epoch == 2
    assert again.final(4, 10) == {"best_epoch": 2, "stopped_early": True, "epochs_trained": 5}


def test_lr_decay_scales_every_group_on_each_plateau_epoch_that_does_not_stop():
    s = EarlyStopping(3, lr_decay=0.5)
    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    opt = torch.optim.SGD([{"params": model[0].parameters(), "lr": 0.2}, {"params": model[1].parameters(), "lr": 0.01}])
    base = [g["lr"] for g in opt.param_groups]
    for epoch, auc in enumerate([0.60, 0.50, 0.55, 0.70, 0.40]):  # bad, bad, best, bad
        s.update(epoch, {"valid_auc": auc})
        s.set_lr(model, opt, base)
    assert s.decays == 3 and s.lr_scale == 0.125
    assert [g["lr"] for g in opt.param_groups] == pytest.approx([0.2 * 0.125, 0.01 * 0.125])
    again = EarlyStopping(3, s.state(), lr_decay=0.5)  # resumed: the decay is not lost
    assert not again.update(5, {"valid_auc": 0.3}) and not again.stop and again.decays == 4
    assert not again.update(6, {"valid_auc": 0.3}) and again.stop and again.decays == 4  # stopping epochs never decay
    with pytest.raises(ValueError, match="base learning rates"):
        s.set_lr(model, opt, base[:1])


def test_lr_decay_needs_patience():
    with pytest.raises(ValueError, match="patience >= 2"):
        tiny_job("din", tiny_samples(n_users=2)[1], lr_decay=0.1, patience=1)
    with pytest.raises(ValueError, match="lr_decay"):
        tiny_job("din", tiny_samples(n_users=2)[1], lr_decay=0.0, patience=2)


@pytest.mark.parametrize("patience,scores,stop_after,best", [
    (1, [0.70, 0.60, 0.90, 0.95], 1, 0),  # one bad epoch stops at once
    (2, [0.70, 0.60, 0.80, 0.75, 0.74, 0.99], 4, 2),  # the count restarts after epoch 2
    (3, [0.70, 0.72, 0.74], 2, 2),  # never stops: the last epoch is the best
])
def test_fit_local_stops_early_and_restores_the_best_epochs_weights(monkeypatch, patience, scores, stop_after, best):
    samples, meta = tiny_samples()
    split = samples.num_rows // 2
    job = tiny_job("din", meta, epochs=len(scores), patience=patience, batch_size=32, sparse_lr=0.5,
                   diagnostic_batches=0)
    seen = []  # weights at each validation

    def scripted(model, batches, device, diagnostic_batches):
        seen.append({k: v.clone() for k, v in model.state_dict().items()})
        return {"auc": scores[len(seen) - 1]}

    monkeypatch.setattr(loop, "validate", scripted)
    model, history = local.fit_local(job, samples.slice(0, split), samples.slice(split))
    assert len(seen) == stop_after + 1  # validated epochs 0..stop_after, then stopped
    assert history[-1]["best_epoch"] == best and history[-1]["valid_auc"] == scores[best]
    assert history[-1]["stopped_early"] == (stop_after < len(scores) - 1)
    for k, v in model.state_dict().items():
        assert torch.equal(v, seen[best][k]), k
    item = "sparse.embeddings.embeddings.item.weight"
    assert not torch.equal(seen[0][item], seen[1][item])


def test_fit_local_decays_the_learning_rates_on_a_plateau(monkeypatch):
    samples, meta = tiny_samples()
    split = samples.num_rows // 2
    job = tiny_job("din", meta, epochs=4, patience=3, lr_decay=0.5, batch_size=32, diagnostic_batches=0)
    scores = iter([0.70, 0.60, 0.65, 0.80])
    monkeypatch.setattr(loop, "validate", lambda model, batches, device, diagnostic_batches: {"auc": next(scores)})
    made = []
    monkeypatch.setattr(local, "local_optimizer", lambda job, model: made.append(real(job, model)) or made[-1])
    real = local_optimizer
    _, history = local.fit_local(job, samples.slice(0, split), samples.slice(split))
    assert [h["lr_scale"] for h in history[:4]] == [1.0, 0.5, 0.25, 0.25]
    assert [g["lr"] for g in made[0].param_groups] == pytest.approx([job.train.sparse_lr / 4, job.train.dense_lr / 4])


def test_embedding_l2_adds_the_squares_of_the_rows_a_batch_looks_up_and_decays_no_other_row():
    from lifelong.trainers.inputs import make_collator
    from lifelong.trainers.model_setup import plain_model

    samples, meta = tiny_samples()
    job = tiny_job("sim_soft", meta, users=True)  # side tables too
    torch.manual_seed(0)
    model = plain_model(job)
    model.train()
    batch = make_collator(job)(samples.slice(0, 16))
    plain = ctr_loss(batch, model(batch))
    model.sparse.embedding_l2 = 0.1
    penalty = ctr_loss(batch, model(batch)) - plain
    ref, tables = 0.0, {}
    for ec in (model.sparse.embeddings, model.sparse.side_embeddings):
        for cfg in ec.embedding_configs():
            weight = ec.embeddings[cfg.name].weight
            tables[cfg.name] = weight
            for f in cfg.feature_names:
                if f in batch.sparse.keys():
                    ref = ref + (weight[batch.sparse[f].values()] ** 2).sum()
    assert penalty.item() == pytest.approx(0.1 * ref.item() / batch.size, rel=1e-4)
    assert penalty.item() > 1e-4
    penalty.backward()
    item = tables["item"]
    seen = torch.zeros(item.shape[0], dtype=torch.bool)
    for cfg in model.sparse.embeddings.embedding_configs():
        if cfg.name == "item":
            for f in cfg.feature_names:
                seen[batch.sparse[f].values()] = True
    assert item.grad[~seen].abs().max() == 0  # rows the batch did not read get no decay
    assert item.grad[seen].abs().max() > 0
    model.eval()  # evaluation adds nothing
    assert ctr_loss(batch, model(batch)).item() == pytest.approx(
        torch.nn.functional.binary_cross_entropy_with_logits(model(batch).logits, batch.labels).item())


def test_curves_of_a_resumed_run_drop_the_killed_attempts_later_points(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lifelong.trainers.curves import Curves

    def steps(log_dir):
        acc = EventAccumulator(str(log_dir))
        acc.Reload()
        return [e.step for e in acc.Scalars("train/loss")]

    for purge, d in ((True, tmp_path / "purged"), (False, tmp_path / "plain")):
        killed = Curves(d, log_every=3)
        for step in range(1, 34):  # the attempt dies after step 33; its checkpoint holds step 30
            killed.step(step, 0.5)
        killed.close()
        resumed = Curves(d, log_every=3, start_step=30 if purge else 0)
        for step in range(31, 61):
            resumed.step(step, 0.4)
        resumed.epoch(60, {"valid_auc": 0.7, "train_loss": 0.4, "valid_logloss": float("nan")})
        resumed.close()
        if purge:
            assert steps(d) == list(range(3, 61, 3))
        else:
            assert steps(d).count(33) == 2  # what the purge prevents
    acc = EventAccumulator(str(tmp_path / "purged"))
    acc.Reload()
    assert acc.Scalars("valid/auc")[0].value == pytest.approx(0.7) and "valid/logloss" not in acc.Tags()["scalars"]
    assert Curves(None, log_every=3).writer is None  # ranks other than 0 write nothing


def test_compare_s_plots_and_logistic_baseline_print_no_warnings(tmp_path):
    """A short run has no train-loss points (fewer steps than train.log_every) and the baseline
    steps a sparse optimiser: neither may add a warning to a comparison's console."""
    import warnings

    import numpy as np
    import pyarrow as pa

    from lifelong.trainers.baselines import logistic
    from lifelong.trainers.curves import TB_DIR, Curves, plot_runs

    curves = Curves(tmp_path / "run" / TB_DIR, log_every=10)
    curves.step(2, 0.5)  # below log_every: no train/loss point
    curves.epoch(2, {"valid_auc": 0.6})
    curves.close()
    n = np.arange(200)
    t = pa.table({"user_id": n % 7, "item_id": n % 13, "category_id": n % 3, "timestamp": n * 3600,
                  "label": n % 2})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        plot_runs({"din": [tmp_path / "run"]}, tmp_path / "curves.png", "t")
        scores = logistic(t, t, epochs=1)
    assert (tmp_path / "curves.png").stat().st_size > 0 and scores.shape == (200,) and np.isfinite(scores).all()


def test_local_batches_are_the_same_from_a_chunked_table_and_a_combined_one():
    samples, meta = tiny_samples()
    assert samples.column("hist_item").num_chunks > 1  # one chunk per user, as a build leaves it
    job = tiny_job("sim_hard", meta, {"k": 6})
    for seed in (None, 3):
        a = list(local.batches(samples, job, 50, seed))
        b = list(local.batches(samples.combine_chunks(), job, 50, seed))
        assert len(a) == len(b) == -(-samples.num_rows // 50)
        for x, y in zip(a, b):
            assert torch.equal(x.sparse.values(), y.sparse.values()) and torch.equal(x.labels, y.labels)
            assert torch.equal(x.long_ts, y.long_ts) and torch.equal(x.user_ids, y.user_ids)


def test_max_eval_batches_caps_the_validation_rows_and_the_cli_sets_it(tmp_path):
    from lifelong.jobs.cli import _run_file, parser
    from lifelong.trainers.local import fit_local

    samples, meta = tiny_samples()
    train, valid = samples.slice(0, 64), samples.slice(64)
    assert valid.num_rows > 2 * 16
    for cap, rows in ((2, 2 * 16), (0, valid.num_rows)):
        _, history = fit_local(tiny_job("din", meta, batch_size=32, eval_batch_size=16, max_eval_batches=cap), train,
                               valid)
        assert history[-1]["valid_samples"] == rows
    cfg = tmp_path / "r.yaml"
    cfg.write_text("model: din\n")
    run = _run_file(parser().parse_args(["train", "--config", str(cfg), "--max-steps", "3", "--max-eval-batches", "2"]))
    assert (run.train.max_steps, run.train.max_eval_batches) == (3, 2)
    with pytest.raises(ValueError, match="max_eval_batches must be >= 0"):
        tiny_job("din", meta, max_eval_batches=-1)


def test_training_processes_keep_freed_memory_unless_told_not_to(monkeypatch):
    import platform

    from lifelong.trainers import allocator

    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        assert not allocator.keep_freed_memory()  # other C libraries: nothing changed
        return
    assert allocator.keep_freed_memory()  # glibc took both thresholds
    monkeypatch.setenv(allocator.ENV, "default")
    assert not allocator.keep_freed_memory()


def test_frozen_objects_are_not_scanned_again_and_later_garbage_is_still_collected():
    import gc
    import weakref

    from lifelong.trainers import allocator

    class Node:
        pass

    def cycle() -> weakref.ref:
        a, b = Node(), Node()
        a.other, b.other = b, a
        return weakref.ref(a)

    before = cycle()  # cyclic garbage made before the freeze: frozen with the rest, never collected
    try:
        frozen = allocator.freeze_long_lived()
        assert frozen == gc.get_freeze_count() > 1000  # this process's imports
        after = cycle()
        gc.collect()
        assert after() is None  # made later: collected as before
        assert before() is not None
    finally:
        gc.unfreeze()  # the test process's collector as it was
    gc.collect()
    assert before() is None


def test_each_worker_gets_an_even_contiguous_share_of_the_cores():
    from lifelong.trainers.affinity import share

    cores = [5, 1, 3, 7]
    assert [share(cores, r, 2) for r in range(2)] == [[1, 3], [5, 7]]
    assert [share(cores, r, 3) for r in range(3)] == [[1], [3], [5]]  # core 7 left to Ray's other processes
    assert share(cores, 0, 1) == [1, 3, 5, 7]  # one worker keeps them all
    assert share(cores, 0, 5) is None and share([0, 1], 2, 2) is None  # fewer cores than workers; bad rank


BIND_SCRIPT = """
import json, os, sys, threading
from lifelong.trainers.affinity import bind_worker
stop = threading.Event()
before = threading.Thread(target=stop.wait); before.start()
mine = bind_worker(int(sys.argv[1]), int(sys.argv[2]))
later = {}
after = threading.Thread(target=lambda: later.update(cores=sorted(os.sched_getaffinity(0))))
after.start(); after.join()
threads = {t: sorted(os.sched_getaffinity(int(t))) for t in os.listdir("/proc/self/task")}
stop.set(); before.join()
print(json.dumps({"mine": mine, "threads": threads, "later": later["cores"]}))
"""


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity") or len(os.sched_getaffinity(0)) < 2,
                    reason="needs sched_setaffinity and two cores")
def test_a_bound_worker_runs_every_thread_on_its_share_and_new_threads_inherit_it():
    import json
    import subprocess
    import sys

    from lifelong.trainers.affinity import share

    cores = sorted(os.sched_getaffinity(0))
    for rank in (0, 1):
        out = json.loads(subprocess.run([sys.executable, "-c", BIND_SCRIPT, str(rank), "2"], check=True,
                                        capture_output=True, text=True).stdout)
        assert out["mine"] == share(cores, rank, 2)
        assert len(out["threads"]) >= 2 and all(c == out["mine"] for c in out["threads"].values())
        assert out["later"] == out["mine"]
    out = json.loads(subprocess.run([sys.executable, "-c", BIND_SCRIPT, "0", str(len(cores) + 1)], check=True,
                                    capture_output=True, text=True).stdout)
    assert out["mine"] is None and all(c == cores for c in out["threads"].values())  # more workers than cores


def test_cores_are_bound_by_default_only_on_the_embedded_ray_this_process_started(monkeypatch):
    from lifelong.cluster import connect
    from lifelong.cluster.connect import ClusterConfig, resolve

    monkeypatch.setattr(connect, "started_here", lambda: True)
    assert resolve(ClusterConfig(), {"CPU": 4.0}).bind_cores is True
    assert resolve(ClusterConfig(bind_cores=False), {"CPU": 4.0}).bind_cores is False
    monkeypatch.setattr(connect, "started_here", lambda: False)  # a cluster, or `ray job submit`'s
    assert resolve(ClusterConfig(), {"CPU": 4.0}).bind_cores is False
    assert resolve(ClusterConfig(bind_cores=True), {"CPU": 4.0}).bind_cores is True


def test_the_wait_for_the_first_batch_is_reported_beside_the_steady_rate():
    """`train_epoch`'s samples/s counts the whole pass; `first_batch_s` is the wait for the first batch
    (a data pipeline's start) and `steady_samples_per_s` the rate of every batch after it."""
    import time

    samples, meta = tiny_samples()
    job = tiny_job("din", meta, batch_size=16)
    torch.manual_seed(0)
    model = local.plain_model(job)

    def slow_start():
        time.sleep(0.5)  # the pipeline's start
        yield from local.batches(samples, job, 16, 0)

    stats = loop.train_epoch(model, local_optimizer(job, model), slow_start(), torch.device("cpu"), show=False)
    assert stats["steps"] > 3 and stats["first_batch_s"] >= 0.5
    whole = stats["samples"] / stats["samples_per_s"]  # seconds
    steady = (stats["samples"] - 16) / stats["steady_samples_per_s"]
    assert whole - steady == pytest.approx(stats["first_batch_s"], abs=1e-3)
    assert stats["steady_samples_per_s"] > stats["samples_per_s"]


def test_a_steps_time_is_split_into_phases_that_add_up_to_the_pass():
    """`train_epoch`'s `step_ms` phases add up to the pass less the wait for the first batch; a slow
    iterator's wait is wall time in `data` but not the training thread's CPU; the model's passes are
    CPU time; no phase's CPU exceeds its wall time."""
    import time

    from lifelong.trainers.steptime import PHASES

    samples, meta = tiny_samples()
    job = tiny_job("din", meta, batch_size=16)
    torch.manual_seed(0)
    model = local.plain_model(job)

    def slow():
        for i, b in enumerate(local.batches(samples, job, 16, 0)):
            if i:
                time.sleep(0.02)  # every batch after the first keeps the loop waiting
            yield b

    stats = loop.train_epoch(model, local_optimizer(job, model), slow(), torch.device("cpu"), show=False)
    wall, cpu, steps = stats["step_ms"], stats["step_cpu_ms"], stats["steps"]
    assert list(wall) == list(cpu) == list(PHASES) and steps > 3
    steady_s = (stats["samples"] - 16) / stats["steady_samples_per_s"]
    assert sum(wall.values()) * steps / 1e3 == pytest.approx(steady_s, rel=0.02, abs=0.005)
    # every batch after the first sleeps 20 ms; the lockstep fetches one batch ahead, so the second
    # batch's sleep falls before the first step, when the clock starts: steps - 2 sleeps are clocked
    assert wall["data"] >= 20 * (steps - 2) / steps and cpu["data"] < 0.5 * wall["data"]
    assert cpu["forward"] > 0 and cpu["backward"] > 0 and cpu["optimizer"] > 0
    assert all(cpu[p] <= wall[p] + 0.05 for p in PHASES), (wall, cpu)


def test_step_times_are_means_per_step_and_rank():
    from lifelong.trainers.steptime import PHASES, per_step

    n = len(PHASES)
    totals = [float(i + 1) for i in range(n)] + [0.5 * (i + 1) for i in range(n)]  # seconds, summed over 2 ranks
    got = per_step(totals, steps=4, ranks=2)
    assert got["step_ms"] == {p: 1e3 * (i + 1) / 8 for i, p in enumerate(PHASES)}
    assert got["step_cpu_ms"] == {p: 1e3 * 0.5 * (i + 1) / 8 for i, p in enumerate(PHASES)}


def test_counted_steps_stop_at_every_ranks_count_and_a_short_shard_fails_loudly():
    """On static shards the step count is known up front: a rank with 5 batches where every rank has
    3 trains 3 and counts 2 unused; resumed after 2, it trains the last 1; a rank whose shard gives
    fewer batches than counted raises (its peers would otherwise wait in a collective)."""
    from lifelong.trainers.ingest import EpochSteps

    samples, meta = tiny_samples()
    job = tiny_job("din", meta, batch_size=16)
    torch.manual_seed(0)
    model = local.plain_model(job)
    opt = local_optimizer(job, model)
    five = list(itertools.islice(local.batches(samples, job, 16, 0), 5))
    assert len(five) == 5
    stats = loop.train_epoch(model, opt, iter(five), torch.device("cpu"), show=False,
                             steps_known=EpochSteps(every_rank=3, own=5))
    assert stats["steps"] == 3 and stats["skipped_batches"] == 2 and stats["samples"] == 48
    stats = loop.train_epoch(model, opt, iter(five), torch.device("cpu"), show=False, start=2,
                             steps_known=EpochSteps(every_rank=3, own=5))
    assert stats["steps"] == 1 and stats["skipped_batches"] == 2
    with pytest.raises(RuntimeError, match="gave 2 batches, fewer than the 3"):
        loop.train_epoch(model, opt, iter(five[:2]), torch.device("cpu"), show=False,
                         steps_known=EpochSteps(every_rank=3, own=3))


def _lockstep_rank(rank, init_file, out):
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    skipped: list[int] = []
    got = []
    for b in loop.in_lockstep(iter(range([5, 3][rank])), torch.device("cpu"), skipped):
        t = torch.tensor([b])
        dist.all_reduce(t)  # a step's own collective between the lockstep's checks
        got.append((b, int(t)))
    torch.save({"got": got, "skipped": skipped}, f"{out}.{rank}")
    dist.destroy_process_group()


def test_lockstep_stops_every_rank_when_one_runs_out():
    """Rank 0 has 5 batches, rank 1 has 3: both train 3 (their steps' collectives matched) and rank 0
    counts 2 unused; the check runs ahead of each step, so steps' own collectives stay in order."""
    import os
    import tempfile

    from tests.helpers import start_ranks

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "r")
        start_ranks(_lockstep_rank, (os.path.join(tmp, "pg"), out), 2)
        r0, r1 = (torch.load(f"{out}.{r}", weights_only=True) for r in range(2))
    assert r0["got"] == r1["got"] == [(0, 0), (1, 2), (2, 4)]
    assert r0["skipped"] == [2] and r1["skipped"] == [0]
