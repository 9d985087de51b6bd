"""Fixtures of the real-API-server tier: one control plane for the whole run, the chart's RBAC applied to
it, the operator as a real ``dragonfly-operator`` process logged in as the chart's ServiceAccount, and
real supernodes on 127.0.0.x found through the EndpointSlices of the chart's headless Service.

The tier skips, naming what is missing, where the API server binary, etcd or kubectl is absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.deploy import conftest as deploy
from tests.deploy.conftest import CRD_FILE, NAMESPACE, RELEASE, Rendered
from tests.k8s.controlplane import REPO_ROOT, ControlPlane, missing_parts, write_kubeconfig
from tests.k8s.kube import Api, Kubectl, PhaseRecorder
from tests.operator import conftest as operator_tests
from tests.operator.helpers import wait_for
from tests.v1proto import SupernodeProcess, SupernodeStartError, free_port

# Fixtures of other tiers, reused (a fixture function assigned here is a fixture here): the chart tests'
# Helm SDK, the operator tests' origin that holds a file back until released.
helm = deploy.helm
render = deploy.render
slow_origin = operator_tests.slow_origin

OPERATOR_START_WITHIN = 90.0
OPERATOR_STOP_WITHIN = 20.0
_namespaces = itertools.count(1)


@pytest.fixture(scope="session")
def control_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ControlPlane]:
    missing = missing_parts()
    if missing:
        pytest.skip("real API server tier: missing " + "; ".join(missing))
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    plane.start()
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="session")
def kubectl(control_plane: ControlPlane) -> Kubectl:
    """kubectl as the cluster admin (``system:masters``)."""
    return Kubectl(control_plane.admin_kubeconfig)


@pytest.fixture(scope="session")
def api(control_plane: ControlPlane) -> Iterator[Api]:
    client = Api(control_plane.admin_kubeconfig)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture(scope="session")
def crd(kubectl: Kubectl) -> str:
    """``kubectl apply -f crds/preheat.yaml``, then ``kubectl wait`` for Established; kubectl's output."""
    applied = kubectl.run("apply", "-f", str(CRD_FILE)).ok()
    kubectl.run("wait", "--for=condition=Established", "--timeout=60s",
                "crd/preheats.dragonfly.d7y.io").ok()
    return applied.stdout


@pytest.fixture(scope="session")
def chart(render: Any) -> Rendered:
    """The chart with its default values, as ``helm install df charts/dragonfly-supernode -n dragonfly``."""
    rendered: Rendered = render({})
    return rendered


RBAC_KINDS = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding")


@dataclass(frozen=True)
class OperatorIdentity:
    """What the operator's pod would have: its ServiceAccount's token (in a kubeconfig), args and env."""

    kubeconfig: Path
    service_account: str
    args: list[str]
    env: dict[str, str]


def headless_service(chart: Rendered) -> str:
    """The name of the chart's headless Service, whose EndpointSlices the operator discovers supernodes from."""
    return str(next(d for d in chart.of_kind("Service")
                    if d["metadata"]["name"].endswith("-headless"))["metadata"]["name"])


def install_operator(chart: Rendered, kubectl: Kubectl, api: Api, plane: ControlPlane,
                     workdir: Path) -> OperatorIdentity:
    """Apply exactly the render's operator ServiceAccount and RBAC, and its headless Service (the Pods,
    StatefulSet and Deployment would do nothing here: no kubelet); the operator pod's token, args and env."""
    operator_docs = [d for d in chart.manifests() if d["kind"] in RBAC_KINDS
                     and d["metadata"]["labels"].get("app.kubernetes.io/component") == "operator"]
    headless = [d for d in chart.of_kind("Service") if d["metadata"]["name"] == headless_service(chart)]
    kubectl.run("apply", "-f", "-", stdin=yaml.safe_dump_all(operator_docs + headless)).ok()

    pod = chart.one("Deployment")["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"] == ["dragonfly-operator"], container["command"]
    account = pod["serviceAccountName"]
    token = api.service_account_token(account, NAMESPACE)
    workdir.mkdir(parents=True, exist_ok=True)
    kubeconfig = write_kubeconfig(workdir / f"{account}.kubeconfig", server=plane.server, ca_file=plane.ca_file,
                                  token=token, user=f"sa-{account}")
    env = {e["name"]: str(e["value"]) for e in container.get("env") or () if "value" in e}
    env["POD_NAMESPACE"] = NAMESPACE  # the downward API's metadata.namespace
    return OperatorIdentity(kubeconfig, account, list(container.get("args") or ()), env)


@pytest.fixture(scope="session")
def release_namespace(crd: str, kubectl: Kubectl) -> str:
    kubectl.run("create", "namespace", NAMESPACE).ok()
    return NAMESPACE


@pytest.fixture(scope="session")
def operator_identity(release_namespace: str, chart: Rendered, kubectl: Kubectl, api: Api,
                      control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory) -> OperatorIdentity:
    """The chart's default install (every namespace, a ClusterRole): its operator's identity."""
    return install_operator(chart, kubectl, api, control_plane, tmp_path_factory.mktemp("operator"))


@pytest.fixture
async def namespace(kubectl: Kubectl, crd: str) -> AsyncIterator[str]:
    """A namespace of the test's own. At the end its Preheats are deleted, and released from the
    finalizer where no operator is left to do it, so that the next test's operator never sees them."""
    name = f"t{next(_namespaces)}-{os.getpid()}"
    (await kubectl("create", "namespace", name)).ok()
    try:
        yield name
    finally:
        await kubectl("delete", "preheats", "--all", "-n", name, "--wait=false")
        listing = await kubectl.get_json("preheats", "-n", name)
        for item in listing["items"]:
            await kubectl("patch", "preheat", item["metadata"]["name"], "-n", name, "--type=merge",
                          "-p", '{"metadata":{"finalizers":null}}')


def endpoint_slice_of(service: str, nodes: list[ClusterSupernode]) -> dict[str, Any]:
    """The EndpointSlice of ``service`` with ``nodes`` ready on it (they share their port numbers)."""
    return {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice", "addressType": "FQDN",
        "metadata": {"name": f"{service}-k8stest", "namespace": NAMESPACE,
                     "labels": {"kubernetes.io/service-name": service,
                                "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"}},
        "ports": [{"name": "api", "port": nodes[0].api_port, "protocol": "TCP"},
                  {"name": "cdn", "port": nodes[0].cdn_port, "protocol": "TCP"}],
        "endpoints": [{"addresses": [node.host], "conditions": {"ready": True},
                       "targetRef": {"kind": "Pod", "namespace": NAMESPACE, "name": f"{RELEASE}-{i}"}}
                      for i, node in enumerate(nodes)],
    }


class ClusterSupernode(SupernodeProcess):
    """The real supernode bound to one 127.0.0.x address, as a pod has its own IP (same ports on each)."""

    def __init__(self, home: Path, log_dir: Path, *, host: str, api_port: int, cdn_port: int) -> None:
        super().__init__(home, log_dir, api_port=api_port, cdn_port=cdn_port, advertise_ip=host)
        self.host = host

    @property
    def api_url(self) -> str:
        return f"http://{self.host}:{self.api_port}"

    @property
    def cdn_url(self) -> str:
        return f"http://{self.host}:{self.cdn_port}"

    def argv(self) -> list[str]:
        return [*super().argv(), "--listen-host", self.host]


@pytest.fixture
async def supernodes(operator_identity: OperatorIdentity, chart: Rendered, kubectl: Kubectl,
                     tmp_path: Path) -> AsyncIterator[list[ClusterSupernode]]:
    """Two supernodes, 127.0.0.2 and 127.0.0.3, and an EndpointSlice of the chart's headless Service as the
    EndpointSlice controller would make it (ports by name, as the StatefulSet's pods declare them), but
    of addressType FQDN: the API server refuses loopback addresses in IPv4 slices (a pod never has one),
    and a name that is the address itself passes. The operator reads both kinds the same way."""
    api_port, cdn_port = free_port("127.0.0.2"), free_port("127.0.0.2")
    nodes = [ClusterSupernode(tmp_path / f"sn{i}", tmp_path / f"sn{i}-log", host=f"127.0.0.{i}",
                              api_port=api_port, cdn_port=cdn_port) for i in (2, 3)]
    endpoint_slice = endpoint_slice_of(headless_service(chart), nodes)
    started: list[ClusterSupernode] = []
    try:
        for node in nodes:
            await node.start()
            started.append(node)
        (await kubectl.apply(endpoint_slice)).ok()
        yield nodes
    except SupernodeStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    finally:
        await kubectl("delete", "endpointslice", endpoint_slice["metadata"]["name"], "-n", NAMESPACE,
                      "--ignore-not-found")
        for node in started:
            code = await node.stop()
            print(f"supernode {node.host} exited with {code}; stderr tail:\n{node.stderr_text(2000)}")


def operator_script() -> Path:
    """The ``dragonfly-operator`` console script of the environment the tests run in."""
    return Path(sys.executable).with_name("dragonfly-operator")


class OperatorProcess:
    """``dragonfly-operator`` with the chart's args and env, logged in with the ServiceAccount token."""

    def __init__(self, identity: OperatorIdentity, log_path: Path, **settings: str) -> None:
        self.liveness = f"http://127.0.0.1:{free_port()}/healthz"
        metrics_port = free_port()
        self.metrics = f"http://127.0.0.1:{metrics_port}/metrics"
        args = [a for a in identity.args if not a.startswith("--liveness")] + [f"--liveness={self.liveness}"]
        self.argv = [str(operator_script()), *args]
        env = {k: v for k, v in os.environ.items()
               if k != "KUBERNETES_SERVICE_HOST" and not k.startswith("DFOPERATOR_")}
        env.update(identity.env)
        env.update(KUBECONFIG=str(identity.kubeconfig), PYTHONUNBUFFERED="1",
                   DFOPERATOR_METRICS_HOST="127.0.0.1", DFOPERATOR_METRICS_PORT=str(metrics_port),
                   DFOPERATOR_POLL_INTERVAL="0.5", DFOPERATOR_RETRY_BACKOFF="0.5", DFOPERATOR_RETRY_BACKOFF_MAX="2",
                   DFOPERATOR_RETRY_ATTEMPTS="30", DFOPERATOR_REQUEST_TIMEOUT="5")
        env.update({f"DFOPERATOR_{k.upper()}": v for k, v in settings.items()})
        self.env = env
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def log(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    async def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.proc = await asyncio.to_thread(
                subprocess.Popen, self.argv, cwd=REPO_ROOT, env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)

        async def live() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                raise AssertionError(f"dragonfly-operator exited with {self.proc.returncode}:\n{self.log()}")
            with contextlib.suppress(aiohttp.ClientError, OSError):
                async with aiohttp.ClientSession() as http, \
                        http.get(self.liveness, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    return resp.status == 200
            return False

        await wait_for("the operator's liveness endpoint", live, within=OPERATOR_START_WITHIN, every=0.3)

    async def stop(self) -> int | None:
        """SIGTERM (what the kubelet sends), SIGKILL to the process group after the grace period."""
        proc, self.proc = self.proc, None
        if proc is None:
            return None
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            return await asyncio.to_thread(proc.wait, OPERATOR_STOP_WITHIN)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            return await asyncio.to_thread(proc.wait, OPERATOR_STOP_WITHIN)


@pytest.fixture
async def operators(operator_identity: OperatorIdentity, tmp_path: Path) -> AsyncIterator[Any]:
    """``start(**settings) -> OperatorProcess``; every operator started is stopped at the end."""
    if not operator_script().exists():
        pytest.skip(f"the dragonfly-operator console script is not installed beside {sys.executable} "
                    "(pip install -e . installs it)")
    started: list[OperatorProcess] = []

    async def start(identity: OperatorIdentity | None = None, **settings: str) -> OperatorProcess:
        process = OperatorProcess(identity or operator_identity, tmp_path / f"operator-{len(started)}.log",
                                  **settings)
        started.append(process)
        await process.start()
        return process

    try:
        yield start
    finally:
        for process in started:
            await process.stop()
            print(f"{process.log_path.name}:\n{process.log(4000)}")
    # Every request the operator makes must be allowed by the chart's RBAC: a refusal is a chart bug.
    refused = [line for process in started for line in process.log(1_000_000).splitlines()
               if "forbidden" in line.lower()]
    assert not refused, "the API server refused the operator (chart RBAC):\n" + "\n".join(refused[:5])


@pytest.fixture
async def record_phases(control_plane: ControlPlane) -> AsyncIterator[Any]:
    """``await record_phases(name, namespace) -> PhaseRecorder``: a watch opened before the object exists."""
    recorders: list[PhaseRecorder] = []

    async def start(name: str, namespace: str) -> PhaseRecorder:
        recorder = PhaseRecorder(control_plane.server, control_plane.admin_token, control_plane.ssl_context(),
                                 name=name, namespace=namespace)
        await recorder.start()
        recorders.append(recorder)
        return recorder

    try:
        yield start
    finally:
        for recorder in recorders:
            await recorder.stop()
