"""The serving load test: DeepFM-sized 2-cluster bundle, 100 rows per request,
server and load generator pinned to different cores, micro-batching on and off measured in
the same session, interleaved.

    scripts/loadtest.sh                                   # the full measurement (~12-15 min)
    scripts/loadtest.sh --duration 4 --warmup 1 --refine 1 --out runs/loadtest/smoke.json
    scripts/loadtest.sh --baseline /path/to/older/checkout   # before vs after, same run (~2x)

Steps:
1. Builds the bundle with scripts/make_deepfm_bundle.py (reused when it exists;
   --rebuild forces it). That script imports `trainer`; serving does not.
2. Starts two servers, `taskset -c <server core> python -m serving`, batching on and
   off, both on 127.0.0.1 with port 0 (the port is read from the server's "serving" log
   line, so no port can be taken in between). Only one of them gets load at a time.
   With --baseline DIR, two more ("on-before", "off-before") run DIR's `serving` on the
   same bundle; every step below treats them as two more modes.
3. For each server, searches the open-loop rate: from --start-qps up by x--growth until a
   point misses (p99 >= --p99-ms, any error, or less than 97% of the rate answered), then
   --refine bisection steps between the last hit and the first miss. Each point is one
   `taskset -c <client core> python -m serving.loadtest --qps Q` run (--duration s, the
   first --warmup s left out). The two searches advance in lockstep, one point each per
   round, alternating which goes first, so slow drift on the machine hits both alike.
4. Measures each at half its best rate (interleaved too).
5. Overload: offers each --overload x its best rate and reports goodput (OK rows/s) as a
   share of that best rows/s, the accepted requests' p50/p99, the client's failures by
   status code, and what the server counted (answers by code, refusals by code and
   reason), scraped from its /metrics before, halfway through and after the run.
6. Writes one JSON (--out) with every point, the machine's load average before and after,
   and prints a table. The servers are always stopped (SIGTERM, then SIGKILL), also on
   Ctrl-C or SIGTERM of this script.

The figures mean something only on an otherwise idle machine: the JSON records the load
average, and a point whose load generator fell behind its schedule is flagged.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import signal
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # its sibling, also when a test loads it by path
from loadtest_servers import ROOT, Server, build_bundle, run_point  # noqa: E402

ANSWERED = 0.97  # a point must answer this share of its rate
LAG_MS = 5.0  # generator send lag (p99) above which a point is flagged generator-limited


# ----------------------------------------------------------------------------- search
@dataclass
class RateSearch:
    """Open-loop rates to try: grow geometrically until a miss, then bisect (geometric
    mean) between the best hit and the lowest miss.

    Args:
        start: first rate (requests/s).
        growth: factor between ramp steps (> 1).
        refine: bisection steps after the first miss.
        max_qps: highest rate tried; reaching it with a hit ends the search.
        min_qps: lowest rate tried when even the start misses.
    """

    start: float
    growth: float = 1.5
    refine: int = 3
    max_qps: float = 2000.0
    min_qps: float = 1.0
    points: list[tuple[float, bool]] = field(default_factory=list)
    _refined: int = 0

    def hits(self) -> list[float]:
        return [q for q, ok in self.points if ok]

    def misses(self) -> list[float]:
        return [q for q, ok in self.points if not ok]

    def next(self) -> float | None:
        """The next rate to try; None when done."""
        if not self.points:
            return round(min(self.start, self.max_qps), 1)
        hits, misses = self.hits(), self.misses()
        if not misses:  # still ramping up
            last = self.points[-1][0]
            if last >= self.max_qps:
                return None
            return round(min(last * self.growth, self.max_qps), 1)
        if not hits:  # even the lowest rate tried missed: step down
            low = min(misses)
            nxt = round(low / self.growth, 1)
            return nxt if nxt >= self.min_qps and low > self.min_qps else None
        lo, hi = max(hits), min((q for q in misses if q > max(hits)), default=None)
        if hi is None or self._refined >= self.refine or hi / lo < 1.04:
            return None
        self._refined += 1
        return round(math.sqrt(lo * hi), 1)

    def record(self, qps: float, ok: bool) -> None:
        self.points.append((qps, ok))


def verdict(report: dict, p99_ms: float) -> tuple[bool, str]:
    """(hit?, why not) of one serving.loadtest report."""
    if report.get("errors") or report.get("connection_errors"):
        return False, f"errors {report['errors']}, connection errors {report.get('connection_errors', 0)}"
    p99 = (report.get("latency_ms") or {}).get("p99")
    if p99 is None:
        return False, "no successful request"
    if p99 >= p99_ms:
        return False, f"p99 {p99:.1f} ms >= {p99_ms:g}"
    want = report["qps_target"]
    if report["achieved_qps"] < ANSWERED * want:
        return False, f"answered {report['achieved_qps']}/s of {want}/s"
    return True, ""


def best_point(points: list[dict]) -> dict | None:
    hits = [p for p in points if p["hit"]]
    return max(hits, key=lambda p: p["report"]["rows_per_s"]) if hits else None


# ----------------------------------------------------------------------------- output
def point_line(mode: str, qps: float, report: dict, hit: bool, why: str) -> str:
    lat = report["latency_ms"]
    flag = "" if hit else f"  MISS: {why}"
    if report.get("send_lag_ms") and report["send_lag_ms"]["p99"] > LAG_MS:
        flag += f"  (generator lagged, p99 {report['send_lag_ms']['p99']} ms)"
    return (f"  batching {mode:3s} {qps:8.1f} req/s → {report['rows_per_s']:>9} rows/s  p50 {lat['p50']} ms  "
            f"p99 {lat['p99']} ms{flag}")


def _fmt(x, spec: str) -> str:
    return "-" if x is None else format(x, spec)


def table(result: dict) -> str:
    rows = [("mode", "best rows/s", "at req/s", "p50 ms", "p99 ms", "half: p50 ms", "p99 ms",
             "2x: goodput rows/s", "of best", "accepted p50", "p99", "refused (server)")]
    for mode, r in result["modes"].items():
        best = r["best"]
        if best is None:
            rows.append((mode, "none", *["-"] * 10))
            continue
        b, h = best["report"], ((r.get("half_load") or {}).get("report") or {}).get("latency_ms", {})
        o = r.get("overload") or {}
        refused = sum((o.get("server_counted") or {}).get("refusals", {}).values()) if o else None
        rows.append((mode, f"{b['rows_per_s']:.0f}", f"{best['qps']:g}", f"{b['latency_ms']['p50']:.2f}", f"{b['latency_ms']['p99']:.2f}",
                     _fmt(h.get("p50"), ".2f"), _fmt(h.get("p99"), ".2f"), _fmt(o.get("goodput_rows_per_s"), ".0f"),
                     _fmt(o.get("goodput_share"), ".0%"), _fmt(o.get("accepted_p50_ms"), ".2f"), _fmt(o.get("accepted_p99_ms"), ".2f"),
                     _fmt(refused, "d")))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def overload(server: Server, best: dict, args: argparse.Namespace, tmp: Path) -> dict:
    """Offers args.overload x the best rate, open loop, scraping the server meanwhile."""
    qps = round(best["qps"] * args.overload, 1)
    report = run_point(server, qps, args, args.python, tmp, scrape=True)
    capacity = best["report"]["rows_per_s"]
    return {
        "qps": qps, "capacity_rows_per_s": capacity, "goodput_rows_per_s": report["rows_per_s"],
        "goodput_share": round(report["rows_per_s"] / capacity, 4) if capacity else None,
        "accepted_p50_ms": report["latency_ms"]["p50"], "accepted_p99_ms": report["latency_ms"]["p99"],
        "client_errors": report["errors"], "connection_errors": report["connection_errors"],
        "server_counted": report.get("server_counted"), "server_counted_halfway": report.get("server_counted_halfway"),
        "report": report, "loadavg": os.getloadavg(),
    }


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/loadtest/deepfm-2c.json", help="the JSON report")
    ap.add_argument("--bundle", default="runs/loadtest/deepfm-2c", help="bundle directory (built when missing)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the bundle even when it exists")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--rows-per-request", type=int, default=100)
    ap.add_argument("--p99-ms", type=float, default=25.0, help="latency bound of a hit")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per point, warm-up included")
    ap.add_argument("--warmup", type=float, default=3.0, help="first seconds of a point left out")
    ap.add_argument("--timeout", type=float, default=1.0, help="deadline per request, seconds")
    ap.add_argument("--start-qps", type=float, default=25.0, help="first rate tried (requests/s)")
    ap.add_argument("--growth", type=float, default=1.5, help="factor between ramp steps")
    ap.add_argument("--refine", type=int, default=3, help="bisection steps after the first miss")
    ap.add_argument("--max-qps", type=float, default=2000.0)
    ap.add_argument("--overload", type=float, default=2.0, help="offered load of the overload run, x the best rate (0: skip)")
    ap.add_argument("--modes", default="on,off", help="batching modes, comma-separated (on, off)")
    ap.add_argument("--baseline", default=None, metavar="DIR",
                    help="another checkout (same venv): run its server too, as modes on-before / off-before")
    ap.add_argument("--server-args", default="", help="extra `python -m serving` arguments for every server (quoted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--python", default=sys.executable, help="interpreter for servers and load generators")
    args = ap.parse_args(argv)
    if args.duration <= args.warmup or args.growth <= 1 or args.start_qps <= 0 or args.overload < 0:
        ap.error("need --duration > --warmup, --growth > 1, --start-qps > 0, --overload >= 0")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"on", "off"}:
        ap.error("--modes takes on, off or on,off")
    if args.baseline is not None and not (Path(args.baseline) / "serving" / "__main__.py").is_file():
        ap.error(f"--baseline {args.baseline}: no serving/__main__.py there")
    return args


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    try:
        return measure(parse_args(argv))
    except RuntimeError as e:  # a server or load generator failed: say what, exit non-zero
        print(f"loadtest: {e}", file=sys.stderr)
        return 1


def _absolute(path: str) -> Path:
    return (ROOT / path).resolve() if not Path(path).is_absolute() else Path(path)


def measure(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_exit)  # so the finally below stops the servers
    cores = os.sched_getaffinity(0)
    if args.server_core == args.client_core or not {args.server_core, args.client_core} <= cores:
        print(f"loadtest: need two different available cores (have {sorted(cores)}; asked server "
              f"{args.server_core}, client {args.client_core})", file=sys.stderr)
        return 2
    out, bundle = _absolute(args.out), _absolute(args.bundle)
    out.parent.mkdir(parents=True, exist_ok=True)

    if args.rebuild or not (bundle / "manifest.json").exists():
        print(f"loadtest: building the DeepFM-sized 2-cluster bundle → {bundle}", flush=True)
        build_bundle(args.python, bundle)
    os.sched_setaffinity(0, {args.client_core})  # this script's own (little) work stays off the server core

    extra = shlex.split(args.server_args)
    variants = {m: (m, ROOT) for m in args.modes}
    if args.baseline is not None:
        variants |= {f"{m}-before": (m, Path(args.baseline).resolve()) for m in args.modes}
    labels = list(variants)
    servers: dict[str, Server] = {}
    started = time.time()
    load_before = os.getloadavg()
    result: dict = {
        "what": "open-loop QPS sweep, DeepFM-sized 2-cluster bundle (MLP 400-400-400), batching on vs off, interleaved",
        "config": {k: v for k, v in vars(args).items() if k != "python"},
        "environment": {"nproc": os.cpu_count(), "available_cores": sorted(cores), "loadavg_before": load_before},
        "modes": {},
    }
    try:
        with tempfile.TemporaryDirectory(prefix="embstack-loadtest-") as tmp:
            for label, (batching, checkout) in variants.items():
                log = out.with_name(f"{out.stem}.server-{label}.log")
                servers[label] = Server(label, bundle, args.server_core, ["--batching", batching, *extra], log, args.python, checkout)
            for label, server in servers.items():
                port = server.wait_ready(300)
                print(f"loadtest: server {label} ({server.checkout}) on 127.0.0.1:{port} (cores {server.cores()}, log {server.log})",
                      flush=True)
            searches = {m: RateSearch(args.start_qps, args.growth, args.refine, args.max_qps) for m in labels}
            points: dict[str, list[dict]] = {m: [] for m in labels}
            order = list(labels)
            rnd = 0
            while True:
                todo = [(m, searches[m].next()) for m in order]
                todo = [(m, q) for m, q in todo if q is not None]
                if not todo:
                    break
                rnd += 1
                for mode, qps in todo:
                    report = run_point(servers[mode], qps, args, args.python, Path(tmp))
                    hit, why = verdict(report, args.p99_ms)
                    searches[mode].record(qps, hit)
                    points[mode].append({"qps": qps, "round": rnd, "hit": hit, "why": why, "report": report,
                                         "loadavg": os.getloadavg()})
                    print(point_line(mode, qps, report, hit, why), flush=True)
                order.reverse()
            halves: dict[str, dict | None] = {m: None for m in labels}
            overloads: dict[str, dict | None] = {m: None for m in labels}
            for mode in order:
                best = best_point(points[mode])
                if best is None:
                    continue
                qps = round(best["qps"] / 2, 1)
                report = run_point(servers[mode], qps, args, args.python, Path(tmp))
                hit, why = verdict(report, args.p99_ms)
                halves[mode] = {"qps": qps, "hit": hit, "why": why, "report": report, "loadavg": os.getloadavg()}
                print("  half load:" + point_line(mode, qps, report, hit, why)[1:], flush=True)
            for mode in reversed(order) if args.overload else ():
                best = best_point(points[mode])
                if best is None:
                    continue
                overloads[mode] = o = overload(servers[mode], best, args, Path(tmp))
                print(f"  {args.overload:g}x load: {mode:10s} {o['qps']:8.1f} req/s → goodput {o['goodput_rows_per_s']} rows/s "
                      f"({o['goodput_share']:.0%} of {o['capacity_rows_per_s']}), accepted p50 {o['accepted_p50_ms']} ms p99 "
                      f"{o['accepted_p99_ms']} ms, client errors {o['client_errors']}, server refusals "
                      f"{(o['server_counted'] or {}).get('refusals')}", flush=True)
            for mode in labels:
                server = servers[mode]
                result["modes"][mode] = {
                    "server_command": server.command, "server_checkout": str(server.checkout), "server_cores": server.cores(),
                    "server_ready": server.ready, "best": best_point(points[mode]), "half_load": halves[mode],
                    "overload": overloads[mode], "sweep": points[mode],
                }
    finally:
        for server in servers.values():
            server.stop()
    result["environment"]["loadavg_after"] = os.getloadavg()
    result["seconds"] = round(time.time() - started, 1)
    result["summary"] = summary(result, args.p99_ms)
    out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(table(result))
    print(f"\nloadtest: load average before {tuple(round(x, 2) for x in load_before)}, after "
          f"{tuple(round(x, 2) for x in result['environment']['loadavg_after'])} (the figures need an idle machine)")
    print(f"loadtest: {result['seconds']:.0f} s; → {out}")
    return 0


def summary(result: dict, p99_ms: float) -> dict:
    """The figures the load test is for, per mode, with the goals they are held against."""
    out: dict = {"goals": {"best_rows_per_s": 40000, "p99_ms_of_best": p99_ms, "half_load_p99_ms": 10.0,
                           "overload_goodput_share": 0.9, "overload_accepted_p99_ms": 50.0}}
    for mode, r in result["modes"].items():
        half = ((r["half_load"] or {}).get("report") or {}).get("latency_ms", {})
        o = r["overload"] or {}
        out[mode] = {
            "best_rows_per_s": (r["best"] or {}).get("report", {}).get("rows_per_s"),
            "half_load_p50_ms": half.get("p50"), "half_load_p99_ms": half.get("p99"),
            "overload_goodput_rows_per_s": o.get("goodput_rows_per_s"), "overload_goodput_share": o.get("goodput_share"),
            "overload_accepted_p99_ms": o.get("accepted_p99_ms"), "overload_client_errors": o.get("client_errors"),
            "overload_server_refusals": (o.get("server_counted") or {}).get("refusals"),
        }
    out["generator_limited_points"] = sum(1 for r in result["modes"].values() for p in r["sweep"]
                                          if (p["report"].get("send_lag_ms") or {}).get("p99", 0) > LAG_MS)
    return out


if __name__ == "__main__":
    sys.exit(main())
