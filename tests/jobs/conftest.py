"""One run of each tiny search config per test session, shared by the recipe and method tests."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "configs" / "tiny"


def _search_cmd(config: Path, out: Path, cache: Path) -> list[str]:
    return [sys.executable, "-m", "trainer", "search", "--config", str(config), "--out", str(out), f"data.cache_dir={cache}"]


@pytest.fixture(scope="session")
def search_cmd():
    """(config, OUT, cache dir) → the `python -m trainer search` command line."""
    return _search_cmd


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory):
    """stem → (config path, its tmp dir, OUT, report) of `trainer search` on configs/tiny/<stem>.toml."""
    done = {}

    def get(stem: str):
        if stem not in done:
            config = TINY / f"{stem}.toml"
            tmp = tmp_path_factory.mktemp(stem)
            out = tmp / "run"
            res = subprocess.run(_search_cmd(config, out, tmp / "cache"), cwd=ROOT, capture_output=True, text=True, timeout=900)
            assert res.returncode == 0, res.stderr[-4000:]
            done[stem] = config, tmp, out, json.loads((out / "report.json").read_text())
        return done[stem]

    return get
