"""The command-line tools against a running server: serving.client, serving.loadtest,
serving.healthcheck (each runs as its own process, as an operator would run it)."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import grpc
import numpy as np
import pytest
from rpc_helpers import free_port
from serving_fixtures import random_rows

from serving import loadtest
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.loadtest import Backoff, best_under
from serving.predictor import Predictor


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
