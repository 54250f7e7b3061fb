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
    sys.modules.pop("loadtest_servers", None)


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
    overload = {"goodput_rows_per_s": 7300.0, "goodput_share": 0.9125, "accepted_p50_ms": 11.0, "accepted_p99_ms": 41.5,
                "client_errors": {"RESOURCE_EXHAUSTED": 90},
                "server_counted": {"refusals": {"Score RESOURCE_EXHAUSTED queue_full": 60, "Score DEADLINE_EXCEEDED deadline_unreachable": 30}}}
    result = {"modes": {"on": {"best": points[1], "half_load": {"report": report(40, 8)}, "overload": overload, "sweep": points},
                        "off": {"best": None, "half_load": None, "overload": None, "sweep": []}}}
    text = sweep.table(result)
    on = next(line for line in text.splitlines() if line.lstrip().startswith("on"))
    assert on.split() == ["on", "8000", "80", "15.00", "30.00", "4.00", "8.00", "7300", "91%", "11.00", "41.50", "90"]
    assert "none" in text
    summary = sweep.summary(result, 25)
    assert summary["on"]["overload_goodput_share"] == 0.9125 and summary["on"]["half_load_p99_ms"] == 8
    assert summary["on"]["overload_server_refusals"]["Score RESOURCE_EXHAUSTED queue_full"] == 60
    assert summary["off"]["best_rows_per_s"] is None and summary["goals"]["p99_ms_of_best"] == 25


def test_server_command_is_accepted_by_the_server(sweep, tmp_path, monkeypatch):
    started = {}

    class FakePopen:
        def __init__(self, command, **kwargs):
            started.update(command=command, kwargs=kwargs)

    monkeypatch.setattr(sys.modules["loadtest_servers"].subprocess, "Popen", FakePopen)
    server = sweep.Server("on", tmp_path / "bundle", 0, ["--batching", "on", "--batch-max-wait-ms", "1"], tmp_path / "log", "python")
    command = started["command"]
    assert command[:6] == ["taskset", "-c", "0", "python", "-m", "serving"]
    args = serving_args(command[6:])
    assert (args.port, args.host, args.batching, args.batch_max_wait_ms, args.metrics_port) == (0, "127.0.0.1", "on", 1.0, 0)
    assert started["kwargs"]["start_new_session"] is True and started["kwargs"]["cwd"] == ROOT
    server._log_fh.close()
    assert sweep.parse_args(["--modes", "off"]).modes == ["off"]
    assert sweep.parse_args([]).p99_ms == 25 and sweep.parse_args([]).overload == 2
    assert sweep.parse_args(["--baseline", str(ROOT)]).baseline == str(ROOT)
    with pytest.raises(SystemExit):
        sweep.parse_args(["--baseline", str(tmp_path)])  # no serving/ there
    with pytest.raises(SystemExit):
        sweep.parse_args(["--duration", "2", "--warmup", "3"])
