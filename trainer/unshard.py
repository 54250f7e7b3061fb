"""Sharded training module ⇄ plain CPU model with the same weights (for export and scoring,
and for starting a sharded run from given weights)."""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn
from torch.distributed._shard.sharded_tensor import ShardedTensor
from torch.distributed.tensor import DTensor

from trainer.distributed import copy_full_into, quiet_torch_deprecations

PREFIX = "model."  # CTRTrain keeps the model under .model


def _full(t, rank: int) -> torch.Tensor | None:
    if isinstance(t, ShardedTensor):
        out = torch.empty(t.size(), dtype=t.dtype) if rank == 0 else None
        t.gather(dst=0, out=out)
        return out
    if isinstance(t, DTensor):
        return t.full_tensor()
    return t.detach().cpu()


def unshard_into(train: nn.Module, fresh: nn.Module) -> nn.Module:
    """Copy the (possibly sharded) weights of CTRTrain-wrapped `train` into `fresh`.

    Collective under torchrun (every rank must call it); `fresh` is complete on rank 0.
    """
    rank = dist.get_rank() if dist.is_initialized() else 0
    state = {}
    for key, value in train.state_dict().items():
        with quiet_torch_deprecations():
            full = _full(value, rank)
        name = key.split(PREFIX, 1)[1] if PREFIX in key else key
        if full is not None:
            state[name] = full
    if rank == 0:
        fresh.load_state_dict(state, strict=True)
    return fresh.eval()


@torch.no_grad()
def load_full_state(train: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Copy full (unsharded) model weights into a CTRTrain-wrapped, DMP-sharded module,
    each rank its own shards (as trainer.distributed.init_tables does for fresh tables)."""
    for key, value in train.state_dict().items():
        copy_full_into(value, state[key.split(PREFIX, 1)[1] if PREFIX in key else key], key)
