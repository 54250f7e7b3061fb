"""JSON files the trainer writes: atomic, and strict JSON (no NaN / Infinity)."""

from __future__ import annotations

import json
import math
import os
from pathlib import Path


def _finite(obj):
    """NaN and ±Infinity become null: strict parsers reject them, and an undefined figure is no number."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def write_json(path: Path, obj: dict) -> None:
    """Atomic: a reader sees the old file or the whole new one."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(_finite(obj), indent=2, default=str, allow_nan=False))
    os.replace(tmp, path)
