"""The run file: one YAML (safe-loaded) for data, samples, model, embeddings, training, cluster.

Every section is a dataclass; unknown keys anywhere are errors naming the section.
Defaults describe the main job: SIM-hard on MovieLens latest-small from ../shared/data.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

import yaml

from lifelong.cluster.connect import ClusterConfig
from lifelong.data.completejourney import CompleteJourneyConfig
from lifelong.data.samples import SampleConfig
from lifelong.data.synthetic import SyntheticConfig
from lifelong.jobs.tune_space import TuneConfig
from lifelong.config import make_config
from lifelong.models.registry import model_config
from lifelong.trainers.config import TrainConfig

REPO = Path(__file__).resolve().parents[2]
FORMATS = ("movielens", "taobao", "parquet", "synthetic", "completejourney")
RUN_FILE = "run.json"  # the resolved run file, saved in every run's output directory


def shared_data() -> Path:
    """`$LIFELONG_DATA`, else the `shared/data` beside the repository."""
    return Path(os.environ.get("LIFELONG_DATA", REPO.parent / "shared" / "data"))


DEFAULT_PATHS = {"movielens": "movielens/ml-latest-small.zip", "taobao": "taobao/UserBehavior_head.csv",
                 "completejourney": "completejourney"}


@dataclass(frozen=True)
class DataSource:
    format: str = "movielens"
    path: Optional[str] = None  # default: the shared copy for movielens/taobao
    synthetic: dict = field(default_factory=dict)  # SyntheticConfig fields, format=synthetic only
    completejourney: dict = field(default_factory=dict)  # CompleteJourneyConfig fields, that format only

    def __post_init__(self) -> None:
        if self.format not in FORMATS:
            raise ValueError(f"data.format '{self.format}' not in {FORMATS}")
        if self.format == "parquet" and not self.path:
            raise ValueError("data.path is required for format 'parquet'")
        if self.synthetic and self.format != "synthetic":
            raise ValueError("data.synthetic is only for format 'synthetic'")
        if self.completejourney and self.format != "completejourney":
            raise ValueError("data.completejourney is only for format 'completejourney'")
        make_config(SyntheticConfig, self.synthetic, "data.synthetic")
        make_config(CompleteJourneyConfig, self.completejourney, "data.completejourney")

    def resolved_path(self) -> Optional[Path]:
        if self.path:
            return Path(self.path)
        return shared_data() / DEFAULT_PATHS[self.format] if self.format in DEFAULT_PATHS else None


@dataclass(frozen=True)
class RunFile:
    name: str = "main"
    model: str = "sim_hard"
    model_config: dict = field(default_factory=lambda: {"k": 50})
    # Architecture of other models, by name: what `compare`, and `train`/`tune --model NAME`, use
    # for a model that is not `model` (e.g. {eta: {k: 100, match: true}}); unnamed models get
    # their defaults.
    model_configs: dict = field(default_factory=dict)
    embedding_dim: int = 16
    embedding_init: float = 0.0  # rows start uniform in ±embedding_init; 0 = TorchRec's ±sqrt(1 / rows)
    user_embedding: bool = True  # a user-id table read by every model's head
    data: DataSource = field(default_factory=DataSource)
    samples: SampleConfig = field(default_factory=lambda: SampleConfig(max_len=256, short_len=20))
    train: TrainConfig = field(default_factory=TrainConfig)
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    sharding: dict = field(default_factory=dict)  # table -> allowed sharding types
    output_dir: str = "runs"
    tune: TuneConfig = field(default_factory=TuneConfig)  # what `lifelong tune` searches (jobs/tune_space.py)


SECTIONS = {"data": DataSource, "samples": SampleConfig, "train": TrainConfig, "cluster": ClusterConfig,
            "tune": TuneConfig}


def run_file(values: dict[str, Any] | None, where: str = "run config", check_tune: bool = True) -> RunFile:
    """The validated run file: every section, and the model's config against its dataclass, so a
    misspelt key fails here, before Ray starts or samples are built; so does a `tune.space` value
    that no trial could train with (each range's ends and every choice are checked)."""
    values = dict(values or {})
    if values.get("model", RunFile.model) != RunFile.model:
        values.setdefault("model_config", {})  # the default model_config is SIM-hard's
    for key, cls in SECTIONS.items():
        if key in values:
            values[key] = make_config(cls, values[key], f"{where}: section '{key}'")
    run = make_config(RunFile, values, where)
    try:
        model_config(run.model, run.model_config)
        for name, cfg in run.model_configs.items():
            model_config(name, cfg)
    except (KeyError, ValueError) as e:
        raise ValueError(f"{where}: {e.args[0] if e.args else e}") from None
    if run.model in run.model_configs and run.model_configs[run.model] != run.model_config:
        raise ValueError(f"{where}: model_config {run.model_config} and model_configs.{run.model} "
                         f"{run.model_configs[run.model]} disagree for model '{run.model}'")
    if check_tune:
        check_tune_space(run, where)
    return run


def check_tune_space(run: RunFile, where: str) -> None:
    """Every `tune.space` range end and choice must give a valid run of this run file's model."""
    for params in run.tune.examples():
        with_params(run, params, f"{where}: tune.space at {params}")


def config_for(run: RunFile, model: str) -> dict:
    """The architecture config `model` trains with under this run file."""
    if model in run.model_configs:
        return dict(run.model_configs[model])
    return dict(run.model_config) if model == run.model else {}


def plain(run: RunFile) -> dict[str, Any]:
    """The run file as plain YAML/JSON values (tuples become lists)."""
    return json.loads(json.dumps(asdict(run)))


def with_params(run: RunFile, params: dict[str, Any], where: str = "tuned run") -> RunFile:
    """The run file with dotted keys (`train.dense_lr`, `model_config.k`, `embedding_dim`) set, validated."""
    values = plain(run)
    for key, value in params.items():
        section, _, name = key.partition(".")
        if name:
            values[section] = {**values[section], name: value}
        else:
            values[section] = value
    try:
        return run_file(values, where, check_tune=False)
    except (KeyError, ValueError) as e:  # a section's own check does not name `where`
        message = str(e.args[0] if e.args else e)
        raise ValueError(message if message.startswith(where) else f"{where}: {message}") from None


def load_run_file(path: Optional[str | Path], overrides: dict[str, Any] | None = None) -> RunFile:
    """Safe-load YAML (or {} without a file) and apply top-level overrides such as model/name; a
    `model` override switches the run to that model (`for_model`)."""
    values: dict[str, Any] = {}
    if path:
        with open(path) as f:
            values = yaml.safe_load(f) or {}
        if not isinstance(values, dict):
            raise ValueError(f"{path}: top level must be a mapping")
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    model = overrides.pop("model", None)
    if model is not None and "name" not in values and "name" not in overrides:
        overrides["name"] = model  # runs of different models never share a run name (resume)
    where = str(path or "defaults")
    run = run_file({**values, **overrides}, where, check_tune=False)
    if model is not None and model != run.model:
        switched = for_model(run, model)
        print(f"[lifelong] --model {model} replaces {run.model}; model_config {run.model_config} not used"
              + (f", model_configs.{model} {switched.model_config} used" if model in run.model_configs else ""))
        run = switched
    check_tune_space(run, where)  # against the model that trains
    return run


def for_model(run: RunFile, model: str) -> RunFile:
    """The run file with `model` as its model and the architecture `config_for` gives it; the
    other models' entries stay in model_configs, the replaced model's config is dropped."""
    return replace(run, model=model, model_config=config_for(run, model),
                   model_configs={m: c for m, c in run.model_configs.items() if m != model})
