"""Feature spec -> TorchRec tables. The item and category tables are each shared by the target,
short-history and lifelong-history features, so one id has one embedding everywhere."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torchrec import EmbeddingCollection, EmbeddingConfig

# Sequence groups in every batch; each has an item and a category feature.
GROUPS = ("target", "short", "long")
TABLE_COLUMNS = {"item": "item_id", "cat": "category_id"}


def feature_name(group: str, table: str) -> str:
    return f"{group}_{table}"


FEATURES = tuple(feature_name(g, t) for t in TABLE_COLUMNS for g in GROUPS)


@dataclass(frozen=True)
class FeatureSpec:
    """Vocabulary sizes (largest id; ids are 1..n, 0 is padding) and the shared embedding width."""

    n_items: int
    n_categories: int
    dim: int = 16

    def num_embeddings(self, table: str) -> int:
        return {"item": self.n_items, "cat": self.n_categories}[table] + 1

    def tables(self) -> list[EmbeddingConfig]:
        return [
            EmbeddingConfig(name=t, embedding_dim=self.dim, num_embeddings=self.num_embeddings(t),
                            feature_names=[feature_name(g, t) for g in GROUPS])
            for t in TABLE_COLUMNS
        ]

    def collection(self, device: torch.device | str = "cpu") -> EmbeddingCollection:
        """The sequence embedding collection (unsharded; DMP shards it)."""
        return EmbeddingCollection(tables=self.tables(), device=torch.device(device))

    @property
    def behaviour_dim(self) -> int:
        """Width of one behaviour/target representation: concat(item, category)."""
        return len(TABLE_COLUMNS) * self.dim
