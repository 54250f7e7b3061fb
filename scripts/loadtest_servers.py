"""Processes of the serving load test: servers pinned to a core, load-generator runs, the
bundle build. Used by scripts/loadtest_sweep.py and scripts/profile_request.py."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAKE_BUNDLE = ROOT / "scripts" / "make_deepfm_bundle.py"


class Server:
    """`taskset -c CORE python -m serving ...` on 127.0.0.1, gRPC and metrics on port 0,
    logs to a file.

    Args:
        name: its label in reports.
        bundle: the bundle it serves.
        core: the core it is pinned to.
        args: more `python -m serving` arguments.
        log: file of its output.
        python: the interpreter.
        checkout: the repository whose `serving` runs (`-m` imports from the working
            directory first): this one, or another for a before/after comparison.
    """

    def __init__(self, name: str, bundle: Path, core: int, args: list[str], log: Path, python: str, checkout: Path = ROOT):
        self.name, self.log, self.checkout = name, log, checkout
        command = ["taskset", "-c", str(core), python, "-m", "serving", "--bundle", str(bundle), "--host", "127.0.0.1",
                   "--port", "0", "--metrics-port", "0", "--drain-delay", "0", "--grace", "5", *args]
        self.command = command
        self._log_fh = open(log, "w")
        self.proc = subprocess.Popen(command, cwd=checkout, stdout=self._log_fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                     start_new_session=True)  # Ctrl-C reaches us, not it: we stop it
        self.port: int | None = None
        self.ready: dict = {}

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ready['metrics_port']}/metrics"

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


def run_point(server: Server, qps: float, args: argparse.Namespace, python: str, tmp: Path, scrape: bool = False) -> dict:
    """One open-loop run of this checkout's serving.loadtest pinned to the client core →
    its report; `scrape` adds what the server counted meanwhile (from its /metrics)."""
    out = tmp / f"{server.name}-{qps:g}-{time.monotonic_ns()}.json"
    command = ["taskset", "-c", str(args.client_core), python, "-m", "serving.loadtest", "--target", f"127.0.0.1:{server.port}",
               "--rows-per-request", str(args.rows_per_request), "--qps", f"{qps:g}", "--duration", f"{args.duration:g}",
               "--warmup", f"{args.warmup:g}", "--timeout", f"{args.timeout:g}", "--seed", str(args.seed), "--out", str(out),
               *(["--scrape", server.metrics_url] if scrape else [])]
    proc = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=args.duration + args.timeout + 120)
    if proc.returncode != 0 or not out.exists():
        raise RuntimeError(f"loadtest at {qps:g}/s on {server.name} failed ({proc.returncode}):\n{proc.stderr[-2000:]}")
    report = json.loads(out.read_text())
    out.unlink()
    if server.proc.poll() is not None:
        raise RuntimeError(f"server {server.name} died during the run:\n{server.tail()}")
    return report
