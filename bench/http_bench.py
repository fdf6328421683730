"""Requests per second of GET /pith/{suffix}/state.json: the daemon against nginx on the same bytes.

Run from the repository root (nginx and wrk are needed for the full run,
for example ``apt-get install nginx-light wrk``; the tests never need them)::

    python -m bench.http_bench --subjects 10000 --duration 10 --repeat 3
    python -m bench.http_bench --smoke

Setup, which is not timed, imports ``--subjects`` bundles from the
generator of ``bench.import_bench`` into a new store. It writes every
served state (``Store.get_state_bytes``) to ``pith/{suffix}/state.json``
under a document root and starts the servers on free ports of 127.0.0.1:
nginx serving that root as static files, with a configuration of its own
(``nginx -p PREFIX -c CONF``, one worker process unless
``--nginx-workers`` sets more), the daemon itself (``pith-mirror run``) on
the store, and the Hypercorn ceiling described below. Before and after
measuring, the benchmark checks that every server returns the stored
bytes for a sample of paths.

wrk then requests uniformly random paths from the same list of suffixes,
with the same threads, connections and duration, from each server in turn:
a warm-up run of ``--warmup`` seconds that is not counted, then
``--repeat`` measured runs, alternating between the servers. The report
gives the median requests per second of each, their ratio, latency
percentiles, and the CPU seconds each server process used per request
(from ``/proc/PID/stat``), because wrk shares the machine's cores.

A third server shows the ceiling that Hypercorn itself sets: a minimal ASGI
application that returns the same bytes from a dict, served by
Hypercorn's trio worker with the daemon's settings. The daemon cannot be
faster than it. A fourth shows the ceiling of trio itself: a bare trio
server, with no HTTP library, that reads each request up to its blank line,
takes the path from its first line and sends a fixed head and the bytes
from a dict in one write. It is no HTTP server (it ignores bodies and every
header), only a bound on what any server on trio could reach here.

``--smoke`` runs neither nginx nor wrk: it starts the daemon on a small
store and sends a fixed number of requests from one keep-alive connection
in this process, checking every status and body.
"""

from __future__ import annotations

import argparse
import http.client
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import trio

from node.store import Store
from protocol import default_trust

from .import_bench import build_bundles, import_bundles, machine_facts
from .verify_merge import DEFAULT_CACHE_DIR, BenchmarkError

__all__ = [
    "DaemonProcess",
    "HttpMeasurement",
    "SmokeResult",
    "build_store",
    "free_port",
    "main",
    "process_cpu_seconds",
    "run_smoke",
]

TARGET_RATIO = 0.25
DEFAULT_SUBJECTS = 10_000
SMOKE_SUBJECTS = 50
SMOKE_REQUESTS = 200
READY_TIMEOUT_SECONDS = 60.0
STOP_TIMEOUT_SECONDS = 15.0
# Paths whose bodies are compared between the servers before measuring.
SAMPLE_CHECKS = 20
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    """Return a TCP port of 127.0.0.1 that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def process_cpu_seconds(pid: int) -> float:
    """Return the user plus system CPU seconds a process has used, from /proc/PID/stat."""
    text = Path(f"/proc/{pid}/stat").read_text()
    # Fields after the parenthesised command name; utime and stime are the
    # 14th and 15th fields of the whole line.
    fields = text.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLOCK_TICKS


def _http_get(url: str, timeout: float = 5.0) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as error:
        return error.code, error.read()


def _wait_until_served(url: str, process: subprocess.Popen[bytes], log_path: Path, server_name: str) -> None:
    """Poll ``url`` until it returns 200; raise BenchmarkError if ``process`` exits or the time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise BenchmarkError(f"{server_name} exited with status {process.returncode}: {_tail(log_path)}")
        try:
            status, _ = _http_get(url, timeout=2.0)
        except OSError:
            status = 0
        if status == 200:
            return
        time.sleep(0.1)
    raise BenchmarkError(f"{server_name} did not return 200 for {url} within {READY_TIMEOUT_SECONDS:.0f} s: {_tail(log_path)}")


def _tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _stop(process: subprocess.Popen[bytes], stop_signal: int) -> None:
    """Send ``stop_signal`` to a process this module started, then SIGKILL it if it has not exited in time."""
    if process.poll() is not None:
        return
    process.send_signal(stop_signal)
    try:
        process.wait(timeout=STOP_TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=STOP_TIMEOUT_SECONDS)


def _daemon_command() -> list[str]:
    script = Path(sys.executable).with_name("pith-mirror")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-m", "node"]


class DaemonProcess:
    """``pith-mirror run`` on a data directory and a free loopback port, as a context manager.

    Entering starts the daemon and waits until ``/healthz`` returns 200;
    leaving sends SIGTERM and waits for it to exit.
    """

    def __init__(self, data_dir: Path, log_path: Path) -> None:
        self.data_dir = data_dir
        self.log_path = log_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchmarkError("the daemon is not running")
        return self.process.pid

    def __enter__(self) -> DaemonProcess:
        # Settings from the environment would change what is measured.
        env = {key: value for key, value in os.environ.items() if not key.startswith("PITH_MIRROR_")}
        command = [
            *_daemon_command(), "run", "--data-dir", str(self.data_dir),
            "--http", f"127.0.0.1:{self.port}", "--gossip", "127.0.0.1:0", "--log-level", "WARNING",
        ]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        try:
            _wait_until_served(self.base_url + "/healthz", self.process, self.log_path, "pith-mirror run")
        except BaseException:
            _stop(self.process, signal.SIGTERM)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGTERM)

    def memory_kib(self) -> dict[str, int]:
        """Return VmRSS and VmHWM of the daemon in KiB, from /proc/PID/status."""
        values = {}
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            name, _, rest = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                values[name] = int(rest.split()[0])
        return values


_NGINX_CONF = """\
# Written by bench/http_bench.py for one benchmark run.
worker_processes {workers};
daemon off;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log off;
    sendfile on;
    tcp_nopush on;
    keepalive_requests 1000000;
    open_file_cache max=20000 inactive=60s;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    types {{
        application/json json;
    }}
    server {{
        listen 127.0.0.1:{port};
        root {root};
        location /pith/ {{
            add_header Cache-Control "public, max-age=60";
        }}
    }}
}}
"""


class NginxProcess:
    """nginx serving ``root`` as static files on a free loopback port, with its own prefix and configuration."""

    def __init__(self, binary: str, prefix: Path, root: Path, workers: int, probe_path: str) -> None:
        self.binary = binary
        self.prefix = prefix
        self.root = root
        self.workers = workers
        self.probe_path = probe_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pids(self) -> list[int]:
        """Return the master's pid and its worker processes' pids."""
        if self.process is None:
            return []
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        try:
            workers = [int(pid) for pid in children.read_text().split()]
        except OSError:
            workers = []
        return [self.process.pid, *workers]

    def __enter__(self) -> NginxProcess:
        self.prefix.mkdir(parents=True, exist_ok=True)
        conf = self.prefix / "nginx.conf"
        conf.write_text(_NGINX_CONF.format(workers=self.workers, prefix=self.prefix, port=self.port, root=self.root))
        log_path = self.prefix / "error.log"
        command = [self.binary, "-p", str(self.prefix), "-c", str(conf), "-e", str(log_path)]
        with (self.prefix / "stdout.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        try:
            _wait_until_served(self.base_url + self.probe_path, self.process, log_path, "nginx")
        except BaseException:
            _stop(self.process, signal.SIGQUIT)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            # SIGQUIT is nginx's graceful shutdown.
            _stop(self.process, signal.SIGQUIT)


async def _serve_static_asgi(root: Path, port: int) -> None:
    """Serve every file under ``root`` from memory with Hypercorn's trio worker, as the daemon is served."""
    from hypercorn.config import Config as HypercornConfig
    from hypercorn.trio import serve

    bodies = {"/" + str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.json")}
    missing = [(b"content-type", b"application/json"), (b"content-length", b"0")]

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        body = bodies.get(scope["path"])
        if body is None:
            await send({"type": "http.response.start", "status": 404, "headers": missing})
            await send({"type": "http.response.body", "body": b""})
            return
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode("ascii"))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    settings = HypercornConfig()
    settings.bind = [f"127.0.0.1:{port}"]
    settings.accesslog = None
    settings.keep_alive_timeout = 30
    settings.h11_max_incomplete_size = 64 * 1024
    await serve(app, settings)  # type: ignore[arg-type]


async def _serve_bare_trio(root: Path, port: int) -> None:
    """Serve GET requests for the files under ``root`` from memory over bare trio streams, without an HTTP library."""
    bodies = {"/" + str(path.relative_to(root)): path.read_bytes() for path in root.rglob("*.json")}
    responses = {
        path: b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body)
        for path, body in bodies.items()
    }
    not_found = b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n"

    async def serve_connection(stream: trio.SocketStream) -> None:
        pending = b""
        try:
            while True:
                end = pending.find(b"\r\n\r\n")
                if end < 0:
                    data = await stream.receive_some(65536)
                    if not data or len(pending) > 65536:
                        return
                    pending += data
                    continue
                request_line = pending[: pending.find(b"\r\n")]
                pending = pending[end + 4 :]
                parts = request_line.split(b" ")
                path = parts[1].decode("latin-1") if len(parts) == 3 else ""
                await stream.send_all(responses.get(path, not_found))
        except trio.BrokenResourceError:
            return

    await trio.serve_tcp(serve_connection, port, host="127.0.0.1")


class StaticAsgiProcess:
    """The minimal Hypercorn application of ``_serve_static_asgi`` in a child process, as a context manager.

    With ``bare`` it runs ``_serve_bare_trio`` instead.
    """

    def __init__(self, root: Path, log_path: Path, probe_path: str, *, bare: bool = False) -> None:
        self.bare = bare
        self.root = root
        self.log_path = log_path
        self.probe_path = probe_path
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        if self.process is None:
            raise BenchmarkError("the Hypercorn application is not running")
        return self.process.pid

    def __enter__(self) -> StaticAsgiProcess:
        option = "--serve-bare-trio" if self.bare else "--serve-static-asgi"
        command = [sys.executable, "-m", "bench.http_bench", option, str(self.root), "--port", str(self.port)]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=Path(__file__).resolve().parent.parent)
        try:
            _wait_until_served(self.base_url + self.probe_path, self.process, self.log_path, "the Hypercorn application")
        except BaseException:
            _stop(self.process, signal.SIGTERM)
            raise
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self.process is not None:
            _stop(self.process, signal.SIGTERM)


def build_store(subjects: int, data_dir: Path, seed: int = 1, cache_dir: Path | None = DEFAULT_CACHE_DIR) -> list[str]:
    """Import ``subjects`` generated bundles into a new store in ``data_dir``; return their Pith numbers."""
    bundles, _ = build_bundles(subjects, seed=seed, cache_dir=cache_dir)
    store = Store(data_dir, default_trust())
    try:
        counts = import_bundles(store, bundles)
    finally:
        store.close()
    if counts.bundles_accepted != subjects:
        raise BenchmarkError(f"expected {subjects} accepted bundles, got {counts.bundles_accepted}")
    return [document["pith_number"] for document in bundles]


def state_path(pith_number: str) -> str:
    """Return the URL path of a subject's state."""
    return f"/pith/{pith_number.rsplit(':', 1)[1]}/state.json"


def write_static_tree(data_dir: Path, root: Path, numbers: list[str]) -> dict[str, bytes]:
    """Write every subject's served state under ``root``; return the bytes by URL path."""
    served: dict[str, bytes] = {}
    store = Store(data_dir, default_trust(), read_only=True)
    try:
        for number in numbers:
            body = store.get_state_bytes(number)
            if body is None:
                raise BenchmarkError(f"{number} has no state in the store")
            path = state_path(number)
            target = root / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(body)
            served[path] = body
    finally:
        store.close()
    # nginx's worker processes run as an unprivileged user when started by
    # root, so the tree must be world-readable.
    for directory in [root, *[path for path in root.rglob("*") if path.is_dir()]]:
        directory.chmod(0o755)
    return served


# ---------------------------------------------------------------------------
# wrk
# ---------------------------------------------------------------------------

_WRK_SCRIPT = """\
-- Written by bench/http_bench.py: each request is a uniformly random path
-- of the list, from a generator seeded per thread.
local paths = {{}}
for line in io.lines("{paths}") do
    paths[#paths + 1] = line
end
local counter = 0

function setup(thread)
    counter = counter + 1
    thread:set("id", counter)
end

function init(args)
    math.randomseed({seed} + id)
end

function request()
    return wrk.format("GET", paths[math.random(#paths)])
end
"""


@dataclass(frozen=True)
class WrkRun:
    """Results of one wrk run, with the CPU seconds the server used during it."""

    requests: int
    seconds: float
    requests_per_second: float
    non_2xx: int
    socket_errors: int
    latency_ms: dict[str, float]
    server_cpu_seconds: float


_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0}


def parse_wrk(output: str, server_cpu_seconds: float) -> WrkRun:
    """Parse wrk's report (run with --latency)."""
    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m)", output)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", output)
    if total is None or rate is None:
        raise BenchmarkError(f"cannot read wrk's report:\n{output}")
    seconds = float(total.group(2)) * {"us": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}[total.group(3)]
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output)
    latency = {}
    for percentile, value, unit in re.findall(r"^\s+(50|90|99)%\s+([\d.]+)(us|ms|s)\s*$", output, re.MULTILINE):
        latency[percentile] = float(value) * _UNITS_MS[unit]
    return WrkRun(
        requests=int(total.group(1)),
        seconds=seconds,
        requests_per_second=float(rate.group(1)),
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
        socket_errors=sum(int(value) for value in errors.groups()) if errors else 0,
        latency_ms=latency,
        server_cpu_seconds=server_cpu_seconds,
    )


def run_wrk(wrk: str, url: str, script: Path, threads: int, connections: int, duration: int, pids: list[int]) -> WrkRun:
    """Run wrk once against ``url``; the CPU time of ``pids`` during the run is recorded."""
    before = sum(process_cpu_seconds(pid) for pid in pids)
    command = [
        wrk, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s", "--timeout", "5s", "--latency",
        "-s", str(script), url,
    ]
    completed = subprocess.run(command, capture_output=True, text=True, timeout=duration + 60, check=False)
    after = sum(process_cpu_seconds(pid) for pid in pids)
    if completed.returncode != 0:
        raise BenchmarkError(f"wrk exited with status {completed.returncode}: {completed.stderr.strip()}")
    return parse_wrk(completed.stdout, after - before)


# ---------------------------------------------------------------------------
# Full run
# ---------------------------------------------------------------------------


@dataclass
class HttpMeasurement:
    """The measured wrk runs of both servers and the parameters they shared."""

    subjects: int
    threads: int
    connections: int
    duration: int
    nginx_workers: int
    nginx_version: str
    wrk_version: str
    nginx: list[WrkRun] = field(default_factory=list)
    daemon: list[WrkRun] = field(default_factory=list)
    hypercorn: list[WrkRun] = field(default_factory=list)
    bare_trio: list[WrkRun] = field(default_factory=list)

    @staticmethod
    def median_rps(runs: list[WrkRun]) -> float:
        return statistics.median(run.requests_per_second for run in runs)

    @property
    def ratio(self) -> float:
        """Median requests per second of the daemon over that of nginx."""
        return self.median_rps(self.daemon) / self.median_rps(self.nginx)


def _check_same_bytes(served: dict[str, bytes], bases: list[str], rng: random.Random) -> None:
    for path in rng.sample(sorted(served), min(SAMPLE_CHECKS, len(served))):
        for base in bases:
            status, body = _http_get(base + path)
            if status != 200 or body != served[path]:
                raise BenchmarkError(f"{base}{path} returned status {status} and {len(body)} bytes, not the stored state")


def _tool(name: str, explicit: str | None) -> str:
    found = explicit or shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/local/sbin")
    if found is None:
        raise BenchmarkError(f"{name} is not installed; install it (for example apt-get install nginx-light wrk) or pass --{name}")
    return found


def _version(command: list[str]) -> str:
    completed = subprocess.run(command, capture_output=True, text=True, timeout=30, check=False)
    text = (completed.stdout + completed.stderr).strip().splitlines()
    return text[0] if text else "unknown"


def measure(args: argparse.Namespace, work_dir: Path) -> HttpMeasurement:
    """Build the store and the static tree, start both servers and run wrk against each in turn."""
    nginx_binary = _tool("nginx", args.nginx)
    wrk_binary = _tool("wrk", args.wrk)
    data_dir = work_dir / "store"
    root = work_dir / "root"
    # The document root lies inside work_dir, which nginx's workers must be able to enter.
    work_dir.chmod(0o755)
    numbers = build_store(args.subjects, data_dir, args.seed, None if args.no_cache else args.cache_dir)
    served = write_static_tree(data_dir, root, numbers)
    paths_file = work_dir / "paths.txt"
    paths_file.write_text("".join(path + "\n" for path in sorted(served)))
    script = work_dir / "random-state.lua"
    script.write_text(_WRK_SCRIPT.format(paths=paths_file, seed=args.seed))

    measurement = HttpMeasurement(
        subjects=args.subjects,
        threads=args.threads,
        connections=args.connections,
        duration=args.duration,
        nginx_workers=args.nginx_workers,
        nginx_version=_version([nginx_binary, "-v"]),
        wrk_version=_version([wrk_binary, "-v"]),
    )
    probe = sorted(served)[0]
    with (
        NginxProcess(nginx_binary, work_dir / "nginx", root, args.nginx_workers, probe) as nginx,
        DaemonProcess(data_dir, work_dir / "daemon.log") as daemon,
        StaticAsgiProcess(root, work_dir / "hypercorn.log", probe) as hypercorn,
        StaticAsgiProcess(root, work_dir / "bare-trio.log", probe, bare=True) as bare,
    ):
        bases = [nginx.base_url, daemon.base_url, hypercorn.base_url, bare.base_url]
        _check_same_bytes(served, bases, random.Random(args.seed))
        servers = [
            ("nginx", nginx.base_url, nginx.pids, measurement.nginx),
            ("daemon", daemon.base_url, [daemon.pid], measurement.daemon),
            ("hypercorn", hypercorn.base_url, [hypercorn.pid], measurement.hypercorn),
            ("bare trio", bare.base_url, [bare.pid], measurement.bare_trio),
        ]
        for name, url, pids, _ in servers:
            warm = run_wrk(wrk_binary, url, script, args.threads, args.connections, args.warmup, pids)
            print(f"warm-up {name}: {warm.requests_per_second:,.0f} requests/s", flush=True)
        for repetition in range(args.repeat):
            for name, url, pids, runs in servers:
                result = run_wrk(wrk_binary, url, script, args.threads, args.connections, args.duration, pids)
                if result.non_2xx or result.socket_errors:
                    raise BenchmarkError(
                        f"{name} run {repetition + 1}: {result.non_2xx} responses other than 2xx or 3xx "
                        f"and {result.socket_errors} socket errors"
                    )
                runs.append(result)
                print(f"run {repetition + 1} {name}: {result.requests_per_second:,.0f} requests/s", flush=True)
        _check_same_bytes(served, bases, random.Random(args.seed + 1))
    return measurement


def format_report(measurement: HttpMeasurement, command: str, machine: dict[str, str]) -> str:
    """Return the markdown record of a measurement for docs/benchmarks.md."""
    lines = [
        f"- Command: `{command}`",
        f"- Date: {machine['date']}",
        f"- Machine: {machine['cpus']} CPUs (`nproc`), {machine['cpu_model']}, {machine['python']}, "
        f"SQLite {machine['sqlite']}; {measurement.nginx_version}; {measurement.wrk_version.split(' Copyright')[0]}",
        f"- Load: wrk, {measurement.threads} threads, {measurement.connections} connections, {measurement.duration} s per run, "
        f"uniformly random paths among {measurement.subjects:,} subjects' state.json; nginx with "
        f"{measurement.nginx_workers} worker process(es); {len(measurement.daemon)} measured run(s) per server, alternating",
        "",
        "| server | median requests/s | requests/s / nginx | p50 ms | p99 ms | server CPU µs per request | requests/s of each run |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    rows = (
        ("nginx (static files)", measurement.nginx),
        ("pith-mirror run", measurement.daemon),
        ("Hypercorn trio worker, minimal ASGI app, bytes from a dict (ceiling)", measurement.hypercorn),
        ("bare trio streams, no HTTP library, bytes from a dict (ceiling of trio)", measurement.bare_trio),
    )
    for name, runs in rows:
        rps = measurement.median_rps(runs)
        p50 = statistics.median(run.latency_ms.get("50", float("nan")) for run in runs)
        p99 = statistics.median(run.latency_ms.get("99", float("nan")) for run in runs)
        cpu = statistics.median(run.server_cpu_seconds / run.requests * 1e6 for run in runs)
        each = ", ".join(f"{run.requests_per_second:,.0f}" for run in runs)
        relative = rps / measurement.median_rps(measurement.nginx)
        lines.append(f"| {name} | {rps:,.0f} | {relative:.3f} | {p50:.2f} | {p99:.2f} | {cpu:,.0f} | {each} |")
    verdict = "met" if measurement.ratio >= TARGET_RATIO else "not met"
    lines += ["", f"Target daemon >= {TARGET_RATIO} x nginx requests/s: {verdict} ({measurement.ratio:.3f})."]
    return "\n".join(lines)


# ---------------------------------------------------------------------------
# Smoke run
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SmokeResult:
    """Counts of the smoke run: requests sent, and responses that matched the stored state."""

    subjects: int
    requests: int
    ok: int
    matched: int
    statuses: dict[int, int]


def request_states(base_url: str, paths: list[str], served: dict[str, bytes], count: int) -> tuple[dict[int, int], int]:
    """Send ``count`` GETs cycling through ``paths`` on one keep-alive connection; return statuses and matching bodies."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=10)
    statuses: dict[int, int] = {}
    matched = 0
    try:
        for number in range(count):
            path = paths[number % len(paths)]
            connection.request("GET", path)
            response = connection.getresponse()
            body = response.read()
            statuses[response.status] = statuses.get(response.status, 0) + 1
            if response.status == 200 and body == served[path]:
                matched += 1
    finally:
        connection.close()
    return statuses, matched


def run_smoke(work_dir: Path) -> SmokeResult:
    """Serve 50 subjects with the real daemon and send 200 requests from this process."""
    data_dir = work_dir / "store"
    numbers = build_store(SMOKE_SUBJECTS, data_dir, cache_dir=None)
    served = write_static_tree(data_dir, work_dir / "root", numbers)
    paths = sorted(served)
    with DaemonProcess(data_dir, work_dir / "daemon.log") as daemon:
        statuses, matched = request_states(daemon.base_url, paths, served, SMOKE_REQUESTS)
    return SmokeResult(
        subjects=len(numbers), requests=SMOKE_REQUESTS, ok=statuses.get(200, 0), matched=matched, statuses=statuses
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m bench.http_bench",
        description="Measure GET /pith/{suffix}/state.json on pith-mirror run against nginx serving the same files.",
    )
    parser.add_argument("--subjects", type=int, default=DEFAULT_SUBJECTS, help="subjects in the store (default 10000)")
    parser.add_argument("--duration", type=int, default=10, help="seconds of each measured wrk run (default 10)")
    parser.add_argument("--warmup", type=int, default=3, help="seconds of the warm-up run per server (default 3)")
    parser.add_argument("--threads", type=int, default=2, help="wrk threads (default 2)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections (default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="measured runs per server (default 3)")
    parser.add_argument("--nginx-workers", type=int, default=1, help="nginx worker processes (default 1, as the daemon has one process)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the workload and of wrk's path choice (default 1)")
    parser.add_argument("--nginx", help="nginx binary (default: found on PATH or in /usr/sbin)")
    parser.add_argument("--wrk", help="wrk binary (default: found on PATH)")
    parser.add_argument("--no-cache", action="store_true", help="sign the events anew and write no cache file")
    parser.add_argument("--cache-dir", type=Path, default=DEFAULT_CACHE_DIR, help="directory of the signed-event cache (default bench-results/)")
    parser.add_argument(
        "--smoke", action="store_true",
        help=f"serve {SMOKE_SUBJECTS} subjects with the daemon only and send {SMOKE_REQUESTS} requests from this process",
    )
    # Used by the benchmark itself to start the two ceilings in child processes.
    parser.add_argument("--serve-static-asgi", type=Path, metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--serve-bare-trio", type=Path, metavar="ROOT", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    return parser


def _validate(args: argparse.Namespace) -> None:
    for name in ("subjects", "duration", "warmup", "threads", "connections", "repeat", "nginx_workers"):
        if getattr(args, name) < 1:
            raise BenchmarkError(f"--{name.replace('_', '-')} must be at least 1 (got {getattr(args, name)})")
    if args.connections < args.threads:
        raise BenchmarkError(f"--connections ({args.connections}) must be at least --threads ({args.threads})")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark; return 0 when every response was the stored state, else 1."""
    args = build_parser().parse_args(argv)
    if args.serve_static_asgi is not None:
        trio.run(_serve_static_asgi, args.serve_static_asgi, args.port)
        return 0
    if args.serve_bare_trio is not None:
        trio.run(_serve_bare_trio, args.serve_bare_trio, args.port)
        return 0
    with tempfile.TemporaryDirectory(prefix="pith-http-bench-") as temporary:
        work_dir = Path(temporary)
        try:
            if args.smoke:
                result = run_smoke(work_dir)
                print(
                    f"smoke: {result.requests} requests for {result.subjects} subjects: {result.ok} answered 200, "
                    f"{result.matched} with the stored bytes; statuses {result.statuses}"
                )
                return 0 if result.matched == result.requests else 1
            _validate(args)
            measurement = measure(args, work_dir)
        except BenchmarkError as error:
            print(f"error: {error}", file=sys.stderr)
            return 1
    command = (
        f"python -m bench.http_bench --subjects {args.subjects} --duration {args.duration} --warmup {args.warmup} "
        f"--threads {args.threads} --connections {args.connections} --repeat {args.repeat} --nginx-workers {args.nginx_workers}"
    )
    print()
    print(format_report(measurement, command, machine_facts()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
