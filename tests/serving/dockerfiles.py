"""Reads docker/serving.Dockerfile and docker/compose.yaml (there is no Docker engine here:
the tests check them by reading, and run the commands they contain)."""

from __future__ import annotations

import json
import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "serving.Dockerfile"
COMPOSE = ROOT / "docker" / "compose.yaml"


def instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments dropped."""
    out, pending = [], ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not pending and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        pending += (" " if pending else "") + stripped.rstrip("\\").strip()
        if not stripped.endswith("\\"):
            word, _, rest = pending.partition(" ")
            out.append((word.upper(), rest.strip()))
            pending = ""
    return out


def exec_form(args: str) -> list[str]:
    """A JSON exec-form argument list (["python", "-m", ...])."""
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def entrypoint_and_cmd() -> tuple[list[str], list[str]]:
    found = dict(instructions())
    return exec_form(found["ENTRYPOINT"]), exec_form(found["CMD"])


def healthcheck_cmd() -> list[str]:
    args = dict(instructions())["HEALTHCHECK"]
    _, _, command = args.partition("CMD ")
    return exec_form(command.strip())


def healthcheck_options() -> dict[str, str]:
    args = dict(instructions())["HEALTHCHECK"]
    return dict(re.findall(r"--([a-z-]+)=(\S+)", args.partition("CMD ")[0]))


def pip_pins() -> dict[str, str]:
    """name → version of every `name==version` in the RUN pip install commands."""
    pins = {}
    for word, args in instructions():
        if word != "RUN":
            continue
        for part in args.split("&&"):
            tokens = shlex.split(part)
            if tokens[:2] == ["pip", "install"]:
                for t in tokens[2:]:
                    if "==" in t:
                        name, version = t.split("==")
                        pins[name] = version
    return pins


def compose_command() -> list[str]:
    for line in COMPOSE.read_text().splitlines():
        if line.strip().startswith("command:"):
            return exec_form(line.split(":", 1)[1].strip())
    raise AssertionError("compose.yaml has no command")


def compose_value(key: str) -> str:
    for line in COMPOSE.read_text().splitlines():
        if line.strip().startswith(f"{key}:"):
            return line.split(":", 1)[1].strip().strip('"')
    raise AssertionError(f"compose.yaml has no {key}")


def substitute(command: list[str], mapping: dict[str, str]) -> list[str]:
    """The command with whole arguments (and host:port suffixes) replaced for a local run."""
    out = []
    for arg in command:
        if arg in mapping:
            out.append(mapping[arg])
        elif ":" in arg and arg.rsplit(":", 1)[1] in mapping:
            host, port = arg.rsplit(":", 1)
            out.append(f"{host}:{mapping[port]}")
        else:
            out.append(arg)
    return out
