"""Every container the chart renders, run from the built image with exactly its command, args, environment,
user, capabilities, read-only root and volumes (:mod:`tests.image.podspec`), on the test's node network.

Each one must come up as its probe says (the kubelet's httpGet on the declared port), do its job, and exit 0
on SIGTERM within the pod's grace period. The supernode's HEALTHCHECK (for ``docker run``) must pass while
it serves and fail when it hangs or is gone. A dfget in the DaemonSet's container downloads through the
supernode (MD5 checked), and the operator, configured by the chart for in-cluster credentials and
EndpointSlice discovery, preheats a file on the supernode through a Kubernetes API double (kmock over TLS,
with a service account token mounted where the kubelet mounts it).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
import ssl
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import kmock
import pytest
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.deploy.conftest import NAMESPACE, Rendered
from tests.image.conftest import NODE_IP, BuiltImage, Node, pods
from tests.image.oci import Container
from tests.image.podspec import Pod
from tests.operator.helpers import StampingEmulator, apply, declare_resources, status
from tests.tlscerts import self_signed
from tests.v1proto import pattern_bytes

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

#: How long a container may take to pass its probe on a loaded 2-core machine.
UP_WITHIN = 90.0
ORIGIN_PORT = 18080
API_SERVER_PORT = 6443


def probe_target(pod: Pod, container: dict[str, Any], probe: str) -> tuple[str, int, str]:
    """Where the kubelet sends the container's httpGet probe: pod IP, the port (by name or number), path."""
    get = container[probe]["httpGet"]
    port = get["port"]
    if isinstance(port, str):
        (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == port]
    return pod.pod_ip, int(port), get["path"]


async def serve_and_probe(node: Node, pod: Pod, name: str) -> Container:
    """Start a container of the pod and wait until its liveness (and readiness) probes pass."""
    spec = pod.container(name)
    container = node.container(pod, name)
    assert container.process.args[:len(spec["command"])] == spec["command"]
    container.start()
    for probe in ("livenessProbe", "readinessProbe"):
        if probe in spec:
            try:
                await asyncio.to_thread(node.net.probe, *probe_target(pod, spec, probe), within=UP_WITHIN,
                                        alive=lambda: container.exit_code is None)
            except AssertionError as exc:
                raise AssertionError(f"{name}: {exc}\n{container.output()}") from None
    return container


async def stop_cleanly(container: Container, pod: Pod) -> None:
    grace = float(pod.spec.get("terminationGracePeriodSeconds", 30))
    code = await asyncio.to_thread(container.stop, grace)
    assert code == 0, f"{container.name} exited {code} on SIGTERM:\n{container.output()}"
    assert "Traceback" not in container.output(), container.output()


class Origin:
    """The files' origin on the node network (aiohttp's FileResponse: HEAD, ranges, validators)."""

    def __init__(self, node: Node, directory: Path) -> None:
        self.node = node
        self.directory = directory
        self._runner: web.AppRunner | None = None

    def url(self, name: str) -> str:
        return f"http://{NODE_IP}:{ORIGIN_PORT}/{name}"

    async def __aenter__(self) -> Origin:
        app = web.Application()
        app.router.add_static("/", self.directory)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        await web.SockSite(self._runner, self.node.net.listen(NODE_IP, ORIGIN_PORT)).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()


@pytest.fixture
async def origin(node: Node, tmp_path: Path) -> AsyncIterator[Origin]:
    directory = tmp_path / "origin"
    directory.mkdir()
    async with Origin(node, directory) as served:
        yield served


async def test_supernode_statefulset_serves_and_its_healthcheck_follows_it(
        node: Node, rendered: Rendered, image: BuiltImage) -> None:
    pod = pods(rendered, node)["supernode"]
    assert "--config=/etc/dragonfly/supernode.yml" in pod.container("supernode")["args"]
    supernode = await serve_and_probe(node, pod, "supernode")
    healthcheck = image.config.healthcheck[1:]

    done = await asyncio.to_thread(supernode.exec, healthcheck, 30)
    assert done.returncode == 0, f"HEALTHCHECK on a serving supernode: {done}"

    supernode.signal(signal.SIGSTOP)  # hung: accepts connections (the kernel does) but never answers
    try:
        done = await asyncio.to_thread(supernode.exec, healthcheck, 30)
    finally:
        supernode.signal(signal.SIGCONT)
    assert done.returncode != 0 and "timed out" in done.stderr, f"HEALTHCHECK on a hung supernode: {done}"

    await stop_cleanly(supernode, pod)
    gone = await asyncio.to_thread(node.run_in_image, healthcheck)
    assert gone.returncode != 0 and "Connection refused" in gone.stderr, f"HEALTHCHECK with no supernode: {gone}"


async def test_dfget_daemonset_uploads_and_a_dfget_downloads_through_the_supernode(
        node: Node, rendered: Rendered, origin: Origin) -> None:
    data = pattern_bytes(5 * 1024 * 1024 + 12345)
    (origin.directory / "blob.bin").write_bytes(data)
    found = pods(rendered, node)
    supernode_pod, dfget_pod = found["supernode"], found["dfget"]
    supernode = await serve_and_probe(node, supernode_pod, "supernode")

    # The init container hands the hostPath home (created root-owned) to the pods' user.
    home = dfget_pod.volume_source("home")
    assert home.stat().st_uid == 0
    init = node.container(dfget_pod, "home-permissions")
    code = await asyncio.to_thread(init.run, 60)
    assert code == 0, init.output()
    assert (home.stat().st_uid, home.stat().st_gid) == (10001, 10001)

    uploader = await serve_and_probe(node, dfget_pod, "uploader")
    assert f"--ip={NODE_IP}" in uploader.process.args, "$(DFGET_IP) is the node's IP with hostNetwork"
    md5 = hashlib.md5(data).hexdigest()
    download = await asyncio.to_thread(uploader.exec, [
        "dfget", "-u", origin.url("blob.bin"), "-o", "/tmp/blob.bin", "--node", f"{supernode_pod.pod_ip}:8002",
        "--home", "/home/dfget", "--md5", md5], 180)
    assert download.returncode == 0, f"dfget: {download.returncode}\n{download.stdout[-3000:]}{download.stderr[-3000:]}"
    assert f"from supernode {supernode_pod.pod_ip}:8002" in download.stdout + download.stderr, download
    out = dfget_pod.volume_source("tmp") / "blob.bin"
    assert hashlib.md5(out.read_bytes()).hexdigest() == md5

    await stop_cleanly(uploader, dfget_pod)
    await stop_cleanly(supernode, supernode_pod)


class ApiServer:
    """kmock as the cluster's API server: over TLS inside the node network for the operator (as
    https://$KUBERNETES_SERVICE_HOST), and on the host's loopback for the test's own requests."""

    def __init__(self, node: Node, directory: Path) -> None:
        self.node = node
        self.directory = directory
        self.emulator = StampingEmulator()
        self._runner: web.ServerRunner | None = None
        self._host_server = kmock.Server(self.emulator, host="127.0.0.1")

    def service_account(self) -> Path:
        """The directory the kubelet mounts at /var/run/secrets/kubernetes.io/serviceaccount."""
        return self.directory / "serviceaccount"

    async def __aenter__(self) -> ApiServer:
        key = ec.generate_private_key(ec.SECP256R1())
        cert = self_signed(key, "kube-apiserver")
        account = self.service_account()
        account.mkdir(parents=True)
        (account / "ca.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        (account / "token").write_text("a-service-account-token")
        (account / "namespace").write_text(NAMESPACE)
        for path in (account, *account.iterdir()):
            os.chmod(path, 0o755 if path.is_dir() else 0o644)
        (self.directory / "tls.key").write_bytes(key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(account / "ca.crt", self.directory / "tls.key")

        await self.emulator.__aenter__()
        declare_resources(self.emulator)
        await self._host_server.__aenter__()
        # Watches never end by themselves: do not wait for them at shutdown.
        self._runner = web.ServerRunner(web.Server(self.emulator), shutdown_timeout=1.0)
        await self._runner.setup()
        sock = self.node.net.listen("127.0.0.1", API_SERVER_PORT)
        await web.SockSite(self._runner, sock, ssl_context=context).start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        await self._host_server.__aexit__(None, None, None)
        await self.emulator.__aexit__(None, None, None)


async def test_operator_deployment_discovers_the_supernode_and_preheats(
        node: Node, rendered: Rendered, origin: Origin, tmp_path: Path) -> None:
    data = pattern_bytes(300_001)
    (origin.directory / "model.bin").write_bytes(data)
    found = pods(rendered, node)
    supernode_pod, operator_pod = found["supernode"], found["operator"]
    env = {e["name"]: e.get("value") for e in operator_pod.container("operator")["env"]}
    supernode = await serve_and_probe(node, supernode_pod, "supernode")

    async with ApiServer(node, tmp_path / "apiserver") as api:
        # The Service's endpoints as the EndpointSlice controller publishes them for the supernode pod.
        ports = pod_ports(supernode_pod, "supernode")
        await apply(api.emulator, {
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "IPv4",
            "metadata": {"name": f"{env['DFOPERATOR_SUPERNODE_SERVICE']}-abcde", "namespace": NAMESPACE,
                         "labels": {"kubernetes.io/service-name": env["DFOPERATOR_SUPERNODE_SERVICE"]}},
            "ports": [{"name": name, "port": port, "protocol": "TCP"} for name, port in ports.items()],
            "endpoints": [{"addresses": [supernode_pod.pod_ip], "conditions": {"ready": True}}]})
        # What the kubelet gives a pod with a service account: the API's address and the mounted token.
        operator_pod.kubelet_env.update(KUBERNETES_SERVICE_HOST="127.0.0.1",
                                        KUBERNETES_SERVICE_PORT=str(API_SERVER_PORT))
        operator_pod.extra_volumes["serviceaccount"] = api.service_account()
        operator = await serve_and_probe(node, operator_pod, "operator")

        await apply(api.emulator, {"apiVersion": "dragonfly.d7y.io/v1alpha1", "kind": "Preheat",
                                   "metadata": {"name": "model", "namespace": "default"},
                                   "spec": {"type": "file", "url": origin.url("model.bin")}})
        phase = None
        for _ in range(600):
            phase = status(api.emulator, "model").get("phase")
            if phase in ("Succeeded", "Failed"):
                break
            await asyncio.sleep(0.2)
        assert phase == "Succeeded", f"{status(api.emulator, 'model')}\n{operator.output()}"
        # The operator ServiceMonitor scrapes the pod's "metrics" port.
        answer, text = await asyncio.to_thread(node.net.http_get, operator_pod.pod_ip,
                                               pod_ports(operator_pod, "operator")["metrics"], "/metrics")
        assert answer == 200 and b'dragonfly_operator_preheats{phase="Succeeded"} 1.0' in text, text[:2000]
        await stop_cleanly(operator, operator_pod)
    await stop_cleanly(supernode, supernode_pod)


def pod_ports(pod: Pod, name: str) -> dict[str, int]:
    return {p["name"]: int(p["containerPort"]) for p in pod.container(name)["ports"]}
