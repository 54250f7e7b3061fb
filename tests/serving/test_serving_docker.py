"""docker/serving.Dockerfile, docker/compose.yaml and docker/trainer.Dockerfile, checked by
reading (no Docker engine here). test_serving_cli runs the serving image's ENTRYPOINT + CMD
and its HEALTHCHECK command."""

from __future__ import annotations

import re
import sys
from importlib.metadata import version
from pathlib import Path

from dockerfiles import (COMPOSE, DOCKERFILE, ROOT, compose_command, compose_value, entrypoint_and_cmd, exec_form, healthcheck_cmd,
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


def test_trainer_image_paths_exist_and_its_user_owns_the_workdir():
    """docker/trainer.Dockerfile by reading: what it copies exists, the runtime user owns
    /app (setup.sh creates .venv there as that user), and the entry point and CMD name the
    project's torchrun launcher, the trainer module and a config that exist."""
    trainer = ROOT / "docker" / "trainer.Dockerfile"
    steps = instructions(trainer)
    words = [w for w, _ in steps]
    [base] = [a for w, a in steps if w == "FROM"]
    assert base == dict(instructions())["FROM"]  # the same pinned Python as the serving image
    workdir = dict(steps)["WORKDIR"]
    for args in (a for w, a in steps if w == "COPY"):
        sources = [s for s in args.split() if not s.startswith("--")][:-1]
        assert sources and all((ROOT / s).exists() for s in sources), args
    user = [a for w, a in steps if w == "USER"][-1]
    assert user not in ("root", "0")
    owned = [a for w, a in steps[: words.index("WORKDIR")] if w == "RUN" and f"-o {user}" in a and workdir in a.split()]
    assert owned, f"{workdir} must be created owned by {user} before WORKDIR"
    setup = [a for w, a in steps[words.index("USER"):] if w == "RUN" and "scripts/setup.sh" in a]
    assert setup and (ROOT / "scripts" / "setup.sh").stat().st_mode & 0o111
    assert "torch==2.13.0+cpu" in setup[0] and version("torch").split("+")[0] == "2.13.0"
    entry, cmd = exec_form(dict(steps)["ENTRYPOINT"]), exec_form(dict(steps)["CMD"])
    assert entry == [f"{workdir}/scripts/torchrun"] and (ROOT / "scripts" / "torchrun").stat().st_mode & 0o111
    module = cmd[cmd.index("-m") + 1]
    assert module == "trainer" and (ROOT / module / "__main__.py").exists()
    assert (ROOT / cmd[cmd.index("--config") + 1]).exists() and cmd[cmd.index("--out") + 1].startswith("runs/")
