"""Models: one per file, registered by name (`registry.py`)."""
from lifelong.models.registry import entry, model_config, names

__all__ = ["entry", "model_config", "names", "build_model"]


def build_model(name, config, embeddings, spec):
    """The registered module for `name`, built from its config and a (sharded or plain) collection."""
    return entry(name).module(config, embeddings, spec)
