"""TorchTrainer setup: Ray Data sample splits in, a Ray Train Result out."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional

import ray.data
from ray.actor import ActorHandle
from ray.data import ExecutionOptions
from ray.train import CheckpointConfig, FailureConfig, RunConfig
from ray.train.torch import TorchConfig, TorchTrainer

from lifelong.cluster.connect import ClusterConfig, controller_env, resolve, scaling_config
from lifelong.data.store import store_path
from lifelong.trainers.config import JobSpec
from lifelong.trainers.ingest import StaticSplitConfig


# The workers' loops, imported in the workers: the driver that builds the trainer never loads
# TorchRec or the models (~2 s of every `lifelong` command here).
def train_loop_per_worker(config: dict) -> None:
    """`worker.train_loop_per_worker`: one run."""
    from lifelong.trainers import worker

    worker.train_loop_per_worker(config)


def train_runs_per_worker(config: dict) -> None:
    """`worker.train_runs_per_worker`: several runs one after another."""
    from lifelong.trainers import worker

    worker.train_runs_per_worker(config)


def read_samples(path: Path, reader: str, materialize_mb: int = 0, ordered: bool = False) -> ray.data.Dataset:
    """One split's sample files as a Dataset, read by `reader` (`TrainConfig.parquet_reader`); read
    now and cached in Ray's object store (`Dataset.materialize`) when the files total at most
    `materialize_mb` MB, in file order when `ordered`."""
    ctx = ray.data.DataContext.get_current()
    before, ctx.use_datasource_v2 = ctx.use_datasource_v2, reader == "footer_actors"
    try:
        ds = ray.data.read_parquet(str(path))
    finally:
        ctx.use_datasource_v2 = before
    if materialize_mb and sum(f.stat().st_size for f in path.rglob("*.parquet")) <= materialize_mb * 2**20:
        ds.context.execution_options.preserve_order = ordered
        ds = ds.materialize()
    return ds


def sample_datasets(samples_dir: str | Path, job: JobSpec) -> dict[str, ray.data.Dataset]:
    """The train and valid splits, read as written: the train split's files already hold its shuffled
    order (`SampleConfig.shuffle_seed`), so no epoch pays for an all-to-all shuffle. A split within
    `train.materialize_mb` is read once for the whole job, not once per epoch."""
    samples_dir, t = Path(samples_dir), job.train
    return {split: read_samples(samples_dir / split, t.parquet_reader, t.materialize_mb, t.deterministic_data)
            for split in ("train", "valid")}


def make_trainer(job: JobSpec, samples_dir: str | Path, cluster: ClusterConfig, name: str,
                 storage_path: str | Path, max_failures: Optional[int] = None,
                 loop: Callable[[dict], None] = train_loop_per_worker,
                 loop_config: Optional[dict] = None, relay: Optional[ActorHandle] = None) -> TorchTrainer:
    """A TorchTrainer running `loop` (default: training) on the job's sample splits; its workers say
    their lines through `relay` (`lifelong.cluster.logs.relayed`) when one is given."""
    cluster, samples_dir = resolve(cluster), Path(samples_dir).resolve()  # workers do not share our cwd
    controller_env(cluster)
    store = store_path(samples_dir, job.samples.layout)  # workers read it from shared storage
    datasets = sample_datasets(samples_dir, job)
    splits = StaticSplitConfig(datasets_to_split=["train", "valid"], execution_options=ExecutionOptions(
        preserve_order=job.train.deterministic_data) if job.train.deterministic_data else None)
    return TorchTrainer(
        loop,
        train_loop_config={"job": job.to_dict(), "store": str(store) if store else None,
                           "run_dir": str(Path(storage_path).resolve() / name), "relay": relay,
                           "bind_cores": cluster.bind_cores, "static_rows": splits.static_rows(datasets),
                           **(loop_config or {})},
        torch_config=TorchConfig(backend="nccl" if cluster.use_gpu else "gloo",
                                 timeout_s=cluster.collective_timeout_s),
        scaling_config=scaling_config(cluster),
        datasets=datasets,
        dataset_config=splits,
        run_config=RunConfig(name=name, storage_path=str(Path(storage_path).resolve()),
                             checkpoint_config=CheckpointConfig(num_to_keep=job.train.keep_checkpoints),
                             failure_config=FailureConfig(
                                 max_failures=job.train.max_failures if max_failures is None else max_failures)),
    )


def make_runs_trainer(jobs: list[tuple[JobSpec, Path]], samples_dir: str | Path, cluster: ClusterConfig, name: str,
                      storage_path: str | Path, relay: Optional[ActorHandle] = None,
                      step_hook: Optional[Callable[[int, int, int], None]] = None) -> TorchTrainer:
    """A TorchTrainer training several (job, run directory) pairs on the same sample splits one after
    another (`worker.train_runs_per_worker`); Ray Train's settings (retries, data options) are the
    first job's."""
    return make_trainer(jobs[0][0], samples_dir, cluster, name, storage_path, loop=train_runs_per_worker,
                        loop_config={"jobs": [(j.to_dict(), str(d)) for j, d in jobs],
                                     **({"step_hook": step_hook} if step_hook else {})}, relay=relay)
