"""Models: one per file, registered by name (`registry.py`)."""
from lifelong.models.registry import entry, model_config, names

__all__ = ["entry", "model_config", "names", "build_model"]


def build_model(name, config, embeddings, spec, side_embeddings=None):
    """The registered module for `name`, built from its config and (sharded or plain) collections:
    the main one and, for models with side tables, the side one."""
    model = entry(name).module(config, embeddings, spec)
    model.side_embeddings = side_embeddings
    return model
