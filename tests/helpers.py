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
    return JobSpec(model=model, model_config=model_config or {},
                   features=FeatureSpec(meta.n_items, meta.n_categories, 8, meta.n_users if users else 0),
                   samples=SampleConfig(max_len=max_len, short_len=short_len),
                   train=TrainConfig(**train))


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
