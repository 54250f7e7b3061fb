"""Per-epoch checkpoints: sharded model + optimizer (fused state included) via
torch.distributed.checkpoint, plus each rank's RNG state and the loop's progress.

Layout: DIR/epoch_0003/ (complete checkpoint) and DIR/LATEST (name of the newest
complete one). A checkpoint is written into its own new directory and only then made
current by atomically replacing LATEST, so a crash mid-write leaves the previous one
current and intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torchrec.optim.keyed import KeyedOptimizer

from trainer.distributed import quiet_torch_deprecations

POINTER = "LATEST"


def _name(epoch: int) -> str:
    return f"epoch_{epoch:04d}"


def save(root: str | Path, epoch: int, model: nn.Module, optimizer: KeyedOptimizer, progress: dict, rank: int) -> Path:
    """Write checkpoint `epoch` (collective: every rank calls it)."""
    root = Path(root)
    path = root / _name(epoch)
    if rank == 0 and path.exists():
        pointer = root / POINTER
        if pointer.exists() and pointer.read_text().strip() == path.name:
            raise RuntimeError(f"{path} is the current checkpoint ({POINTER}); refusing to overwrite it")
        shutil.rmtree(path)  # a leftover of a crashed attempt at this epoch; LATEST never named it
    dist.barrier()
    with quiet_torch_deprecations():
        dcp.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, checkpoint_id=str(path))
    torch.save({"torch_rng": torch.get_rng_state()}, path / f"rng_rank{rank}.pt")
    if rank == 0:
        (path / "progress.json").write_text(json.dumps(progress))
    dist.barrier()
    if rank == 0:
        tmp = root / f".{POINTER}.tmp"
        tmp.write_text(path.name)
        os.replace(tmp, root / POINTER)
    dist.barrier()
    return path


def prune(root: str | Path, keep: int, protect: int) -> None:
    """Delete all but the newest `keep` complete checkpoints and epoch `protect` (the best);
    never the one LATEST names (rank 0 only)."""
    root = Path(root)
    current = latest(root)
    epochs = sorted(p for p in root.glob("epoch_*") if (p / "progress.json").exists())
    for p in epochs[:-keep] if keep else []:
        if p != current and p.name != _name(protect):
            shutil.rmtree(p)


def latest(root: str | Path) -> Path | None:
    pointer = Path(root) / POINTER
    if not pointer.exists():
        return None
    path = Path(root) / pointer.read_text().strip()
    if not (path / "progress.json").exists():
        raise RuntimeError(f"{pointer} names {path.name}, which is incomplete")
    return path


def load(path: str | Path, model: nn.Module, optimizer: KeyedOptimizer | None, rank: int) -> dict:
    """Load a checkpoint in place (collective); returns the saved progress."""
    path = Path(path)
    state = {"model": model.state_dict()}
    if optimizer is not None:
        optimizer.init_state()  # optimizer state is lazy; DCP loads into existing tensors only
        state["optim"] = optimizer.state_dict()
    with quiet_torch_deprecations():
        dcp.load(state, checkpoint_id=str(path))
    model.load_state_dict(state["model"])
    if optimizer is not None:
        optimizer.load_state_dict(state["optim"])
    rng = path / f"rng_rank{rank}.pt"
    if rng.exists():
        torch.set_rng_state(torch.load(rng, weights_only=True)["torch_rng"])
    return json.loads((path / "progress.json").read_text())
