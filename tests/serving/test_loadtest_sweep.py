"""scripts/loadtest_sweep.py's pure parts: the rate search, what counts as a hit, the table,
and that the server command it builds is one `python -m serving` accepts. (The script
itself runs for minutes on the DeepFM bundle: scripts/loadtest.sh.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from serving.__main__ import parse_args as serving_args

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("loadtest_sweep", ROOT / "scripts" / "loadtest_sweep.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["loadtest_sweep"] = module
    spec.loader.exec_module(module)
    yield module
    sys.modules.pop("loadtest_sweep", None)


def simulate(sweep, capacity: float, **kw) -> list[tuple[float, bool]]:
    search = sweep.RateSearch(25, **kw)
    while (qps := search.next()) is not None:
        search.record(qps, qps <= capacity)
        assert len(search.points) < 40
    return search.points


def test_rate_search_ramps_then_bisects(sweep):
    points = simulate(sweep, 150, refine=3)
    assert [q for q, _ in points[:6]] == [25, 37.5, 56.2, 84.3, 126.4, 189.6]
    assert all(ok for _, ok in points[:5]) and not points[5][1]
    assert len(points) == 9 and max(q for q, ok in points if ok) == 147.2  # within 4% of the capacity
    low = simulate(sweep, 10, refine=2)  # even the start misses: step down, then bisect
    assert [q for q, _ in low[:4]] == [25, 16.7, 11.1, 7.4] and max(q for q, ok in low if ok) >= 9
    assert simulate(sweep, 10**6, max_qps=100)[-1] == (100, True)  # the cap ends a ramp of hits
    assert all(not ok for _, ok in simulate(sweep, 0.1))  # nothing passes: the search still ends


def test_verdict_and_best_and_table(sweep):
    def report(qps, p99, errors=None, achieved=None):
        return {"qps_target": qps, "errors": errors or {}, "achieved_qps": qps if achieved is None else achieved,
                "rows_per_s": 100 * (qps if achieved is None else achieved), "latency_ms": {"p50": p99 / 2, "p99": p99}}

    assert sweep.verdict(report(100, 49.9), 50) == (True, "")
    assert sweep.verdict(report(100, 50.0), 50)[0] is False
    assert "errors" in sweep.verdict(report(100, 10, {"DEADLINE_EXCEEDED": 1}), 50)[1]
    assert "answered" in sweep.verdict(report(100, 10, achieved=90), 50)[1]
    points = [{"qps": q, "hit": sweep.verdict(report(q, p), 50)[0], "report": report(q, p)} for q, p in [(50, 10), (80, 30), (120, 70)]]
    assert sweep.best_point(points)["qps"] == 80 and sweep.best_point(points[2:]) is None
    result = {"modes": {"on": {"best": points[1], "half_load": {"report": report(40, 8)}}, "off": {"best": None, "half_load": None}}}
    text = sweep.table(result)
    assert "8000" in text and "4000" in text and "none" in text


def test_server_command_is_accepted_by_the_server(sweep, tmp_path, monkeypatch):
    started = {}

    class FakePopen:
        def __init__(self, command, **kwargs):
            started.update(command=command, kwargs=kwargs)

    monkeypatch.setattr(sweep.subprocess, "Popen", FakePopen)
    server = sweep.Server("on", tmp_path / "bundle", 0, ["--batching", "on", "--batch-max-wait-ms", "1"], tmp_path / "log", "python")
    command = started["command"]
    assert command[:6] == ["taskset", "-c", "0", "python", "-m", "serving"]
    args = serving_args(command[6:])
    assert (args.port, args.host, args.batching, args.batch_max_wait_ms) == (0, "127.0.0.1", "on", 1.0)
    assert started["kwargs"]["start_new_session"] is True
    server._log_fh.close()
    assert sweep.parse_args(["--modes", "off"]).modes == ["off"]
    with pytest.raises(SystemExit):
        sweep.parse_args(["--duration", "2", "--warmup", "3"])
