"""TOML experiment files → typed config dataclasses; every mistake reported at once.

An experiment file has one table per component ([data], [model], [train], [search]);
each component owns its dataclass and its `validate() -> list[str]`. Loading collects
unknown keys, wrong types and failed validations from every section and raises one
`ConfigError` naming the file and each key.
"""

from __future__ import annotations

import dataclasses
import tomllib
import types
import typing
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """All problems found in one config file, raised together."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in config:\n{lines}")


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(_type_ok(v, item) for v in value)
    if origin is dict:
        key, val = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_type_ok(k, key) and _type_ok(v, val) for k, v in value.items())
    if origin is tuple:
        return isinstance(value, (list, tuple))
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, tp)


def build_section(cls: type, raw: dict, section: str, problems: list[str]):
    """An instance of dataclass `cls` from `raw`; problems are appended, not raised."""
    if not isinstance(raw, dict):
        problems.append(f"{section}: must be a table, got {type(raw).__name__}")
        return None
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls) if f.init}
    kwargs = {}
    for key, value in raw.items():
        if key not in names:
            problems.append(f"{section}.{key}: unknown key (known: {', '.join(sorted(names))})")
        elif not _type_ok(value, hints[key]):
            problems.append(f"{section}.{key}: expected {_type_name(hints[key])}, got {value!r}")
        else:
            kwargs[key] = float(value) if hints[key] is float else value
    try:
        obj = cls(**kwargs)
    except (TypeError, ValueError) as e:
        problems.append(f"{section}: {e}")
        return None
    problems.extend(obj.validate() if hasattr(obj, "validate") else [])
    return obj


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def parse_override(text: str) -> tuple[list[str], Any]:
    """`section.key=value` (value in TOML syntax; a bare word is a string)."""
    if "=" not in text:
        raise ConfigError("command line", [f"override {text!r}: expected section.key=value"])
    key, value = text.split("=", 1)
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip().split("."), parsed


def read_toml(path: str | Path, overrides: list[str] = ()) -> dict:
    """The raw TOML tables of an experiment file with `section.key=value` overrides applied."""
    path = Path(path)
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), ["file not found"]) from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(str(path), [f"not valid TOML: {e}"]) from None
    for text in overrides:
        keys, value = parse_override(text)
        node = raw
        for depth, k in enumerate(keys[:-1]):
            node = node.setdefault(k, {})
            if not isinstance(node, dict):
                raise ConfigError(str(path), [f"override {text!r}: {'.'.join(keys[:depth + 1])} is a value, not a table"])
        node[keys[-1]] = value
    return raw


def load_sections(path: str | Path, sections: dict[str, type], overrides: list[str] = ()) -> dict[str, Any]:
    """Build each named section's dataclass; raise one ConfigError listing every problem.

    Args:
        path: the TOML file.
        sections: section name → dataclass; a missing section takes the defaults.
        overrides: `section.key=value` strings applied on top of the file.
    """
    raw = read_toml(path, overrides)
    problems: list[str] = []
    unknown = sorted(set(raw) - set(sections))
    problems += [f"{s}: unknown section (known: {', '.join(sorted(sections))})" for s in unknown]
    built = {name: build_section(cls, raw.get(name, {}), name, problems) for name, cls in sections.items()}
    if problems:
        raise ConfigError(str(path), problems)
    return built
