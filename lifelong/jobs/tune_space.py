"""The run file's `tune:` section: what `lifelong tune` searches and how (Ray-free, validated).

```yaml
tune:
  space:                                  # dotted run-file key -> one distribution
    train.dense_lr: {loguniform: [1.0e-4, 1.0e-2]}
    train.embedding_l2: {choice: [0.0, 1.0e-4, 1.0e-3]}
    model_config.k: {grid: [25, 50, 100]}
  trials: 9           # trials in all; with a grid, a multiple of its size (each grid point gets trials / size)
  scheduler: asha     # asha: stop trials whose valid AUC trails at an epoch rung; fifo: run every trial out
```

Keys are `model_config.<field>`, `train.<field>`, `embedding_dim` or `embedding_init`: the data,
the samples and the cluster stay fixed across trials (every trial reads the same cached samples),
and so do the budget and the run's identity (`FIXED`).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

DISTRIBUTIONS = ("loguniform", "uniform", "randint", "choice", "grid")
RANGES = ("loguniform", "uniform", "randint")
TOP_LEVEL = ("embedding_dim", "embedding_init")
SECTIONS = ("model_config", "train")
FIXED = {"train.epochs": "the budget: ASHA's rungs are its epochs", "train.max_steps": "the budget per epoch",
         "train.seed": "every trial starts from the same seed", "train.max_failures": "a runtime setting",
         "train.keep_checkpoints": "a runtime setting", "train.checkpoint_every": "a runtime setting"}
SCHEDULERS = ("asha", "fifo")
EXECUTORS = ("ray_train", "local")


@dataclass(frozen=True)
class TuneConfig:
    space: dict = field(default_factory=dict)  # dotted key -> {distribution: values}
    trials: int = 8  # in all; with `grid` dimensions a multiple of the grid's size
    scheduler: str = "asha"
    grace_period: int = 1  # ASHA: epochs every trial runs before it can be stopped
    reduction_factor: float = 2.0  # ASHA: keep the top 1/reduction_factor at each rung
    executor: str = "ray_train"  # ray_train: each trial a Ray Train run with sharded tables (the train job);
    #                              local: each trial trains in one process, unsharded (trainers/local.py)
    max_concurrent: int = 0  # trials at once; 0 = as many as the cluster's CPUs hold
    seed: int = 0  # the search's random draws

    def __post_init__(self) -> None:
        if not isinstance(self.space, dict):
            raise ValueError("tune.space must map run-file keys to distributions")
        for key, spec in self.space.items():
            check_dimension(key, spec)
        if self.trials < 1 or self.grace_period < 1 or self.reduction_factor <= 1 or self.max_concurrent < 0:
            raise ValueError("tune.trials and tune.grace_period must be >= 1, tune.reduction_factor > 1, "
                             "tune.max_concurrent >= 0 (0 = auto)")
        if self.trials % self.grid_size():
            raise ValueError(f"tune.trials ({self.trials}) must be a multiple of the grid's {self.grid_size()} points")
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"tune.scheduler '{self.scheduler}' not in {SCHEDULERS}")
        if self.executor not in EXECUTORS:
            raise ValueError(f"tune.executor '{self.executor}' not in {EXECUTORS}")

    def grid_size(self) -> int:
        size = 1
        for spec in self.space.values():
            size *= len(spec["grid"]) if "grid" in spec else 1
        return size

    def examples(self) -> list[dict[str, Any]]:
        """Points that span the space (each range's ends, every choice): validating the run file at
        each of them catches a value no trial could train with before any trial starts."""
        options = {k: ([v[0], v[1] - 1] if kind == "randint" else list(v))  # randint's high is exclusive
                   for k, s in self.space.items() for kind, v in s.items()}
        widest = max((len(v) for v in options.values()), default=0)
        return [{k: v[min(i, len(v) - 1)] for k, v in options.items()} for i in range(widest)]

    def budget(self) -> str:
        """The search budget in words, for reports that compare tuned models."""
        how = (f"ASHA on valid AUC (grace {self.grace_period} epoch(s), reduction {self.reduction_factor:g})"
               if self.scheduler == "asha" else "every trial run out (FIFO)")
        return f"{self.trials} trial(s) over {{{', '.join(sorted(self.space))}}}, {how}"


def check_dimension(key: str, spec: Any) -> None:
    """One `space` entry: a tunable key and a single well-formed distribution."""
    section, _, name = key.partition(".")
    if key in FIXED:
        raise ValueError(f"tune.space: '{key}' cannot be tuned ({FIXED[key]})")
    if not ((section in SECTIONS and name) or key in TOP_LEVEL):
        raise ValueError(f"tune.space: '{key}' is not tunable; use model_config.<field>, train.<field> or one of "
                         f"{TOP_LEVEL} (data, samples and cluster stay fixed across trials)")
    if not isinstance(spec, dict) or len(spec) != 1 or next(iter(spec)) not in DISTRIBUTIONS:
        raise ValueError(f"tune.space.{key}: give exactly one of {DISTRIBUTIONS}, e.g. {{loguniform: [1e-4, 1e-2]}}")
    kind, values = next(iter(spec.items()))
    if not isinstance(values, list) or not values:
        raise ValueError(f"tune.space.{key}.{kind}: a non-empty list")
    if kind in RANGES:
        if len(values) != 2 or not all(isinstance(v, (int, float)) for v in values) or not values[0] < values[1]:
            raise ValueError(f"tune.space.{key}.{kind}: [low, high] with low < high, got {values}")
        if kind == "loguniform" and values[0] <= 0:
            raise ValueError(f"tune.space.{key}.loguniform: low must be > 0, got {values[0]}")
        if kind == "randint" and not all(isinstance(v, int) for v in values):
            raise ValueError(f"tune.space.{key}.randint: integer [low, high), got {values}")
