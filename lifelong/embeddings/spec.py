"""Feature spec -> TorchRec tables. The item and category tables are each shared by the target,
short-history and lifelong-history features, so one id has one embedding everywhere.

A model may ask for side tables (`SideTable`): a second, separately trained table over the same
ids as a main table (SIM-soft's low-dimensional search embeddings). They are TorchRec tables
too, in a second EmbeddingCollection (an EC needs one width for all its tables), sharded by the
same planner, with their own features (`target_search_item`, ...) after the main ones in the KJT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # TorchRec is imported where tables are built: a driver that only reads configs never loads it
    import torch
    from torchrec import EmbeddingCollection, EmbeddingConfig

# Sequence groups in every batch; each has an item and a category feature.
GROUPS = ("target", "short", "long")
TABLE_COLUMNS = {"item": "item_id", "cat": "category_id"}
USER = "user"  # the user-id table and its one feature (one id per sample), when n_users > 0


# TorchRec 1.8 on CPU: a data-parallel EmbeddingCollection table looks ids up with fbgemm's dense
# kernel, which returns one row per bag instead of one per id, so any sequence feature fails
# (split_with_sizes in construct_jagged_tensors). There TorchRec's data_parallel is never planned;
# a collection whose every table asks for it is replicated instead (`plan.Plan.replicated`).
CPU_DP_LIMIT = ("TorchRec 1.8's CPU data-parallel EmbeddingCollection returns one row per bag, not per id, "
                "so sequence features fail")


def feature_name(group: str, table: str) -> str:
    return f"{group}_{table}"


def replicated_on_cpu(path: str, tables: tuple[str, ...], constraints: dict[str, list[str]] | None) -> bool:
    """Whether the collection at `path` asks for data_parallel alone on every table (on CPU it is then
    replicated); an error naming them when only some of its tables do (the CPU stand-in replicates
    whole collections). Needs no TorchRec: the driver checks a run file's main tables with it."""
    mine = [t for t in tables if list((constraints or {}).get(t, ())) == ["data_parallel"]]
    if mine and len(mine) < len(tables):
        raise ValueError(f"on cpu, data_parallel replicates a whole EmbeddingCollection: '{path}' has tables "
                         f"{list(tables)}, of which only {mine} ask for it; ask for data_parallel on all or none "
                         f"(TorchRec's own per-table data_parallel is not usable there: {CPU_DP_LIMIT})")
    return bool(mine)


@dataclass(frozen=True)
class SideTable:
    """A model-owned table `name` over the ids of main table `source`, looked up for `groups`."""

    name: str
    source: str
    dim: int
    groups: tuple[str, ...] = ("target", "long")

    def __post_init__(self) -> None:
        if self.source not in TABLE_COLUMNS:
            raise ValueError(f"side table '{self.name}': source '{self.source}' not in {list(TABLE_COLUMNS)}")
        if self.name in TABLE_COLUMNS:
            raise ValueError(f"side table '{self.name}' clashes with a main table")
        bad = [g for g in self.groups if g not in GROUPS]
        if bad:
            raise ValueError(f"side table '{self.name}': unknown group(s) {bad}; choose from {GROUPS}")


def features(side: tuple[SideTable, ...] = (), user: bool = False) -> tuple[str, ...]:
    """KJT key order: main tables (every group, table-major), the user feature if any, then side
    tables (their groups). The main collection reads everything before the side features."""
    main = tuple(feature_name(g, t) for t in TABLE_COLUMNS for g in GROUPS) + ((USER,) if user else ())
    return main + tuple(feature_name(g, s.name) for s in side for g in s.groups)


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabulary sizes (largest id; ids are 1..n, 0 is padding) and the shared embedding width.
    With n_users > 0 a user-id table joins the main collection and every model's head reads it.
    Rows start uniform in ±init_bound; 0 keeps TorchRec's ±sqrt(1 / rows), which shrinks with the
    table (±0.016 for 4,000 rows) and leaves target attention almost blind at the start."""

    n_items: int
    n_categories: int
    dim: int = 16
    n_users: int = 0
    init_bound: float = 0.0

    def __post_init__(self) -> None:
        if not self.init_bound >= 0:
            raise ValueError(f"embedding init bound must be >= 0 (0 = TorchRec's default), got {self.init_bound}")

    def init_range(self) -> dict[str, float]:
        """EmbeddingConfig's weight_init_min/max for every table ({} = TorchRec's default)."""
        return {"weight_init_min": -self.init_bound, "weight_init_max": self.init_bound} if self.init_bound else {}

    def num_embeddings(self, table: str) -> int:
        return {"item": self.n_items, "cat": self.n_categories, USER: self.n_users}[table] + 1

    def feature_rows(self) -> dict[str, int]:
        """Main feature -> row count of its table."""
        rows = {feature_name(g, t): self.num_embeddings(t) for t in TABLE_COLUMNS for g in GROUPS}
        return {**rows, USER: self.num_embeddings(USER)} if self.n_users else rows

    @property
    def user_dim(self) -> int:
        return self.dim if self.n_users else 0

    @property
    def table_names(self) -> tuple[str, ...]:
        """The main collection's tables."""
        return (*TABLE_COLUMNS, *((USER,) if self.n_users else ()))

    def tables(self) -> list[EmbeddingConfig]:
        from torchrec import EmbeddingConfig

        main = [EmbeddingConfig(name=t, embedding_dim=self.dim, num_embeddings=self.num_embeddings(t),
                                feature_names=[feature_name(g, t) for g in GROUPS], **self.init_range())
                for t in TABLE_COLUMNS]
        if self.n_users:
            main.append(EmbeddingConfig(name=USER, embedding_dim=self.dim, num_embeddings=self.num_embeddings(USER),
                                        feature_names=[USER], **self.init_range()))
        return main

    def collection(self, device: torch.device | str = "cpu") -> EmbeddingCollection:
        """The sequence embedding collection (unsharded; DMP shards it)."""
        import torch
        from torchrec import EmbeddingCollection

        return EmbeddingCollection(tables=self.tables(), device=torch.device(device))

    def side_collection(self, side: tuple[SideTable, ...], device: torch.device | str = "cpu"
                        ) -> EmbeddingCollection | None:
        """The side tables' collection (None without side tables); they must share one width."""
        if not side:
            return None
        import torch
        from torchrec import EmbeddingCollection, EmbeddingConfig

        dims = {s.dim for s in side}
        if len(dims) > 1:
            raise ValueError(f"side tables {[s.name for s in side]} must share one embedding width, got {sorted(dims)}")
        return EmbeddingCollection(tables=[
            EmbeddingConfig(name=s.name, embedding_dim=s.dim, num_embeddings=self.num_embeddings(s.source),
                            feature_names=[feature_name(g, s.name) for g in s.groups], **self.init_range())
            for s in side],
            device=torch.device(device))

    @property
    def behaviour_dim(self) -> int:
        """Width of one behaviour/target representation: concat(item, category)."""
        return len(TABLE_COLUMNS) * self.dim
