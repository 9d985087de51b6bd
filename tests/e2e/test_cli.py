"""The ``supernode`` command: clear failures for bad configuration, and a clean stop on SIGTERM."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from tests.v1proto import free_port


def _run(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "supernode", *args], capture_output=True, text=True,
                          timeout=timeout, check=False)


def test_missing_explicit_config_fails_clearly(tmp_path: Path) -> None:
    done = _run("--config", str(tmp_path / "nope.yml"))
    assert done.returncode == 2
    assert "does not exist" in done.stderr and "Traceback" not in done.stderr


def test_bad_flag_value_fails_clearly(tmp_path: Path) -> None:
    done = _run("--home-dir", str(tmp_path), "--port", "99999")
    assert done.returncode == 2
    assert "port" in done.stderr and "Traceback" not in done.stderr


def test_busy_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        done = _run("--home-dir", str(tmp_path), "--listen-host", "127.0.0.1", "--port", str(port),
                    "--download-port", str(free_port()), "--advertise-ip", "127.0.0.1")
    assert done.returncode == 1
    assert "address already in use" in done.stderr and "Traceback" not in done.stderr


def test_sigterm_stops_cleanly(tmp_path: Path) -> None:
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "supernode", "--home-dir", str(tmp_path), "--listen-host",
                             "127.0.0.1", "--port", str(port), "--download-port", str(free_port()),
                             "--advertise-ip", "127.0.0.1"], stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/_ping", timeout=1) as resp:
                    assert resp.read() == b"OK"
                    break
            except OSError:
                assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
                assert time.monotonic() < deadline, "supernode did not start"
                time.sleep(0.1)
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert proc.stderr is not None
        log = proc.stderr.read()
        assert "shutting down" in log and "Traceback" not in log
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
