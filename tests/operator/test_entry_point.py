"""``python -m dfoperator`` (the ``dragonfly-operator`` console script) as a real process against kmock.

This is how the operator runs in its pod: ``kopf run --standalone`` on our handlers, credentials from
``$KUBECONFIG``, liveness and metrics on their own ports, a clean exit on SIGTERM.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.operator.helpers import CountingProxy, StampingEmulator, apply, status, wait_for
from tests.v1proto import OriginServer, free_port, pattern_bytes

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
async def operator_process(cluster: StampingEmulator, proxy: CountingProxy,
                           tmp_path: Path) -> AsyncIterator[tuple[subprocess.Popen[bytes], str, str, Path]]:
    liveness, metrics = free_port(), free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1",
               PYTHONPATH=os.pathsep.join(filter(None, [str(REPO_ROOT / "operator"), os.environ.get("PYTHONPATH")])))
    argv = [sys.executable, "-m", "dfoperator", "--supernodes", proxy.url, "--poll-interval", "0.2",
            "--metrics-host", "127.0.0.1", "--metrics-port", str(metrics),
            "--liveness", f"http://127.0.0.1:{liveness}/healthz"]
    # No -n: the default is every namespace. (With -n, kopf lists /api/v1/namespaces, which kmock 0.8
    # cannot parse: a limit of the double, not of the operator.)
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        proc = await asyncio.to_thread(subprocess.Popen, argv, cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                       stdout=out, stderr=subprocess.STDOUT)
    try:
        yield proc, f"http://127.0.0.1:{liveness}/healthz", f"http://127.0.0.1:{metrics}/metrics", log
    finally:
        if proc.poll() is None:
            proc.kill()
            await asyncio.to_thread(proc.wait, 10)
        print(f"operator output:\n{log.read_text(errors='replace')[-4000:]}")


async def http_ok(url: str) -> str | None:
    with contextlib.suppress(aiohttp.ClientError, OSError):
        async with aiohttp.ClientSession() as http, http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
            if resp.status == 200:
                return await resp.text()
    return None


async def test_python_m_dfoperator_runs_the_operator(
        cluster: StampingEmulator, origin: OriginServer,
        operator_process: tuple[subprocess.Popen[bytes], str, str, Path]) -> None:
    proc, liveness, metrics, _ = operator_process
    origin.files["/e2e.bin"] = pattern_bytes(123_456)
    await wait_for("the liveness probe", lambda: http_ok(liveness), within=30, every=0.2)

    await apply(cluster, {"apiVersion": "dragonfly.d7y.io/v1alpha1", "kind": "Preheat",
                          "metadata": {"name": "e2e", "namespace": "default"},
                          "spec": {"type": "file", "url": origin.url("/e2e.bin")}})
    st = await wait_for("Succeeded", lambda: status(cluster, "e2e").get("phase") in ("Succeeded", "Failed")
                        and status(cluster, "e2e"), within=20)
    assert st["phase"] == "Succeeded", st

    async def succeeded_gauge() -> str | None:
        text = await http_ok(metrics)
        return text if text is not None and 'dragonfly_operator_preheats{phase="Succeeded"} 1.0' in text else None

    text = await wait_for("the Succeeded gauge", succeeded_gauge)
    assert "dragonfly_operator_reconcile_total" in text
    probe = await http_ok(liveness)  # kopf caches probe results for a while: only their presence is stable
    assert probe is not None and '"preheats"' in probe

    proc.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 20)
    assert code == 0

