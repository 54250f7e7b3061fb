"""The serving load test: DeepFM-sized 2-cluster bundle, 100 rows per request,
server and load generator pinned to different cores, micro-batching on and off measured in
the same session, interleaved.

    scripts/loadtest.sh                                   # the full measurement (~10-12 min)
    scripts/loadtest.sh --duration 4 --warmup 1 --refine 1 --out runs/loadtest/smoke.json

Steps:
1. Builds the bundle with scripts/make_deepfm_bundle.py (reused when it exists;
   --rebuild forces it). That script imports `trainer`; serving does not.
2. Starts two servers, `taskset -c <server core> python -m serving`, batching on and
   off, both on 127.0.0.1 with port 0 (the port is read from the server's "serving" log
   line, so no port can be taken in between). Only one of them gets load at a time.
3. For each server, searches the open-loop rate: from --start-qps up by x--growth until a
   point misses (p99 >= --p99-ms, any error, or less than 97% of the rate answered), then
   --refine bisection steps between the last hit and the first miss. Each point is one
   `taskset -c <client core> python -m serving.loadtest --qps Q` run (--duration s, the
   first --warmup s left out). The two searches advance in lockstep, one point each per
   round, alternating which goes first, so slow drift on the machine hits both alike.
4. Measures each at half its best rate (interleaved too).
5. Writes one JSON (--out) with every point, the machine's load average before and after,
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
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE_BUNDLE = ROOT / "scripts" / "make_deepfm_bundle.py"
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


# ----------------------------------------------------------------------------- processes
class Server:
    """`taskset -c CORE python -m serving ...` on 127.0.0.1, port 0, logs to a file."""

    def __init__(self, name: str, bundle: Path, core: int, args: list[str], log: Path, python: str):
        self.name, self.log = name, log
        command = ["taskset", "-c", str(core), python, "-m", "serving", "--bundle", str(bundle), "--host", "127.0.0.1",
                   "--port", "0", "--drain-delay", "0", "--grace", "5", *args]
        self.command = command
        self._log_fh = open(log, "w")
        self.proc = subprocess.Popen(command, cwd=ROOT, stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # Ctrl-C reaches us, not it: we stop it
        self.port: int | None = None
        self.ready: dict = {}

    def wait_ready(self, timeout: float) -> int:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if record.get("msg") == "serving":
                    self.port = int(record["port"])
                    self.ready = record
                    return self.port
            if self.proc.poll() is not None:
                raise RuntimeError(f"server {self.name} exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.2)
        raise RuntimeError(f"server {self.name} not serving after {timeout:.0f} s:\n{self.tail()}")

    def cores(self) -> str | None:
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None

    def tail(self, n: int = 15) -> str:
        try:
            return "\n".join(self.log.read_text().splitlines()[-n:])
        except OSError:
            return ""

    def stop(self) -> int | None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self._log_fh.close()
        return self.proc.returncode


def build_bundle(python: str, bundle: Path) -> None:
    """scripts/make_deepfm_bundle.py → `bundle`, with this checkout first on the path (a
    script's sys.path starts at scripts/, and the venv's editable install may point at
    another checkout). Raises RuntimeError when it fails."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
    built = subprocess.run([python, str(MAKE_BUNDLE), "--out", str(bundle)], cwd=ROOT, capture_output=True, text=True, env=env)
    if built.returncode != 0:
        raise RuntimeError(f"bundle build failed:\n{built.stderr[-3000:]}")


def run_point(server: Server, qps: float, args: argparse.Namespace, python: str, tmp: Path) -> dict:
    """One open-loop run of serving.loadtest pinned to the client core → its report."""
    out = tmp / f"{server.name}-{qps:g}-{time.monotonic_ns()}.json"
    command = ["taskset", "-c", str(args.client_core), python, "-m", "serving.loadtest", "--target", f"127.0.0.1:{server.port}",
               "--rows-per-request", str(args.rows_per_request), "--qps", f"{qps:g}", "--duration", f"{args.duration:g}",
               "--warmup", f"{args.warmup:g}", "--timeout", f"{args.timeout:g}", "--seed", str(args.seed), "--out", str(out)]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.duration + args.timeout + 120)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"loadtest at {qps:g}/s on {server.name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    report = json.loads(out.read_text())
    out.unlink()
    if server.proc.poll() is not None:
        raise RuntimeError(f"server {server.name} died during the run:\n{server.tail()}")
    return report


def point_line(mode: str, qps: float, report: dict, hit: bool, why: str) -> str:
    lat = report["latency_ms"]
    flag = "" if hit else f"  MISS: {why}"
    if report.get("send_lag_ms") and report["send_lag_ms"]["p99"] > LAG_MS:
        flag += f"  (generator lagged, p99 {report['send_lag_ms']['p99']} ms)"
    return (f"  batching {mode:3s} {qps:8.1f} req/s → {report['rows_per_s']:>9} rows/s  p50 {lat['p50']} ms  "
            f"p99 {lat['p99']} ms{flag}")


def table(result: dict) -> str:
    rows = [("batching", "best rows/s", "at req/s", "p50 ms", "p99 ms", "half: rows/s", "p50 ms", "p99 ms")]
    for mode, r in result["modes"].items():
        best, half = r["best"], r["half_load"]
        if best is None:
            rows.append((mode, "none", "-", "-", "-", "-", "-", "-"))
            continue
        b, h = best["report"], (half or {}).get("report")
        rows.append((mode, f"{b['rows_per_s']:.0f}", f"{best['qps']:g}", f"{b['latency_ms']['p50']:.2f}", f"{b['latency_ms']['p99']:.2f}",
                     f"{h['rows_per_s']:.0f}" if h else "-", f"{h['latency_ms']['p50']:.2f}" if h else "-",
                     f"{h['latency_ms']['p99']:.2f}" if h else "-"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(c.rjust(w) for c, w in zip(r, widths)) for r in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/loadtest/deepfm-2c.json", help="the JSON report")
    ap.add_argument("--bundle", default="runs/loadtest/deepfm-2c", help="bundle directory (built when missing)")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the bundle even when it exists")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--client-core", type=int, default=1)
    ap.add_argument("--rows-per-request", type=int, default=100)
    ap.add_argument("--p99-ms", type=float, default=50.0, help="latency bound of a hit")
    ap.add_argument("--duration", type=float, default=20.0, help="seconds per point, warm-up included")
    ap.add_argument("--warmup", type=float, default=3.0, help="first seconds of a point left out")
    ap.add_argument("--timeout", type=float, default=1.0, help="deadline per request, seconds")
    ap.add_argument("--start-qps", type=float, default=25.0, help="first rate tried (requests/s)")
    ap.add_argument("--growth", type=float, default=1.5, help="factor between ramp steps")
    ap.add_argument("--refine", type=int, default=3, help="bisection steps after the first miss")
    ap.add_argument("--max-qps", type=float, default=2000.0)
    ap.add_argument("--modes", default="on,off", help="batching modes, comma-separated (on, off)")
    ap.add_argument("--server-args", default="", help="extra `python -m serving` arguments for both servers (quoted)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--python", default=sys.executable, help="interpreter for servers and load generators")
    args = ap.parse_args(argv)
    if args.duration <= args.warmup or args.growth <= 1 or args.start_qps <= 0:
        ap.error("need --duration > --warmup, --growth > 1, --start-qps > 0")
    args.modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not args.modes or set(args.modes) - {"on", "off"}:
        ap.error("--modes takes on, off or on,off")
    return args


def _raise_exit(signum, frame):
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    try:
        return measure(parse_args(argv))
    except RuntimeError as e:  # a server or load generator failed: say what, exit non-zero
        print(f"loadtest: {e}", file=sys.stderr)
        return 1


def measure(args: argparse.Namespace) -> int:
    signal.signal(signal.SIGTERM, _raise_exit)  # so the finally below stops the servers
    cores = os.sched_getaffinity(0)
    if args.server_core == args.client_core or not {args.server_core, args.client_core} <= cores:
        print(f"loadtest: need two different available cores (have {sorted(cores)}; asked server "
              f"{args.server_core}, client {args.client_core})", file=sys.stderr)
        return 2
    out = (ROOT / args.out).resolve() if not Path(args.out).is_absolute() else Path(args.out)
    bundle = (ROOT / args.bundle).resolve() if not Path(args.bundle).is_absolute() else Path(args.bundle)
    out.parent.mkdir(parents=True, exist_ok=True)

    if args.rebuild or not (bundle / "manifest.json").exists():
        print(f"loadtest: building the DeepFM-sized 2-cluster bundle → {bundle}", flush=True)
        build_bundle(args.python, bundle)
    os.sched_setaffinity(0, {args.client_core})  # this script's own (little) work stays off the server core

    extra = shlex.split(args.server_args)
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
            for mode in args.modes:
                log = out.with_name(f"{out.stem}.server-{mode}.log")
                servers[mode] = Server(mode, bundle, args.server_core, ["--batching", mode, *extra], log, args.python)
            for mode, server in servers.items():
                port = server.wait_ready(300)
                print(f"loadtest: server batching={mode} on 127.0.0.1:{port} (cores {server.cores()}, log {server.log})", flush=True)
            searches = {m: RateSearch(args.start_qps, args.growth, args.refine, args.max_qps) for m in args.modes}
            points: dict[str, list[dict]] = {m: [] for m in args.modes}
            order = list(args.modes)
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
            halves: dict[str, dict | None] = {}
            for mode in order:
                best = best_point(points[mode])
                if best is None:
                    halves[mode] = None
                    continue
                qps = round(best["qps"] / 2, 1)
                report = run_point(servers[mode], qps, args, args.python, Path(tmp))
                hit, why = verdict(report, args.p99_ms)
                halves[mode] = {"qps": qps, "hit": hit, "why": why, "report": report, "loadavg": os.getloadavg()}
                print("  half load:" + point_line(mode, qps, report, hit, why)[1:], flush=True)
            for mode in args.modes:
                server = servers[mode]
                result["modes"][mode] = {
                    "server_command": server.command, "server_cores": server.cores(), "server_ready": server.ready,
                    "best": best_point(points[mode]), "half_load": halves[mode], "sweep": points[mode],
                }
    finally:
        for server in servers.values():
            server.stop()
    result["environment"]["loadavg_after"] = os.getloadavg()
    result["seconds"] = round(time.time() - started, 1)
    best_rows = {m: (r["best"] or {}).get("report", {}).get("rows_per_s") for m, r in result["modes"].items()}
    result["summary"] = {
        "best_rows_per_s": best_rows,
        "half_load": {m: {k: (r["half_load"] or {}).get("report", {}).get("latency_ms", {}).get(k) for k in ("p50", "p99")}
                      for m, r in result["modes"].items()},
        "target_rows_per_s": 20000,
        "generator_limited_points": sum(1 for r in result["modes"].values() for p in r["sweep"]
                                        if (p["report"].get("send_lag_ms") or {}).get("p99", 0) > LAG_MS),
    }
    out.write_text(json.dumps(result, indent=1) + "\n")
    print()
    print(table(result))
    print(f"\nloadtest: load average before {tuple(round(x, 2) for x in load_before)}, after "
          f"{tuple(round(x, 2) for x in result['environment']['loadavg_after'])} (the figures need an idle machine)")
    print(f"loadtest: {result['seconds']:.0f} s; → {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
