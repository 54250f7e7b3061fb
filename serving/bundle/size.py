"""What a bundle stores to score a row, in bytes: every tensor its programs hold."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from serving.bundle.verify import load_bundle


def served_bytes(bundle_dir: str | os.PathLike) -> dict[str, Any]:
    """Bytes of every parameter and buffer of the bundle's loaded programs (router, if any,
    and each cluster model): numel × element size, so quantized tables count with their
    FBGEMM scale/bias and padding columns and integer buffers (e.g. DPQ codes) at their
    integer width.

    Each program is loaded from its own .pt2 file, so programs never share storage and each
    counts in full; within a program each tensor object counts once. Tensor constants the
    export lifted out of a module count too (they are stored and held like state): for
    quantized tables these are FBGEMM's packed rows, the only copy of them the bundle keeps,
    with their offsets.

    Returns a JSON-serialisable dict:
        total: router + clusters, or the routed program's.
        router: bytes of the router program (0 for a bundle without one).
        clusters: bytes per cluster model, index = cluster id (empty for a routed bundle).
        routed: bytes of the routed program (0 without one): the shared tables, gates,
            centroids and every cluster's head, each tensor once.
        embedding: bytes of the embedding storage within total: tensors of torchrec
            EmbeddingBagCollection tables (a name component "embedding_bags", float or
            quantized) and integer tensors (a served model keeps integer state only to
            map ids to rows, such as DPQ codes).
        tensors: "<program file>:<tensor name>" → [dtype, shape, bytes].

    Raises BundleError when the bundle does not load (see `load_bundle`).
    """
    bundle = load_bundle(bundle_dir)
    m = bundle.manifest
    tensors: dict[str, list] = {}
    embedding = 0

    def program_bytes(file: str, program: nn.Module) -> int:
        nonlocal embedding
        total = 0
        for name, t in _held_tensors(program):
            n = t.numel() * t.element_size()
            tensors[f"{file}:{name}"] = [str(t.dtype).removeprefix("torch."), list(t.shape), n]
            total += n
            if "embedding_bags" in name.split(".") or not t.is_floating_point():
                embedding += n
        return total

    if bundle.routed is not None:  # one program: its tables serve the router and every cluster, counted once
        routed = program_bytes(m.routed, bundle.routed)
        return {"total": routed, "router": 0, "clusters": [], "routed": routed, "embedding": embedding, "tensors": tensors}
    clusters = [program_bytes(c.model, model) for c, model in zip(m.clusters, bundle.models)]
    router = program_bytes(m.router, bundle.router) if m.router is not None else 0
    return {"total": router + sum(clusters), "router": router, "clusters": clusters, "routed": 0, "embedding": embedding,
            "tensors": tensors}


def _held_tensors(program: nn.Module) -> list[tuple[str, torch.Tensor]]:
    """Parameters, buffers, then the tensor constants a loaded program keeps as plain module
    attributes (torch.export's lifted constants), each tensor object once."""
    held = list(program.named_parameters()) + list(program.named_buffers())
    seen = {id(t) for _, t in held}
    for prefix, module in program.named_modules():
        for key, value in vars(module).items():
            if isinstance(value, torch.Tensor) and id(value) not in seen:
                seen.add(id(value))
                held.append((f"{prefix}.{key}" if prefix else key, value))
    return held


def archived_tensor_bytes(path: str | os.PathLike) -> int:
    """Bytes of every tensor file inside the bundle's program archives (state and the
    constants torch.export lifts out of modules): what `served_bytes` should equal."""
    manifest = json.loads((Path(path) / "manifest.json").read_text())
    programs = {c["model"] for c in manifest["clusters"]} | {manifest[k] for k in ("router", "routed") if manifest.get(k)}
    total = 0
    for name in programs:
        with zipfile.ZipFile(Path(path) / name) as z:
            total += sum(i.file_size for i in z.infolist()
                         if ("/data/weights/" in i.filename or "/data/constants/" in i.filename)
                         and not i.filename.endswith(".json"))
    return total
