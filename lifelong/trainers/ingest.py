"""How the sample splits reach Ray Train's workers: a materialized split is cut once per job into
static shards within a row of each other; a streamed one goes through Ray Data's `streaming_split`
every epoch."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import ray.data
from ray.data.dataset import MaterializedDataset
from ray.train import DataConfig


def shard_bounds(rows: int, world_size: int) -> list[int]:
    """The row indices that cut `rows` into `world_size` contiguous shards whose sizes differ by at
    most one row (every row kept)."""
    return [rows * rank // world_size for rank in range(1, world_size)]


@dataclass(frozen=True)
class EpochSteps:
    """An epoch's batch counts on a static shard, known before it starts (`static_steps`):
    `every_rank`, the batches every rank has (the smallest shard's), and `own`, this rank's."""
    every_rank: int
    own: int


def static_steps(rows: int, world_size: int, rank: int, batch_size: int) -> EpochSteps:
    """The batch counts of `rank`'s static shard of `rows` rows (`StaticSplitConfig`, `shard_bounds`),
    cut into `batch_size` batches with a shorter tail dropped (`collate.Batches`)."""
    cuts = [0, *shard_bounds(rows, world_size), rows]
    sizes = [b - a for a, b in zip(cuts, cuts[1:])]  # (world_size,) rows per rank
    return EpochSteps(every_rank=min(sizes) // batch_size, own=sizes[rank] // batch_size)


class StaticSplitConfig(DataConfig):
    """A `DataConfig` that gives each worker a fixed share of every materialized split
    (`MaterializedDataset.split_at_indices`, `shard_bounds`): its blocks are already in the object
    store, so the per-epoch `SplitCoordinator` actor of `streaming_split` (its scheduling, its round
    trips per block) buys nothing. Streamed (unmaterialized) splits keep `DataConfig`'s
    `streaming_split`. (`_resolve_execution_options` and `_datasets_to_split` are `DataConfig`'s
    own, as of the pinned Ray 2.60.)

    The shards are static: the same rows go to the same rank every epoch (the train files hold a
    shuffled order; `train.shuffle: local` reshuffles within a shard). No row is left out (where
    `streaming_split(equal=True)` drops up to `world_size - 1`): shards differ by at most one row, and
    the loops' lockstep handles the difference (`loop.in_lockstep`, `loop._eval_lockstep`). Blocks
    are fetched by whichever node a worker runs on: this ignores locality, which is why it is kept
    to materialized splits (at most `train.materialize_mb`)."""

    def configure(self, datasets: dict[str, ray.data.Dataset], world_size: int,
                  worker_handles: Optional[list], worker_node_ids: Optional[list],
                  **kwargs) -> list[dict[str, ray.data.DataIterator]]:  # DataConfig's forwards-compat kwargs
        static = {name: ds for name, ds in datasets.items() if self._static(name, ds)}
        rest = {name: ds for name, ds in datasets.items() if name not in static}
        output = (super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs) if rest
                  else [{} for _ in range(world_size)])
        for name, ds in static.items():
            if ds.name is None:
                ds.set_name(name)
            bounds = shard_bounds(ds.count(), world_size)
            for rank, shard in enumerate(ds.split_at_indices(bounds) if bounds else [ds]):
                shard.context.execution_options = self._resolve_execution_options(name)
                output[rank][name] = shard.iterator()
        return output

    def static_rows(self, datasets: dict[str, ray.data.Dataset]) -> dict[str, int]:
        """The row count of each split `configure` cuts into static shards (the workers' `static_steps`)."""
        return {name: ds.count() for name, ds in datasets.items() if self._static(name, ds)}

    def _static(self, name: str, ds: ray.data.Dataset) -> bool:
        return isinstance(ds, MaterializedDataset) and self._splits(name)

    def _splits(self, name: str) -> bool:
        """Whether `name` is one of the datasets this config shards across workers."""
        return self._datasets_to_split == "all" or name in self._datasets_to_split
