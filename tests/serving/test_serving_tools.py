"""The command-line tools against a running server: serving.client, serving.loadtest,
serving.healthcheck (each runs as its own process, as an operator would run it)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time

import grpc
import numpy as np
import pytest
from rpc_helpers import free_port
from serving_fixtures import random_rows

from serving import loadtest
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.loadtest import Backoff, best_under
from serving.batcher import BatchConfig
from serving.predictor import Predictor
from serving.scrape import counted
from serving.config import ServerConfig


def run(*args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, timeout=timeout)


def write_jsonl(path, rows) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def test_client_prints_the_offline_scores(shared_app, bundle, spec, tmp_path):
    target = f"127.0.0.1:{shared_app.port}"
    rows = random_rows(spec, 150, seed=31)  # > max_batch_rows: the client splits it
    proc = run("serving.client", "--target", target, "--rows", write_jsonl(tmp_path / "rows.jsonl", rows))
    assert proc.returncode == 0, proc.stderr
    out = [json.loads(line) for line in proc.stdout.splitlines()]
    want = Predictor(bundle).predict_rows(rows)
    assert [o["row"] for o in out] == list(range(150))
    assert [o["cluster"] for o in out] == want.clusters.tolist()
    assert max(abs(o["probability"] - p) for o, p in zip(out, want.probabilities.tolist())) < 1e-6
    assert {o["version"] for o in out} == {"toy-v1"}

    # columnar: every value of a field in one form
    uniform = [{**r, "user": f"u{r['user']}" if isinstance(r["user"], int) else r["user"], "age": str(r["age"]),
                "genres": [g for g in r["genres"] if isinstance(g, str)]} for r in rows[:40]]
    proc = run("serving.client", "--target", target, "--rows", write_jsonl(tmp_path / "u.jsonl", uniform), "--columnar")
    assert proc.returncode == 0, proc.stderr
    got = np.array([json.loads(line)["probability"] for line in proc.stdout.splitlines()])
    assert float(np.max(np.abs(got - Predictor(bundle).predict_rows(uniform).probabilities))) < 1e-6

    bad = run("serving.client", "--target", target, "--rows", write_jsonl(tmp_path / "bad.jsonl", [{**rows[0], "item": 999}]))
    assert bad.returncode == 1 and "INVALID_ARGUMENT" in bad.stderr and "'item'" in bad.stderr


def test_loadtest_open_and_closed_loop(shared_app, tmp_path):
    target = f"127.0.0.1:{shared_app.port}"
    common = ["--target", target, "--rows-per-request", "20", "--duration", "1.5", "--warmup", "0.5"]
    proc = run("serving.loadtest", *common, "--qps", "40", "--out", str(tmp_path / "open.json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "open.json").read_text())
    assert report["mode"] == "open" and report["qps_target"] == 40 and report["errors"] == {} and report["sent"] == 60
    assert 30 <= report["ok"] <= 42  # the 1 s after warm-up at 40/s
    assert report["rows_per_s"] == report["achieved_qps"] * 20
    lat = report["latency_ms"]
    assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert report["versions"] == {"toy-v1": report["ok"]}

    proc = run("serving.loadtest", *common, "--concurrency", "2", "--out", str(tmp_path / "closed.json"))
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "closed.json").read_text())
    assert report["mode"] == "closed" and report["concurrency"] == 2 and report["errors"] == {} and report["ok"] > 5

    # a sweep picks the most rows/s under the p99 target; errors are reported by status
    # code (100 rows exceed this server's 64-row limit, so nothing qualifies)
    proc = run("serving.loadtest", "--target", target, "--rows-per-request", "20", "--qps", "10,30", "--duration", "1",
               "--warmup", "0", "--p99-target-ms", "1000", "--out", str(tmp_path / "sweep.json"))
    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert [r["qps_target"] for r in sweep["sweep"]] == [10, 30] and sweep["best"]["qps_target"] == 30
    proc = run("serving.loadtest", "--target", target, "--rows-per-request", "100", "--qps", "20", "--duration", "1",
               "--warmup", "0", "--out", str(tmp_path / "bad.json"))
    bad = json.loads((tmp_path / "bad.json").read_text())
    assert bad["ok"] == 0 and bad["errors"] == {"INVALID_ARGUMENT": bad["measured"]} and bad["measured"] >= 15
    assert best_under(sweep["sweep"] + [bad], 1000) == sweep["best"] and best_under([bad], 1000) is None


def test_healthcheck(shared_app):
    ok = run("serving.healthcheck", "--target", f"127.0.0.1:{shared_app.port}", "--service", "embstack.v1.Inference")
    assert ok.returncode == 0 and "SERVING" in ok.stdout
    unknown = run("serving.healthcheck", "--target", f"127.0.0.1:{shared_app.port}", "--service", "nope")
    assert unknown.returncode == 1 and "NOT_FOUND" in unknown.stderr
    dead = run("serving.healthcheck", "--target", f"127.0.0.1:{free_port()}", "--timeout", "1")
    assert dead.returncode == 1 and "UNAVAILABLE" in dead.stderr


def test_backoff_doubles_up_to_its_cap_and_one_outage_counts_once():
    b = Backoff(base=0.05, cap=0.3)
    b.failed(sent=0.0, now=1.0)
    b.failed(sent=0.5, now=1.01)  # sent before the pause began: the same outage
    assert b.pauses == 1 and b.remaining(1.0) == pytest.approx(0.05)
    for now in (1.1, 1.3, 1.7, 2.1):
        b.failed(sent=now - 0.001, now=now)
    assert b.delay == 0.3 and b.pauses == 5  # 0.05, 0.1, 0.2, 0.3, 0.3
    b.succeeded()
    b.failed(sent=3.0, now=3.0)
    assert b.delay == 0.05


def test_loadtest_backs_off_when_the_server_stops_mid_run(bundle_dir, start_server, tmp_path):
    """The server stops 1 s into a 3 s open-loop run at 100/s: the calls that find it gone
    are connection errors, not server status codes, and the generator backs off instead of
    firing the remaining ~200 sends into a dead port."""
    app = start_server(bundle_dir)
    args = loadtest.parse_args(["--target", f"127.0.0.1:{app.port}", "--rows-per-request", "5", "--qps", "100",
                                "--duration", "3", "--warmup", "0", "--out", str(tmp_path / "r.json"),
                                "--backoff-ms", "50", "--backoff-max-s", "0.4"])
    with grpc.insecure_channel(args.target) as channel:
        payloads, _ = loadtest.build_payloads(pb_grpc.InferenceStub(channel), args)
        call = channel.unary_unary(loadtest.SCORE_METHOD, request_serializer=None, response_deserializer=pb.ScoreResponse.FromString)
        stopper = threading.Timer(1.0, lambda: app.stop(0))
        stopper.start()
        report = loadtest.run_once(call, payloads, args, 100.0)
        stopper.join()
    failed = report["connection_errors"] + sum(report["errors"].values())
    assert report["ok"] >= 60 and report["connection_errors"] >= 1, report
    assert report["sent"] + report["backoff"]["skipped"] == 300
    assert report["backoff"]["skipped"] >= 120 and failed <= 40, report
    assert report["backoff"]["paused_s"] <= 0.4 * report["backoff"]["pauses"]


def test_loadtest_reports_what_the_server_counted(bundle_dir, start_server, tmp_path, monkeypatch):
    """--scrape: the server's own counts of the run (answers by code, refusals by code and
    reason) agree with what the client saw. Scoring is slowed to 10 ms and admission lets
    one request in at a time, so a 200/s flood is refused in part (by the server, not by
    gRPC's cap, which is set far above)."""
    app = start_server(bundle_dir, ServerConfig(max_workers=8, batching=BatchConfig(enabled=False), metrics_port=0,
                                                max_inflight=1, max_concurrent_rpcs=1000))
    predictor = app.host.current()
    real = predictor.predict
    monkeypatch.setattr(predictor, "predict", lambda batch: (time.sleep(0.01), real(batch))[1])
    out = tmp_path / "r.json"
    proc = run("serving.loadtest", "--target", f"127.0.0.1:{app.port}", "--rows-per-request", "5", "--qps", "200",
               "--duration", "1.5", "--warmup", "0", "--scrape", f"http://127.0.0.1:{app.metrics_port}/metrics", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    counted = report["server_counted"]
    assert report["errors"].get("RESOURCE_EXHAUSTED", 0) >= 1, report["errors"]
    assert counted["refusals"] == {"Score RESOURCE_EXHAUSTED too_many_requests": report["errors"]["RESOURCE_EXHAUSTED"]}
    assert counted["requests"]["Score OK"] == report["ok"]
    assert counted["requests"]["Score RESOURCE_EXHAUSTED"] == report["errors"]["RESOURCE_EXHAUSTED"]
    assert report["server_counted_halfway"]["requests"]["Score OK"] <= report["ok"]

    dead = run("serving.loadtest", "--target", f"127.0.0.1:{app.port}", "--rows-per-request", "5", "--qps", "10", "--duration", "1", "--warmup", "0", "--scrape",
               f"http://127.0.0.1:{free_port()}/metrics", "--out", str(tmp_path / "d.json"))
    assert dead.returncode == 2 and dead.stderr.startswith("loadtest: --scrape") and "Traceback" not in dead.stderr


def test_counted_is_the_difference_of_two_scrapes():
    before = {("embstack_requests_total", "Score", "OK"): 5.0, ("embstack_refusals_total", "Score", "RESOURCE_EXHAUSTED", "queue_full"): 1.0}
    after = {**before, ("embstack_requests_total", "Score", "OK"): 12.0,
             ("embstack_refusals_total", "Score", "DEADLINE_EXCEEDED", "deadline_unreachable"): 3.0}
    assert counted(before, after) == {"requests": {"Score OK": 7}, "refusals": {"Score DEADLINE_EXCEEDED deadline_unreachable": 3}}
