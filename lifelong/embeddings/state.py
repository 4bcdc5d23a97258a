"""Move state between a full (unsharded) state dict and a sharded DMP model."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor


def _slices(shard) -> tuple[slice, ...]:
    md = shard.metadata
    return tuple(slice(o, o + n) for o, n in zip(md.shard_offsets, md.shard_sizes))


@torch.no_grad()
def load_full_state(model: nn.Module, full: dict[str, torch.Tensor]) -> None:
    """Copy a full state dict into `model`, writing each rank's shards of sharded tables.

    Every key of the model must be present in `full` with the full shape, and vice versa.
    """
    own = model.state_dict()
    missing, extra = sorted(set(own) - set(full)), sorted(set(full) - set(own))
    if missing or extra:
        raise KeyError(f"state keys differ: missing {missing[:5]}, unexpected {extra[:5]}")
    for name, dst in own.items():
        src = full[name]
        if tuple(src.shape) != tuple(dst.shape):
            raise ValueError(f"'{name}': shape {tuple(src.shape)} != model's {tuple(dst.shape)}")
        if isinstance(dst, ShardedTensor):
            for shard in dst.local_shards():
                shard.tensor.copy_(src[_slices(shard)])
        else:
            dst.copy_(src)


@torch.no_grad()
def gather_full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Full CPU copy of every tensor of `model` on every rank (collective for sharded tables)."""
    import torch.distributed as dist

    out = {}
    for name, t in model.state_dict().items():
        if isinstance(t, ShardedTensor):
            full = torch.zeros(t.shape, dtype=t.dtype)
            for shard in t.local_shards():
                full[_slices(shard)] = shard.tensor.cpu()
            if dist.is_initialized() and dist.get_world_size() > 1:
                dist.all_reduce(full)  # shards are disjoint (zeros elsewhere): the sum is the table
            out[name] = full
        else:
            out[name] = t.detach().cpu().clone()
    return out

