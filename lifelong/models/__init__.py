"""Models: one per file, registered by name (`registry.py`)."""
from lifelong.models.registry import entry, model_config, names

__all__ = ["entry", "model_config", "names", "build_model"]


def build_model(name, config, sparse):
    """The registered module for `name`, built from its config and its `SparseArch` (the model's
    collections, plain or to be sharded under DMP)."""
    return entry(name).module(config, sparse)
