"""Load generator for a running embstack server: throughput, latency percentiles, errors.

    # open loop: requests leave on a fixed schedule whatever the server does
    .venv/bin/python -m serving.loadtest --target 127.0.0.1:50051 --rows-per-request 100 \\
        --qps 200 --duration 20 --out runs/loadtest/qps200.json
    # a sweep: the most rows/s with p99 < 25 ms among several rates
    .venv/bin/python -m serving.loadtest --target 127.0.0.1:50051 --rows-per-request 100 \\
        --qps 100,150,200,250 --duration 12 --out runs/loadtest/sweep.json
    # closed loop: C callers, each sending its next request when the last one returns
    .venv/bin/python -m serving.loadtest --target 127.0.0.1:50051 --rows-per-request 100 \\
        --concurrency 8 --duration 20 --out runs/loadtest/c8.json

Requests use the columnar form with random valid pre-encoded ids (or, with --rows, rows
from a JSON-lines file), built and serialised before the clock starts: `--distinct`
different messages are cycled so the generator spends its time sending, not encoding.

Open loop (--qps) measures each request from the moment the schedule says it should have
been sent, not from when the generator got round to sending it, so a server that stalls
is charged for the requests queued behind the stall (no coordinated omission).
`send_lag_ms` reports how far behind schedule the generator itself ran; a large value
means the generator, not the server, was the bottleneck.

With --scrape URL the report adds what the server counted during the run (answers by
code, refusals by code and reason; `serving.scrape`), scraped before, halfway and after.

The first --warmup seconds are sent but left out of the figures. Latency percentiles are
over successful requests; failed ones are counted by the status code the server answered
in `errors`, and calls that got no answer because the connection failed (server down,
restarting, unreachable) in `connection_errors`.

UNAVAILABLE (server down, starting or draining) pauses sending, exponentially longer
with each UNAVAILABLE to a request sent after the last pause began (--backoff-ms
doubling up to --backoff-max-s), until a request succeeds. Without the pause a generator
hammers a restarting server with calls that fail in microseconds and its report fills
with them. Open loop skips the scheduled sends that fall in a pause; `backoff` reports the
pauses, their seconds and the skipped sends.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np

from serving import channels
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving._proto.embstack.v1 import inference_pb2_grpc as pb_grpc
from serving.client import column_request, kinds_of, random_columns, read_rows
from serving.outcomes import CONNECTION_ERROR, Backoff, outcome
from serving.scrape import counted, scrape

SCORE_METHOD = "/embstack.v1.Inference/Score"
@dataclass
class Record:
    """What happened to the requests sent (appended from gRPC callback threads)."""

    scheduled: list[float] = field(default_factory=list)  # intended send time (perf_counter)
    latency: list[float] = field(default_factory=list)  # seconds from `scheduled` to completion
    codes: list[str] = field(default_factory=list)
    versions: list[str] = field(default_factory=list)
    lag: list[float] = field(default_factory=list)  # actual - intended send time (open loop)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, scheduled: float, done: float, code: str, version: str) -> None:
        with self.lock:
            self.scheduled.append(scheduled)
            self.latency.append(done - scheduled)
            self.codes.append(code)
            self.versions.append(version)


def build_payloads(stub: pb_grpc.InferenceStub, args: argparse.Namespace, metadata=None) -> tuple[list[bytes], pb.ModelInfo]:
    info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=10, metadata=metadata)
    n = args.rows_per_request
    if args.rows:
        with open(args.rows) as fh:
            rows = read_rows(fh)
        if not rows:
            raise ValueError(f"{args.rows}: no rows")
        kinds = kinds_of(info)
        payloads = []
        for k in range(args.distinct):
            chunk = [rows[(k * n + i) % len(rows)] for i in range(n)]
            payloads.append(column_request(chunk, kinds).SerializeToString())
        return payloads, info
    rng = np.random.default_rng(args.seed)
    return [random_columns(info, n, rng).SerializeToString() for _ in range(args.distinct)], info


def _on_done(record: Record, backoff: Backoff, scheduled: float, sent: float, future) -> None:
    done = time.perf_counter()
    code = future.code()
    version = ""
    if code is grpc.StatusCode.OK:
        version = future.result().bundle_version
    result = outcome(code, future.details())
    backoff.observe(result, sent, done)
    record.add(scheduled, done, result, version)


def open_loop(call, payloads: list[bytes], qps: float, duration: float, timeout: float, metadata=None,
              backoff: Backoff | None = None) -> tuple[Record, int]:
    """Sends at `qps` for `duration` s on a fixed schedule, skipping the sends that fall
    in a backoff pause; returns (record, requests sent)."""
    backoff = backoff or Backoff()
    record = Record()
    interval = 1.0 / qps
    start = time.perf_counter() + 0.05
    end = start + duration
    futures = []
    i = 0
    while True:
        scheduled = start + i * interval
        if scheduled >= end:
            break
        now = time.perf_counter()
        if scheduled > now:
            time.sleep(scheduled - now)
            now = time.perf_counter()
        i += 1
        if backoff.remaining(now) > 0:
            backoff.skipped += 1
            continue
        record.lag.append(now - scheduled)
        fut = call.future(payloads[(i - 1) % len(payloads)], timeout=timeout, metadata=metadata)
        fut.add_done_callback(lambda f, s=scheduled, t=now: _on_done(record, backoff, s, t, f))
        futures.append(fut)
    _wait_all(futures, timeout + 10)
    return record, len(futures)


def closed_loop(call, payloads: list[bytes], concurrency: int, duration: float, timeout: float, metadata=None,
                backoff: Backoff | None = None) -> tuple[Record, int]:
    """`concurrency` callers, each sending its next request when the previous returns
    (after the backoff pause, if one is on)."""
    backoff = backoff or Backoff()
    record = Record()
    start = time.perf_counter() + 0.05
    end = start + duration
    sent = [0] * concurrency

    def caller(c: int) -> None:
        k = c
        while time.perf_counter() < start:
            time.sleep(0.001)
        while True:
            t0 = time.perf_counter()
            pause = backoff.remaining(t0)
            if pause > 0:
                time.sleep(min(pause, max(0.0, end - t0)))
                continue
            if t0 >= end:
                return
            try:
                reply = call(payloads[k % len(payloads)], timeout=timeout, metadata=metadata)
                result, version = "OK", reply.bundle_version
            except grpc.RpcError as e:
                result, version = outcome(e.code(), e.details()), ""
            done = time.perf_counter()
            backoff.observe(result, t0, done)
            record.add(t0, done, result, version)
            sent[c] += 1
            k += concurrency

    threads = [threading.Thread(target=caller, args=(c,), daemon=True) for c in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(duration + timeout + 10)
    return record, sum(sent)


def _wait_all(futures, limit: float) -> None:
    deadline = time.monotonic() + limit
    for f in futures:
        try:
            f.exception(timeout=max(0.0, deadline - time.monotonic()))
        except grpc.FutureTimeoutError:
            break


def summarize(record: Record, sent: int, args: argparse.Namespace, window_start: float, window: float) -> dict:
    scheduled = np.asarray(record.scheduled)
    keep = scheduled >= window_start
    codes = np.asarray(record.codes)[keep]
    latency = np.asarray(record.latency)[keep]
    ok = codes == "OK"
    errors: dict[str, int] = {}
    for c in codes[~ok & (codes != CONNECTION_ERROR)].tolist():
        errors[c] = errors.get(c, 0) + 1
    versions: dict[str, int] = {}
    for v in np.asarray(record.versions)[keep][ok].tolist():
        versions[v] = versions.get(v, 0) + 1
    lat_ms = latency[ok] * 1e3

    def pct(q: float) -> float | None:
        return round(float(np.percentile(lat_ms, q)), 3) if len(lat_ms) else None

    lag_ms = np.asarray(record.lag) * 1e3
    n_ok = int(ok.sum())
    return {
        "target": args.target,
        "mode": "open" if args.qps else "closed",
        "qps_target": args.qps,
        "concurrency": args.concurrency,
        "rows_per_request": args.rows_per_request,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "timeout_s": args.timeout,
        "sent": sent,
        "measured": int(keep.sum()),
        "ok": n_ok,
        "errors": errors,
        "connection_errors": int((codes == CONNECTION_ERROR).sum()),
        "achieved_qps": round(n_ok / window, 2) if window > 0 else None,
        "rows_per_s": round(n_ok * args.rows_per_request / window, 1) if window > 0 else None,
        "latency_ms": {
            "p50": pct(50), "p95": pct(95), "p99": pct(99),
            "max": round(float(lat_ms.max()), 3) if len(lat_ms) else None,
            "mean": round(float(lat_ms.mean()), 3) if len(lat_ms) else None,
        },
        "send_lag_ms": {"p99": round(float(np.percentile(lag_ms, 99)), 3), "max": round(float(lag_ms.max()), 3)} if len(lag_ms) else None,
        "versions": versions,
        "client": {"pid": os.getpid(), "cores": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None},
    }


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m serving.loadtest", description=__doc__.splitlines()[0])
    ap.add_argument("--target", required=True, help="HOST:PORT of the server")
    ap.add_argument("--rows-per-request", type=int, default=100)
    mode = ap.add_mutually_exclusive_group(required=True)
    mode.add_argument("--qps", type=_rates, help="open loop: requests per second on a fixed schedule; several "
                      "comma-separated rates run one after another (a sweep, see --p99-target-ms)")
    mode.add_argument("--concurrency", type=int, help="closed loop: callers with one request outstanding each")
    ap.add_argument("--duration", type=float, required=True, help="seconds of load, warm-up included")
    ap.add_argument("--warmup", type=float, default=1.0, help="first seconds left out of the figures")
    ap.add_argument("--timeout", type=float, default=1.0, help="deadline per request, seconds")
    ap.add_argument("--out", required=True, help="JSON report to write")
    ap.add_argument("--rows", default=None, help="JSON-lines rows to send instead of random ids")
    ap.add_argument("--distinct", type=int, default=64, help="different request messages to cycle")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--backoff-ms", type=float, default=50.0, help="first pause in sending after UNAVAILABLE")
    ap.add_argument("--backoff-max-s", type=float, default=2.0, help="longest pause (each UNAVAILABLE doubles it up to this)")
    ap.add_argument("--p99-target-ms", type=float, default=25.0,
                    help="a sweep reports the run with the most rows/s whose p99 is under this and that had no errors")
    ap.add_argument("--scrape", default=None, metavar="URL",
                    help="the server's Prometheus endpoint (http://HOST:PORT/metrics): report what it counted during the run")
    channels.add_arguments(ap)
    args = ap.parse_args(argv)
    if args.rows_per_request < 1 or args.duration <= args.warmup or args.distinct < 1:
        ap.error("need --rows-per-request >= 1, --duration > --warmup, --distinct >= 1")
    if (args.qps is not None and min(args.qps) <= 0) or (args.concurrency is not None and args.concurrency < 1):
        ap.error("--qps must be > 0 and --concurrency >= 1")
    return args


def _rates(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give a rate or comma-separated rates") from None


def run_once(call, payloads: list[bytes], args: argparse.Namespace, qps: float | None, metadata=None) -> dict:
    """One load run (open loop at `qps`, or closed loop) → its report; with --scrape, plus
    what the server counted meanwhile (scraped before, halfway and after)."""
    t0 = time.perf_counter()
    backoff = Backoff(args.backoff_ms / 1e3, args.backoff_max_s)
    scrapes = [scrape(args.scrape)] if args.scrape else []
    halfway = threading.Timer(args.duration / 2, _scrape_into, (args.scrape, scrapes)) if args.scrape else None
    if halfway is not None:
        halfway.start()
    if qps:
        record, sent = open_loop(call, payloads, qps, args.duration, args.timeout, metadata, backoff)
    else:
        record, sent = closed_loop(call, payloads, args.concurrency, args.duration, args.timeout, metadata, backoff)
    start = min(record.scheduled) if record.scheduled else t0
    report = summarize(record, sent, args, start + args.warmup, args.duration - args.warmup)
    if halfway is not None:
        halfway.join()
        scrapes.append(scrape(args.scrape))
        # the whole run, warm-up included (the server's counters have no time window)
        report["server_counted"] = counted(scrapes[0], scrapes[-1])
        report["server_counted_halfway"] = counted(scrapes[0], scrapes[1]) if len(scrapes) == 3 else None
    report["qps_target"] = qps
    report["backoff"] = backoff.report()
    lat = report["latency_ms"]
    print(
        f"loadtest: {report['mode']} loop{f' at {qps:g}/s' if qps else ''}, {report['achieved_qps']} req/s, "
        f"{report['rows_per_s']} rows/s, p50 {lat['p50']} ms, p99 {lat['p99']} ms, max {lat['max']} ms, "
        f"errors {report['errors'] or 0}, connection errors {report['connection_errors']}",
        flush=True,
    )
    return report


def _scrape_into(url: str, scrapes: list) -> None:
    try:
        scrapes.append(scrape(url))
    except OSError:  # a server too busy to answer its scrape halfway: the run goes on
        pass


def best_under(reports: list[dict], p99_ms: float) -> dict | None:
    """The run with the most rows/s among those without errors and with p99 < p99_ms."""
    ok = [r for r in reports if not r["errors"] and not r.get("connection_errors") and r["latency_ms"]["p99"] is not None and r["latency_ms"]["p99"] < p99_ms]
    return max(ok, key=lambda r: r["rows_per_s"]) if ok else None


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    options = [("grpc.max_send_message_length", 64 << 20), ("grpc.max_receive_message_length", 64 << 20)]
    try:
        channel, metadata = channels.open_channel(args, options), channels.call_metadata(args)
    except (OSError, ValueError) as e:
        print(f"loadtest: {e}", file=sys.stderr)
        return 2
    with channel:
        try:
            payloads, _ = build_payloads(pb_grpc.InferenceStub(channel), args, metadata)
        except grpc.RpcError as e:
            print(f"loadtest: {args.target}: {e.code().name}: {e.details()}", file=sys.stderr)
            return 1
        except (OSError, ValueError) as e:
            print(f"loadtest: {e}", file=sys.stderr)
            return 2
        try:
            if args.scrape:
                scrape(args.scrape)  # an endpoint that does not answer fails now, not after the run
        except OSError as e:
            print(f"loadtest: --scrape {args.scrape}: {e}", file=sys.stderr)
            return 2
        call = channel.unary_unary(SCORE_METHOD, request_serializer=None, response_deserializer=pb.ScoreResponse.FromString)
        reports = [run_once(call, payloads, args, q, metadata) for q in (args.qps or [None])]
    if len(reports) == 1:
        result = reports[0]
    else:
        best = best_under(reports, args.p99_target_ms)
        result = {"sweep": reports, "p99_target_ms": args.p99_target_ms, "best": best}
        print(f"loadtest: most rows/s with p99 < {args.p99_target_ms:g} ms and no errors: "
              + (f"{best['rows_per_s']} rows/s at {best['qps_target']:g}/s (p50 {best['latency_ms']['p50']} ms, "
                 f"p99 {best['latency_ms']['p99']} ms)" if best else "none of the rates"))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"loadtest: → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
