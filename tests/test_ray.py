"""Ray end to end: Ray Data sample building, a 2-worker TorchTrainer run with sharded tables, and
early stopping, the key cache and the store layout on two workers."""
from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from lifelong.data.samples import SPLITS, SampleConfig, build_local
from lifelong.data.synthetic import SyntheticConfig, generate
from lifelong.jobs.config import run_file
from lifelong.jobs.train import train
from tests.helpers import store_run

pytestmark = pytest.mark.ray
SORT = [("user_id", "ascending"), ("timestamp", "ascending"), ("item_id", "ascending")]


def test_same_samples_on_one_or_two_workers(ray_local, tmp_path):
    from lifelong.data.samples import build_samples

    log, _ = generate(SyntheticConfig(n_users=40, seq_len=300, n_impressions=20, n_categories=40, guard=40, seed=4))
    cfg = SampleConfig(max_len=64, short_len=8, sample_behaviors=(1,), history_behaviors=(0,))
    reports = {n: build_samples(log, cfg, tmp_path / str(n), num_workers=n) for n in (1, 2)}
    sizes = [r.pop("bytes") for r in reports.values()]  # file sizes depend on the partitioning
    assert reports[1] == reports[2] and all(s["train"] > 0 for s in sizes)
    local = build_local(log, cfg)
    for code, split in enumerate(SPLITS):
        one = pq.read_table(tmp_path / "1" / split).sort_by(SORT)
        two = pq.read_table(tmp_path / "2" / split).sort_by(SORT)
        assert one.num_rows > 0 and one.equals(two)
        want = local.filter(pa.compute.equal(local["split"], code)).drop_columns(["split"]).sort_by(SORT)
        assert one.equals(want)
    # the train split is written in one seeded order: users interleave, a rebuild repeats it, another seed not
    order = pq.read_table(tmp_path / "2" / "train")
    users = order["user_id"].to_numpy()
    assert (users[1:] != users[:-1]).mean() > 0.5  # grouped by user it would change ~once per user
    build_samples(log, cfg, tmp_path / "again", num_workers=2)
    assert pq.read_table(tmp_path / "again" / "train").equals(order)
    build_samples(log, replace(cfg, shuffle_seed=1), tmp_path / "seed1", num_workers=2)
    other = pq.read_table(tmp_path / "seed1" / "train")
    assert not other.equals(order) and other.sort_by(SORT).equals(order.sort_by(SORT))


def test_a_small_split_is_read_once_per_job_and_a_large_one_every_epoch(ray_local, tmp_path):
    from ray.data.dataset import MaterializedDataset

    from lifelong.trainers.trainer import read_samples

    table = pa.table({"user_id": list(range(500)), "label": [i % 2 for i in range(500)]})
    for i in range(2):
        pq.write_table(table.slice(250 * i, 250), tmp_path / f"part-{i}.parquet")
    small = read_samples(tmp_path, "tasks", materialize_mb=1, ordered=True)
    assert isinstance(small, MaterializedDataset)
    assert small.to_arrow_refs() and small.take_all()[:3] == [{"user_id": i, "label": i % 2} for i in range(3)]
    for cap in (0, 0.0001):  # never, or a cap below the files' size: read lazily, every pass
        assert not isinstance(read_samples(tmp_path, "tasks", materialize_mb=cap), MaterializedDataset)
    assert read_samples(tmp_path, "tasks").count() == 500


def test_a_materialized_split_is_cut_once_into_static_shards_that_keep_every_row(ray_local, tmp_path):
    import ray.data
    from ray.data._internal.iterator.stream_split_iterator import StreamSplitDataIterator

    from lifelong.trainers.ingest import StaticSplitConfig, shard_bounds, static_steps

    assert shard_bounds(11, 3) == [3, 7] and shard_bounds(11, 1) == []
    rows = ray.data.from_items([{"i": i} for i in range(11)], override_num_blocks=4)
    config = StaticSplitConfig(datasets_to_split=["train"])
    for world in (1, 3):
        shards = [s["train"] for s in config.configure({"train": rows.materialize()}, world, None, None)]
        seen = [[r["i"] for r in shard.iter_rows()] for shard in shards]
        assert sorted(map(len, seen)) == sorted(b - a for a, b in zip([0, *shard_bounds(11, world)],
                                                                       [*shard_bounds(11, world), 11]))
        assert sorted(i for s in seen for i in s) == list(range(11))  # every row, once
        assert [[r["i"] for r in shard.iter_rows()] for shard in shards] == seen  # the next epoch: the same rows
        # the workers' step counts, from the row count alone, match the shards cut into batches of 2
        assert config.static_rows({"train": rows.materialize()}) == {"train": 11}
        for rank in range(world):
            steps = static_steps(11, world, rank, 2)
            assert steps.own == len(seen[rank]) // 2 and steps.every_rank == min(map(len, seen)) // 2
    # a streamed split, or one not split, keeps Ray's own handling
    lazy = rows.map_batches(lambda batch: batch)  # `from_items` is itself materialized
    streamed = config.configure({"train": lazy, "test": rows}, 2, None, None)
    assert all(isinstance(s["train"], StreamSplitDataIterator) for s in streamed)
    assert config.static_rows({"train": lazy, "test": rows}) == {}  # streamed, or not split: no count
    assert [sum(1 for _ in s["test"].iter_rows()) for s in streamed] == [11, 11]


def test_two_worker_run_on_movielens(ray_local, tmp_path):
    """AUC must clear 0.55: with ~10k validation samples at ~51% positives the standard error of
    an AUC under the null is about 0.003, so 0.55 is >15 standard errors above chance."""
    run = run_file({"name": "e2e", "output_dir": str(tmp_path), "model": "sim_hard", "model_config": {"k": 30},
                    "samples": {"max_len": 128, "short_len": 20},
                    "sharding": {"item": ["row_wise"], "cat": ["table_wise"]},
                    "train": {"batch_size": 256, "epochs": 1}, "cluster": {"num_workers": 2}})
    summary = train(run)
    assert summary["valid_auc"] > 0.55 and summary["valid_gauc"] > 0.52, summary
    assert summary["valid_gauc_users"] > 20 and summary["train_skipped_batches"] == 0
    assert summary["valid_samples"] == 10_006  # evaluation drops no row
    # Training sees every row but each worker's last partial batch (drop_last keeps steps equal).
    assert 79_634 - 2 * 256 < summary["train_samples"] <= 79_634
    ckpt = Path(summary["checkpoint"])
    assert {"__0_0.distcp", "__1_0.distcp", ".metadata", "job.json"} <= {p.name for p in ckpt.iterdir()}
    plan = (tmp_path / "e2e" / "plan.txt").read_text()
    assert "item: row_wise" in plan and "cat: table_wise" in plan
    assert json.loads((tmp_path / "e2e" / "summary.json").read_text())["model"] == "sim_hard"
    # on the embedded Ray this process started, each worker runs on its own half of the cores
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if len(cores) >= 2 and hasattr(os, "sched_setaffinity"):
        half = len(cores) // 2
        assert summary["train_worker_cores"] == [cores[:half], cores[half:2 * half]], summary["train_worker_cores"]
    # where the steps' time went, mean over both workers: every phase, adding up to the steady pass
    wall, cpu = summary["train_step_ms"], summary["train_step_cpu_ms"]
    assert set(wall) == set(cpu) == {"data", "forward", "backward", "optimizer", "other"}
    assert cpu["forward"] > 0 and cpu["backward"] > 0 and all(cpu[p] <= wall[p] + 0.05 for p in wall)
    steady_s = (summary["train_samples"] - 2 * 256) / summary["train_steady_samples_per_s"]
    assert sum(wall.values()) * summary["train_steps"] / 1e3 == pytest.approx(steady_s, rel=0.1)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curves = EventAccumulator(str(tmp_path / "e2e" / "tensorboard"))
    curves.Reload()
    scalar = lambda tag: [(e.step, e.value) for e in curves.Scalars(tag)]  # noqa: E731
    steps = summary["global_step"]
    assert [s for s, _ in scalar("train/loss")] == list(range(50, steps + 1, 50))  # every log_every steps
    assert scalar("valid/auc") == [(steps, pytest.approx(summary["valid_auc"], abs=1e-6))]
    assert scalar("train/samples_per_s")[0][1] == pytest.approx(summary["train_samples_per_s"], rel=1e-5)


@pytest.fixture(scope="module")
def store_runs(ray_local, tmp_path_factory) -> tuple[Path, dict]:
    """Two runs on the same planted store-layout samples, trained in one Ray Train run (`train_runs`,
    as `lifelong compare` trains its runs; the worker's per-run loop is `train`'s): TWIN with the key
    cache, and DIN stopping early. Returns the output directory and each run's summary by name."""
    from lifelong.jobs.prepare import prepare
    from lifelong.jobs.train import train_runs

    out = tmp_path_factory.mktemp("store")
    runs = {"cached": store_run(out, "cached", "twin", {"k": 16}, {"item": ["row_wise"]}, key_cache_every=4,
                                dedup_ids=True),
            # learning rates 0: valid AUC cannot improve after epoch 0
            "stops": store_run(out, "stops", "din", {}, epochs=3, patience=1, max_steps=3, sparse_lr=0.0,
                               dense_lr=0.0, diagnostic_batches=0)}
    summaries = train_runs(list(runs.values()), "store", prepare(runs["cached"]))
    return out, dict(zip(runs, summaries))


def test_early_stopping_on_ray_stops_restores_and_reports(store_runs):
    """Patience 1 stops after epoch 1 of 3 and the run reports epoch 0's metrics, written as the final
    checkpoint; the best weights live in the run directory (DCP, every rank's shards)."""
    from lifelong.trainers import checkpoint

    out, summaries = store_runs
    s = summaries["stops"]
    assert s["best_epoch"] == 0 and s["stopped_early"] and s["epochs_trained"] == 2, s
    assert s["global_step"] == 6 and s["epoch"] == 0
    best = out / "stops" / "best"
    assert checkpoint.incomplete(best) is not None  # no trainer state: never a resume candidate ...
    assert json.loads((best / checkpoint.METRICS_FILE).read_text())["epoch"] == 0  # ... but epoch 0's weights
    assert checkpoint.latest(out / "stops", log=lambda _: None).parent == out / "stops"


def test_key_cache_and_store_layout_train_on_ray_sharded_like_the_source_and_evaluate(store_runs):
    """The key cache (TWIN, refreshed every 4 steps, tables sharded like the item table) and the store
    layout (histories once per user, read by every worker)."""
    from lifelong.data.store import SequenceStore
    from lifelong.jobs.evaluate import evaluate

    out, summaries = store_runs
    s = summaries["cached"]
    steps = s["train_steps"]
    assert steps > 4 and s["key_cache_refreshes"] == -(-steps // 4) + 1  # every 4 steps, then before evaluation
    assert 0 < s["key_cache_rel_change"] < 1 and 0 < s["key_cache_topk_overlap"] <= 1
    assert 0 <= s["valid_auc"] <= 1 and s["valid_gsu_recall_rows"] > 0
    plan = (out / "cached" / "plan.txt").read_text()
    assert "item_key: row_wise" in plan and "item_query: row_wise" in plan  # cache tables follow the item table
    samples_dir = next((out / "samples").iterdir())
    assert {"train", "valid", "test", "store"} <= {p.name for p in samples_dir.iterdir()}
    assert SequenceStore.read(samples_dir / "store").events == 60 * 400  # every history event, once
    again = evaluate(s["checkpoint"], "valid")
    assert abs(again["auc"] - s["valid_auc"]) < 1e-5 and again["samples"] == s["valid_samples"]
