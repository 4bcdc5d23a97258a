"""Trainer-side configuration: optimisers and runtime, never architecture."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from lifelong.data.samples import SampleConfig
from lifelong.embeddings.spec import FeatureSpec
from lifelong.config import make_config
from lifelong.models.registry import model_config

SPARSE_OPTIMIZERS = ("sgd", "rowwise_adagrad", "adagrad", "adam")
DENSE_OPTIMIZERS = ("adam", "sgd", "adagrad")
PARQUET_READERS = ("tasks", "footer_actors")


@dataclass(frozen=True)
class TrainConfig:
    batch_size: int = 256
    eval_batch_size: int = 1024
    epochs: int = 1
    max_steps: int = 0  # per epoch; 0 = the whole shard
    max_eval_batches: int = 0  # validation batches per rank and epoch (a smoke run's); 0 = the whole split
    dense_optimizer: str = "adam"
    dense_lr: float = 1e-3
    sparse_optimizer: str = "rowwise_adagrad"
    sparse_lr: float = 0.05
    seed: int = 0
    log_every: int = 50
    prefetch_batches: int = 2
    collate_rows: int = 1024  # rows of the train split per Ray Data batch, collated at once in the iterator's
    #                           threads and cut into batch_size batches (`collate.Batches`): Ray Data's per-batch
    #                           work and the collate's per-call cost are paid once for them (here ~1 instead of
    #                           ~2 ms of CPU per 256 rows). At most batch_size - 1 rows a worker and epoch are
    #                           left out, as before; <= batch_size: one training batch per Ray Data batch
    shuffle: str = "global"  # global: read the train split in the order it was written, one seeded permutation
    #                          drawn once when the samples were built (samples.shuffle_seed), the same every
    #                          epoch; local: that, then a buffer per worker reseeded each epoch (train.seed + epoch)
    local_shuffle_buffer: int = 16384
    parquet_reader: str = "tasks"  # how Ray Data reads the sample files each epoch: "tasks" (its V1
    #                                datasource: footers read once on the driver, one read task per file) or
    #                                "footer_actors" (V2: a new pool of footer-reading actors per read, built
    #                                for thousands of files on object storage): here ~5 s more per pass
    #                                (benchmarks/ray_overhead.py)
    materialize_mb: int = 256  # read a split once per job and keep it in Ray's object store when its Parquet
    #                            files total at most this many MB (each epoch then starts at once and reads
    #                            nothing; in memory a split is larger: MovieLens' 48 MB of files are 264 MB);
    #                            larger splits, or 0, are read again every epoch
    replicate_mb: float = 4.0  # on CPU, when `sharding` names none of the model's tables and all its embedding
    #                            collections total at most this many MB of weights, every collection is
    #                            replicated on every worker (data-parallel under DDP: one gradient exchange a
    #                            step, no lookup all-to-alls); otherwise, or at 0, TorchRec's planner plans
    #                            them. On GPUs the planner decides (it can choose data_parallel itself)
    diagnostic_batches: int = 2  # validation batches per rank for the GSU/ESU consistency recall (an ESU over all
    #                              L: at L = 4,096 each 1,024-row batch cost ~2.3 s here); 0 = off
    checkpoint_every: int = 0  # steps between mid-epoch checkpoints; 0 = at the end of each epoch only
    keep_checkpoints: int = 2  # Ray Train deletes older ones
    deterministic_data: bool = False  # Ray Data keeps block order: the same batches per worker in every run
    max_failures: int = 0  # worker-group restarts Ray Train allows, each from the latest checkpoint
    key_cache_every: int = 0  # refresh cached GSU keys every N steps (ETA, TWIN, LIC); 0 = GSU on live embeddings
    dedup_ids: bool = False  # look each distinct id of a batch's feature up once
    grad_clip: float = 0.0  # clip the dense gradients' global L2 norm to this (FuxiCTR uses 10); 0 = off
    patience: int = 0  # early stopping: stop once valid AUC has not improved for this many epochs and
    #                    restore the best epoch's weights; 0 = off (every epoch, the last weights)
    embedding_l2: float = 0.0  # L2 weight on the embedding rows each batch looks up (DIN's mini-batch aware
    #                            regularisation, without frequency weights); 0 = off
    lr_decay: float = 1.0  # multiply both learning rates by this after each epoch that did not improve
    #                        valid AUC and did not stop the run (FuxiCTR: 0.1); 1 = off; needs patience >= 2

    def __post_init__(self) -> None:
        if self.sparse_optimizer not in SPARSE_OPTIMIZERS:
            raise ValueError(f"train.sparse_optimizer '{self.sparse_optimizer}' not in {SPARSE_OPTIMIZERS}")
        if self.dense_optimizer not in DENSE_OPTIMIZERS:
            raise ValueError(f"train.dense_optimizer '{self.dense_optimizer}' not in {DENSE_OPTIMIZERS}")
        if self.keep_checkpoints < 1 or self.checkpoint_every < 0:
            raise ValueError("train.keep_checkpoints must be >= 1 and train.checkpoint_every >= 0")
        if self.shuffle not in ("global", "local"):
            raise ValueError(f"train.shuffle '{self.shuffle}' not in ('global', 'local')")
        if self.parquet_reader not in PARQUET_READERS:
            raise ValueError(f"train.parquet_reader '{self.parquet_reader}' not in {PARQUET_READERS}")
        if self.max_steps < 0 or self.max_eval_batches < 0:
            raise ValueError("train.max_steps and train.max_eval_batches must be >= 0 (0 = no cap)")
        if self.key_cache_every < 0:
            raise ValueError("train.key_cache_every must be >= 0 (0 = no key cache)")
        if self.materialize_mb < 0:
            raise ValueError("train.materialize_mb must be >= 0 (0 = read every epoch)")
        if self.replicate_mb < 0:
            raise ValueError("train.replicate_mb must be >= 0 (0 = the planner plans every collection)")
        if self.grad_clip < 0 or self.patience < 0 or self.embedding_l2 < 0:
            raise ValueError("train.grad_clip, train.patience and train.embedding_l2 must be >= 0 (0 = off)")
        if not 0 < self.lr_decay <= 1:
            raise ValueError(f"train.lr_decay must be in (0, 1] (1 = off), got {self.lr_decay}")
        if self.lr_decay < 1 and self.patience < 2:
            raise ValueError("train.lr_decay < 1 needs train.patience >= 2 (a plateau epoch that does not stop "
                             "the run is where the rate decays)")
        if self.collate_rows < 1:
            raise ValueError("train.collate_rows must be >= 1")
        if self.batch_size < 1 or self.epochs < 1:
            raise ValueError("train.batch_size and train.epochs must be >= 1")


@dataclass(frozen=True)
class JobSpec:
    """Everything a training worker needs, as plain data (sent to Ray workers as a dict)."""

    model: str
    model_config: dict[str, Any]
    features: FeatureSpec
    samples: SampleConfig
    train: TrainConfig = field(default_factory=TrainConfig)
    sharding: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        model_config(self.model, self.model_config)  # validates name and keys early

    def arch(self):
        return model_config(self.model, self.model_config)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "JobSpec":
        return cls(
            model=d["model"], model_config=dict(d.get("model_config") or {}),
            features=make_config(FeatureSpec, d["features"], "features"),
            samples=make_config(SampleConfig, d["samples"], "samples"),
            train=make_config(TrainConfig, d.get("train"), "train"),
            sharding={k: list(v) for k, v in (d.get("sharding") or {}).items()},
        )
