"""Where one Score request's time goes: the stages timed one by one in this process,
then the same request through a real server (pinned to its own core) one at a time and
at half load, with the server's own handler and queue-wait histograms scraped.

    .venv/bin/python scripts/profile_request.py                      # DeepFM-sized 2-cluster bundle
    .venv/bin/python scripts/profile_request.py --half-qps 183,63 --out runs/profile/request.json

Stages (median of --reps rounds that call every stage once, single thread, torch intra-op
threads 1 as the server runs): parse (bytes → ScoreRequest, what gRPC's deserializer does before the handler),
decode (`wire.decode`: validation and encoding), the predictor's work split into its
parts (model inputs, router call, per-cluster split, each cluster model call, merge and
sigmoid), `Predictor.predict` as one call, and the response (message + serialisation);
then the program calls and predict again with torch.export's per-call checks kept: the
in-graph assertions only (as the loader left them before it removed them), and all of
them, input hook included (the programs as `torch.export.load` returns them).

Through a server (`python -m serving` under `taskset -c --server-core`, this process on
--client-core): with batching on and off, --sequential requests one at a time (no
queueing: the fixed cost) and an open-loop run at --half-qps (`serving.loadtest`). From
the server's scrape: mean handler time (`embstack_request_duration_seconds`) and mean
queue wait for a batch worker (`embstack_queue_wait_seconds`). So:
    client-side round trip − handler time = gRPC transport, (de)serialisation, and the
                                            wait for a handler thread;
    handler time − (decode + predict + response) = admission, hand-offs to and from the
                                            batch worker, GIL contention.
Writes the JSON (--out) and prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import grpc
import numpy as np
import torch
from prometheus_client.parser import text_string_to_metric_families

# this checkout's serving, not whichever one the venv's editable install points at
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from loadtest_servers import ROOT, Server, build_bundle, run_point  # noqa: E402  (scripts/ is sys.path[1])
from serving import wire
from serving._proto.embstack.v1 import inference_pb2 as pb
from serving.bundle import Bundle, load_bundle
from serving.client import random_columns
from serving.predictor import Predictor


def timed(fns: dict[str, object], reps: int) -> dict[str, float]:
    """Median ms of each function over `reps` rounds (after 10 unmeasured ones). Each
    round calls every function once, so drift in the machine's load hits all alike."""
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(reps + 10):
        for k, fn in fns.items():
            t = time.perf_counter()
            fn()
            if r >= 10:
                times[k].append(time.perf_counter() - t)
    return {k: round(statistics.median(v) * 1e3, 4) for k, v in times.items()}


def as_exported(bundle: Bundle, drop_hook: bool) -> Bundle:
    """The bundle's programs as torch.export.load gives them: with the per-call input hook
    and the in-graph assertions that `load_bundle` removes, or (drop_hook) with the
    assertions only, as bundles loaded before the assertions were removed."""
    def raw(name: str):
        module = torch.export.load(str(bundle.path / name)).module()
        for key, hook in list(module._forward_pre_hooks.items()) if drop_hook else ():
            if getattr(hook, "__name__", "") == "_check_input_constraints_pre_hook":
                del module._forward_pre_hooks[key]
        return module

    m = bundle.manifest
    router = raw(m.router) if m.router is not None else bundle.router
    return dataclasses.replace(bundle, router=router, models=tuple(raw(c.model) for c in m.clusters))


def stages(predictor: Predictor, payload: bytes, reps: int) -> dict[str, float]:
    """Median ms of each stage of one request, in request order; the program calls also
    with torch.export's checks kept."""
    bundle, keys = predictor.bundle, predictor.bundle.spec.names
    checked = as_exported(bundle, drop_hook=False)
    asserting = as_exported(bundle, drop_hook=True)
    request = pb.ScoreRequest.FromString(payload)
    batch = wire.decode(predictor, request)
    with torch.inference_mode():
        inputs = batch.to_inputs(keys)
        clusters = bundle.router(*inputs).numpy()
        parts = {c: batch.take(np.flatnonzero(clusters == c)) for c in np.unique(clusters).tolist()}
        part_inputs = {c: p.to_inputs(keys) for c, p in parts.items()}
        pred = predictor.predict(batch)
        fns = {
            "parse request (gRPC deserializer)": lambda: pb.ScoreRequest.FromString(payload),
            "decode + validate (wire.decode)": lambda: wire.decode(predictor, request),
            "model inputs (to_inputs)": lambda: batch.to_inputs(keys),
            "router call": lambda: bundle.router(*inputs),
            "split rows by cluster": lambda: [batch.take(np.flatnonzero(clusters == c)).to_inputs(keys) for c in parts],
        }
        for c, p in part_inputs.items():
            fns[f"cluster {c} call ({parts[c].num_rows} rows)"] = lambda m=bundle.models[c], p=p: m(*p)
        fns["predict, one call"] = lambda: predictor.predict(batch)
        fns["response (build + serialise)"] = lambda: wire.response(pred).SerializeToString()
        for what, b in (("in-graph assertions kept", asserting), ("export's checks all kept", checked)):
            fns[f"router call, {what}"] = lambda b=b: b.router(*inputs)
            for c, p in part_inputs.items():
                fns[f"cluster {c} call, {what}"] = lambda m=b.models[c], p=p: m(*p)
            fns[f"predict, {what}"] = lambda p=Predictor(b, predictor.encoder.limits): p.predict(batch)
        return timed(fns, reps)


def scrape(url: str) -> dict[str, float]:
    """Sum and count of the handler and queue-wait histograms from the server's /metrics."""
    with urllib.request.urlopen(url, timeout=5) as r:
        text = r.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name.endswith(("_sum", "_count")) and family.name in ("embstack_request_duration_seconds", "embstack_queue_wait_seconds"):
                if s.labels.get("method", "Score").endswith("Score"):
                    out[s.name] = out.get(s.name, 0.0) + s.value
    return out


def mean_ms(before: dict, after: dict, name: str) -> float | None:
    n = after.get(f"{name}_count", 0) - before.get(f"{name}_count", 0)
    return round((after.get(f"{name}_sum", 0) - before.get(f"{name}_sum", 0)) / n * 1e3, 3) if n else None


def sequential(port: int, payloads: list[bytes], n: int) -> dict:
    """n requests one after another; client-side round-trip percentiles in ms."""
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        call = channel.unary_unary("/embstack.v1.Inference/Score", request_serializer=None,
                                   response_deserializer=pb.ScoreResponse.FromString)
        for p in payloads[:20]:
            call(p, timeout=5)
        times = []
        for i in range(n):
            t = time.perf_counter()
            call(payloads[i % len(payloads)], timeout=5)
            times.append(time.perf_counter() - t)
    a = np.asarray(times) * 1e3
    return {"requests": n, "p50": round(float(np.percentile(a, 50)), 3), "p99": round(float(np.percentile(a, 99)), 3),
            "mean": round(float(a.mean()), 3)}


def through_server(mode: str, bundle: Path, payloads: list[bytes], args: argparse.Namespace, tmp: Path) -> dict:
    log = Path(tmp) / f"server-{mode}.log"
    server = Server(mode, bundle, args.server_core, ["--batching", mode, *args.server_args.split()], log, args.python)
    try:
        server.wait_ready(300)
        before = scrape(server.metrics_url)
        seq = sequential(server.port, payloads, args.sequential)
        after = scrape(server.metrics_url)
        seq["handler_mean"] = mean_ms(before, after, "embstack_request_duration_seconds")
        seq["queue_wait_mean"] = mean_ms(before, after, "embstack_queue_wait_seconds")
        before = scrape(server.metrics_url)
        qps = args.half_qps[mode]
        report = run_point(server, qps, args, args.python, Path(tmp))
        after = scrape(server.metrics_url)
        half = {"qps": qps, "p50": report["latency_ms"]["p50"], "p99": report["latency_ms"]["p99"],
                "mean": report["latency_ms"].get("mean"), "errors": report["errors"],
                "handler_mean": mean_ms(before, after, "embstack_request_duration_seconds"),
                "queue_wait_mean": mean_ms(before, after, "embstack_queue_wait_seconds")}
        return {"sequential": seq, "half_load": half, "server_cores": server.cores()}
    finally:
        server.stop()


def _dash(x) -> str:
    return "-" if x is None else str(x)


def print_table(result: dict) -> None:
    st = result["stages_ms"]
    width = max(len(k) for k in st) + 2
    print(f"\none 100-row request, stages in-process (median of {result['config']['reps']} interleaved rounds, ms):")
    for k, v in st.items():
        print(f"  {k:<{width}} {v:8.3f}")
    inside = st["decode + validate (wire.decode)"] + st["predict, one call"] + st["response (build + serialise)"]
    print(f"  {'decode + predict + response':<{width}} {inside:8.3f}")
    print("\nthrough the server (ms; handler and queue wait are the server's own means from /metrics):")
    print(f"  {'batching':<9} {'load':<16} {'client p50':>10} {'client p99':>10} {'client mean':>11} {'handler':>8} "
          f"{'queue wait':>10} {'outside handler':>15} {'handler − work':>14}")
    for mode, r in result["server"].items():
        for name, row in (("one at a time", r["sequential"]), (f"{r['half_load']['qps']:g} req/s", r["half_load"])):
            h, q, m = row["handler_mean"], row["queue_wait_mean"], row["mean"]
            outside = f"{m - h:.3f}" if (h is not None and m is not None) else "-"
            rest = f"{h - inside:.3f}" if h is not None else "-"
            print(f"  {mode:<9} {name:<16} {_dash(row['p50']):>10} {_dash(row['p99']):>10} {_dash(m):>11} "
                  f"{_dash(h):>8} {_dash(q):>10} {outside:>15} {rest:>14}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", default="runs/loadtest/deepfm-2c", help="bundle directory (built when missing)")
    ap.add_argument("--out", default="runs/profile/request.json")
    ap.add_argument("--rows-per-request", type=int, default=100)
    ap.add_argument("--reps", type=int, default=300, help="calls per in-process stage")
    ap.add_argument("--sequential", type=int, default=400, help="one-at-a-time requests per server")
    ap.add_argument("--half-qps", default="183,63",
                    help="open-loop rate of the loaded run (req/s), one per --modes entry or one for all (default: "
                         "half the best rates measured in docs/results.md, batching on and off)")
    ap.add_argument("--duration", type=float, default=8.0, help="seconds of the loaded run, warm-up included")
    ap.add_argument("--warmup", type=float, default=2.0)
    ap.add_argument("--timeout", type=float, default=1.0)
    ap.add_argument("--modes", default="on,off")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--server-args", default="", help="extra `python -m serving` arguments")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--python", default=sys.executable)
    args = ap.parse_args(argv)
    args.modes = [m for m in args.modes.split(",") if m]
    try:
        rates = [float(q) for q in args.half_qps.split(",")]
    except ValueError:
        ap.error(f"--half-qps {args.half_qps!r}: give req/s, comma-separated")
    if len(rates) not in (1, len(args.modes)) and args.modes:
        ap.error(f"--half-qps gives {len(rates)} rates for {len(args.modes)} modes")
    args.half_qps = dict(zip(args.modes, rates * len(args.modes) if len(rates) == 1 else rates))
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    bundle = (ROOT / args.bundle).resolve()
    if not (bundle / "manifest.json").exists():
        build_bundle(args.python, bundle)
    os.sched_setaffinity(0, {args.client_core})
    torch.set_num_threads(1)
    predictor = Predictor(load_bundle(bundle))
    info = wire.model_info(predictor.bundle, predictor.encoder.limits.max_rows)
    rng = np.random.default_rng(args.seed)
    payloads = [random_columns(info, args.rows_per_request, rng).SerializeToString() for _ in range(64)]
    result = {"config": {k: v for k, v in vars(args).items() if k != "python"}, "loadavg_before": os.getloadavg(),
              "stages_ms": stages(predictor, payloads[0], args.reps), "server": {}}
    with tempfile.TemporaryDirectory(prefix="embstack-profile-") as tmp:
        for mode in args.modes:
            result["server"][mode] = through_server(mode, bundle, payloads, args, Path(tmp))
    result["loadavg_after"] = os.getloadavg()
    out = (ROOT / args.out) if not Path(args.out).is_absolute() else Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print_table(result)
    print(f"\nload average before {tuple(round(x, 2) for x in result['loadavg_before'])}, after "
          f"{tuple(round(x, 2) for x in result['loadavg_after'])}; → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
