"""Tests of ``pith-mirror run`` as a real process: signals, a busy port and an unusable store.

``DaemonProcess`` starts the installed console script on a free port of
127.0.0.1; the HTTP API and crash tests use it too.
"""

from __future__ import annotations

import os
import signal
import socket
import sqlite3
import subprocess
import sysconfig
import threading
from pathlib import Path
from types import TracebackType

import httpx
import pytest

from node.demo import fixture_path
from node.store import SCHEMA_VERSION, STORE_FILENAME, Store
from protocol import read_document

SCRIPT = Path(sysconfig.get_path("scripts")) / "pith-mirror"
READY_LINE = "serving HTTP on "
# Bound on a daemon's start and on its stop after a signal, in seconds.
START_SECONDS = 15.0
STOP_SECONDS = 10.0


def free_port() -> int:
    """Return a port on 127.0.0.1 that was free a moment ago.

    NOTE: another process may take the port before the daemon binds it,
    because the configuration does not accept port 0.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class DaemonProcess:
    """A ``pith-mirror run`` subprocess on 127.0.0.1; use it as a context manager.

    A thread collects the process's log (stderr) so that the pipe never
    fills. ``start`` returns once the log shows that the server listens.
    Leaving the context stops a still running process with SIGTERM, and
    with SIGKILL if it does not stop in time.
    """

    def __init__(self, data_dir: Path, *, env: dict[str, str] | None = None, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra_env = env or {}
        self.process: subprocess.Popen[str] | None = None
        self._lines: list[str] = []
        self._lines_lock = threading.Lock()
        self._ready = threading.Event()
        self._reader: threading.Thread | None = None

    def start(self) -> DaemonProcess:
        """Start the process and wait until it listens; raise if it exits or times out first."""
        self._lines = []
        self._ready.clear()
        env = {**os.environ, "PITH_MIRROR_LOG_LEVEL": "INFO", **self.extra_env}
        env.pop("PITH_MIRROR_CONFIG", None)
        self.process = subprocess.Popen(
            [str(SCRIPT), "run", "--data-dir", str(self.data_dir), "--http", f"127.0.0.1:{self.port}", "--gossip", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self._reader = threading.Thread(target=self._read_log, args=(self.process,), daemon=True)
        self._reader.start()
        if not self._ready.wait(START_SECONDS):
            self.kill()
            raise AssertionError(f"daemon did not listen within {START_SECONDS} s; log:\n{self.log}")
        return self

    def _read_log(self, process: subprocess.Popen[str]) -> None:
        assert process.stderr is not None
        for line in process.stderr:
            with self._lines_lock:
                self._lines.append(line)
            if READY_LINE in line:
                self._ready.set()
        # The process ended: wake a start() that is still waiting.
        self._ready.set()

    @property
    def log(self) -> str:
        """The process's log so far."""
        with self._lines_lock:
            return "".join(self._lines)

    def stop(self, signal_number: int = signal.SIGTERM) -> int:
        """Send ``signal_number``, wait for the exit and the end of the log; return the exit code."""
        assert self.process is not None
        self.process.send_signal(signal_number)
        return self.wait()

    def wait(self) -> int:
        """Wait for the process to end (killing it after STOP_SECONDS); return the exit code."""
        assert self.process is not None
        try:
            code = self.process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(STOP_SECONDS)
            raise AssertionError(f"daemon did not stop within {STOP_SECONDS} s; log:\n{self.log}") from None
        if self._reader is not None:
            self._reader.join(STOP_SECONDS)
        return code

    def kill(self) -> None:
        """Kill the process with SIGKILL and wait for it."""
        assert self.process is not None
        self.process.kill()
        self.process.wait(STOP_SECONDS)
        if self._reader is not None:
            self._reader.join(STOP_SECONDS)

    def __enter__(self) -> DaemonProcess:
        return self.start()

    def __exit__(self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_SECONDS)
            except subprocess.TimeoutExpired:
                self.kill()


def run_once(data_dir: Path, port: int) -> subprocess.CompletedProcess[str]:
    """Run ``pith-mirror run`` expecting it to fail at start; return its result."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("PITH_MIRROR_")}
    return subprocess.run(
        [str(SCRIPT), "run", "--data-dir", str(data_dir), "--http", f"127.0.0.1:{port}", "--gossip", "127.0.0.1:0"],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        env=env,
        timeout=START_SECONDS,
        check=False,
    )


@pytest.fixture
def seeded_dir(tmp_path: Path) -> Path:
    """Return a data directory whose store contains the published state."""
    state = read_document(fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes())
    with Store(tmp_path) as store:
        store.add_state(state, "test", 1_780_000_000)
    return tmp_path


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_stops_daemon(seeded_dir: Path, signal_number: int) -> None:
    daemon = DaemonProcess(seeded_dir).start()
    health = httpx.get(daemon.url + "/healthz", timeout=STOP_SECONDS)

    code = daemon.stop(signal_number)

    assert health.status_code == 200
    assert code == 0
    assert f"serving HTTP on {daemon.url}" in daemon.log
    assert f"received {signal.Signals(signal_number).name}, shutting down" in daemon.log
    assert "store closed; stopped" in daemon.log
    assert "Traceback" not in daemon.log


@pytest.mark.parametrize("signal_number", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_signal_at_ready_stops_cleanly(seeded_dir: Path, signal_number: int) -> None:
    # The signal arrives right after the ready line, before any request.
    daemon = DaemonProcess(seeded_dir).start()

    code = daemon.stop(signal_number)

    assert code == 0
    assert "store closed; stopped" in daemon.log


def test_stopped_daemon_keeps_store(seeded_dir: Path) -> None:
    with DaemonProcess(seeded_dir) as daemon:
        served = httpx.get(daemon.url + "/pith/JXMVLSVZ7B4A7F3JLM5PIYYILY/state.json", timeout=STOP_SECONDS)
        daemon.stop()

    with Store(seeded_dir, read_only=True) as store:
        mismatched = store.verify_all()
        stored = store.get_state_bytes("pith:2017:JXMVLSVZ7B4A7F3JLM5PIYYILY")

    assert served.content == fixture_path("state-JXMVLSVZ7B4A7F3JLM5PIYYILY.json").read_bytes()
    assert stored == served.content
    assert mismatched == []


def test_busy_port_exits_1(seeded_dir: Path) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]

        result = run_once(seeded_dir, port)

    assert result.returncode == 1
    assert f"error: cannot listen on 127.0.0.1:{port}: Address already in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_newer_schema_exits_1(seeded_dir: Path) -> None:
    newer = SCHEMA_VERSION + 1
    with sqlite3.connect(seeded_dir / STORE_FILENAME) as connection:
        connection.execute("UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(newer),))
    connection.close()

    result = run_once(seeded_dir, free_port())

    assert result.returncode == 1
    assert f"was written by schema version {newer}; this pith-mirror supports up to {SCHEMA_VERSION}" in result.stderr
    assert "Traceback" not in result.stderr


def test_second_daemon_on_store_exits_1(seeded_dir: Path) -> None:
    with DaemonProcess(seeded_dir) as first:
        result = run_once(seeded_dir, free_port())
        still_serving = httpx.get(first.url + "/healthz", timeout=STOP_SECONDS)

    assert result.returncode == 1
    assert "is in use by another process" in result.stderr
    assert "Traceback" not in result.stderr
    assert still_serving.status_code == 200


def test_not_a_store_exits_1(tmp_path: Path) -> None:
    (tmp_path / STORE_FILENAME).write_bytes(b"this is not an SQLite file" * 100)

    result = run_once(tmp_path, free_port())

    assert result.returncode == 1
    assert str(tmp_path / STORE_FILENAME) in result.stderr
    assert "Traceback" not in result.stderr
