"""Talking to the test's API server the way users and the operator do: ``kubectl``, and the kubernetes client.

Every call is bounded; ``kubectl`` runs as a child process (whichever is on ``PATH``: Debian's
``kubernetes-client`` 1.20 on a fresh machine, a newer one elsewhere), so what a test checks in its
output is what a user would read.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import ssl
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config

from dfoperator.resource import GROUP, PLURAL, VERSION

KUBECTL_WITHIN = 60.0


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def ok(self) -> Result:
        assert self.code == 0, f"kubectl failed ({self.code}): {self.stderr or self.stdout}"
        return self


@dataclass
class Kubectl:
    """``kubectl --kubeconfig K ...``, run in a thread so the test's loop (its origins) keeps serving."""

    kubeconfig: Path
    binary: str = field(default_factory=lambda: shutil.which("kubectl") or "kubectl")

    def run(self, *args: str, stdin: str | None = None) -> Result:
        env = {k: v for k, v in os.environ.items() if k != "KUBERNETES_SERVICE_HOST"}
        done = subprocess.run([self.binary, f"--kubeconfig={self.kubeconfig}", *args], input=stdin,
                              capture_output=True, text=True, timeout=KUBECTL_WITHIN, env=env, check=False)
        return Result(done.returncode, done.stdout, done.stderr)

    async def __call__(self, *args: str, stdin: str | None = None) -> Result:
        return await asyncio.to_thread(self.run, *args, stdin=stdin)

    async def apply(self, docs: list[dict[str, Any]] | dict[str, Any], *args: str) -> Result:
        items = docs if isinstance(docs, list) else [docs]
        return await self("apply", "-f", "-", *args, stdin=yaml.safe_dump_all(items))

    async def get_json(self, *args: str) -> Any:
        return json.loads((await self("get", *args, "-o", "json")).ok().stdout)


class Api:
    """The kubernetes client (sync, in threads) logged in from a kubeconfig."""

    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = kubeconfig
        self.client = k8s_config.new_client_from_config(config_file=str(kubeconfig))
        self.core = k8s.CoreV1Api(self.client)
        self.custom = k8s.CustomObjectsApi(self.client)

    def close(self) -> None:
        self.client.close()

    async def preheat(self, name: str, namespace: str) -> dict[str, Any] | None:
        def read() -> dict[str, Any] | None:
            try:
                obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
                    GROUP, VERSION, namespace, PLURAL, name, _request_timeout=10)
            except k8s.ApiException as exc:
                if exc.status == 404:
                    return None
                raise
            return obj
        return await asyncio.to_thread(read)

    async def status(self, name: str, namespace: str) -> dict[str, Any]:
        return dict(((await self.preheat(name, namespace)) or {}).get("status") or {})

    async def events(self, name: str, namespace: str) -> list[dict[str, Any]]:
        def read() -> list[dict[str, Any]]:
            listing = self.core.list_namespaced_event(
                namespace, field_selector=f"involvedObject.kind=Preheat,involvedObject.name={name}",
                _request_timeout=10)
            return [self.client.sanitize_for_serialization(e) for e in listing.items]
        return await asyncio.to_thread(read)

    def service_account_token(self, name: str, namespace: str, seconds: int = 3600) -> str:
        """A bound token of the ServiceAccount (TokenRequest, what ``kubectl create token`` asks for; the
        Debian kubectl 1.20 has no ``create token``)."""
        answer = self.core.create_namespaced_service_account_token(
            name, namespace, k8s.AuthenticationV1TokenRequest(
                spec=k8s.V1TokenRequestSpec(audiences=[], expiration_seconds=seconds)), _request_timeout=10)
        return str(answer.status.token)


class PhaseRecorder:
    """A watch on one Preheat (as ``kubectl get ph -w`` holds one): every phase it went through, in order.

    Started before the object exists, so no version of it is missed.
    """

    def __init__(self, server: str, token: str, ssl_context: ssl.SSLContext, *, name: str, namespace: str) -> None:
        self.url = (f"{server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{PLURAL}"
                    f"?watch=true&fieldSelector=metadata.name%3D{name}")
        self._headers = {"Authorization": f"Bearer {token}"}
        self._ssl = ssl_context
        self.phases: list[str] = []
        self.types: list[str] = []
        self._task: asyncio.Task[None] | None = None
        self._open = asyncio.Event()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._watch())
        await asyncio.wait_for(self._open.wait(), 20)

    async def _watch(self) -> None:
        async with aiohttp.ClientSession(headers=self._headers) as http, \
                http.get(self.url, ssl=self._ssl, timeout=aiohttp.ClientTimeout(total=None)) as resp:
            assert resp.status == 200, await resp.text()
            self._open.set()
            async for line in resp.content:
                event = json.loads(line)
                self.types.append(event["type"])
                phase = (event["object"].get("status") or {}).get("phase")
                if phase and (not self.phases or self.phases[-1] != phase):
                    self.phases.append(phase)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


async def api_request(server: str, token: str, ssl_context: ssl.SSLContext, method: str, path: str,
                      body: Any = None, *, content_type: str = "application/json") -> tuple[int, Any]:
    """One request straight to the API server: its status code and its JSON answer (a Status on errors)."""
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {token}"}) as http, \
            http.request(method, f"{server}{path}", ssl=ssl_context, data=None if body is None else json.dumps(body),
                         headers={"Content-Type": content_type}, timeout=aiohttp.ClientTimeout(total=30)) as resp:
        return resp.status, await resp.json(content_type=None)
