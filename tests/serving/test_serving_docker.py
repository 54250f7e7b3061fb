"""docker/serving.Dockerfile and docker/compose.yaml, checked by reading (no Docker engine
here). test_serving_cli runs the image's ENTRYPOINT + CMD and its HEALTHCHECK command."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

from dockerfiles import (COMPOSE, DOCKERFILE, ROOT, compose_command, compose_value, entrypoint_and_cmd, healthcheck_cmd,
                         healthcheck_options, instructions, pip_pins)

from serving.__main__ import parse_args


def test_base_image_is_pinned_and_matches_the_tested_python():
    images = [args for word, args in instructions() if word == "FROM"]
    assert len(images) == 1
    m = re.fullmatch(r"python:(\d+)\.(\d+)\.(\d+)-slim-\w+", images[0])
    assert m, images[0]
    assert (int(m.group(1)), int(m.group(2))) == sys.version_info[:2]


def test_pip_pins_equal_the_tested_venv():
    pins = pip_pins()
    assert {"torch", "fbgemm-gpu-cpu", "torchrec", "tensordict", "torchmetrics", "tqdm", "pyre-extensions"} <= set(pins)
    assert {name: version(name) for name in pins} == pins
    runs = " ".join(args for word, args in instructions() if word == "RUN")
    assert "pip install . " in runs + " "  # pyproject's pinned grpc / protobuf / numpy
    pyproject = (ROOT / "pyproject.toml").read_text()
    deps = re.search(r"dependencies = \[(.*?)\]", pyproject, re.S).group(1)
    assert all("==" in d for d in re.findall(r'"([^"]+)"', deps))


def test_no_training_code_and_a_non_root_user():
    steps = instructions()
    copied = [args.split()[0] for word, args in steps if word == "COPY"]
    assert copied == ["pyproject.toml", "serving"]
    users = [args for word, args in steps if word == "USER"]
    assert users and users[-1].split(":")[0] not in ("0", "root")
    words = [w for w, _ in steps]
    assert words.index("USER") < words.index("ENTRYPOINT")


def test_commands_are_the_tested_ones():
    entry, cmd = entrypoint_and_cmd()
    assert entry == ["python", "-m", "serving"]
    args = parse_args(cmd)
    assert args.bundle == "/bundle" and args.metrics_port is not None
    exposed = {int(p) for word, a in instructions() if word == "EXPOSE" for p in a.split()}
    assert {args.port, args.metrics_port} <= exposed
    probe = healthcheck_cmd()
    assert probe[:3] == ["python", "-m", "serving.healthcheck"]
    assert probe[probe.index("--target") + 1] == f"127.0.0.1:{args.port}"
    opts = healthcheck_options()
    assert float(probe[probe.index("--timeout") + 1]) < float(opts["timeout"].rstrip("s"))
    assert {"interval", "timeout", "start-period", "retries"} <= set(opts)


def test_compose_runs_the_image_on_a_mounted_bundle():
    assert compose_command() == entrypoint_and_cmd()[1]
    args = parse_args(compose_command())
    text = COMPOSE.read_text()
    assert (COMPOSE.parent / compose_value("context")).resolve() == ROOT
    assert (ROOT / compose_value("dockerfile")) == DOCKERFILE
    assert compose_value("target") == args.bundle and compose_value("read_only") == "true"
    assert f'"{args.port}:{args.port}"' in text and f'"{args.metrics_port}:{args.metrics_port}"' in text
    grace = float(compose_value("stop_grace_period").rstrip("s"))
    assert grace > args.drain_delay + args.grace
    assert Path(compose_value("source").split(":-")[-1].rstrip("}")).parts[0] == ".."
