"""The image tier: the image built from the Dockerfile as it is (scripts/build-image.sh, on the stand-in base
made from Debian packages), once per session, and the chart's pods run from it on a test "node".

Skips, naming what is missing, without buildah, runc (buildah's runtime), debootstrap, util-linux's
unshare, iproute2's ip, or root. The stand-in base is cached across runs (scripts/build-image.sh keeps it,
keyed by its recipe) and the locked dependencies are a cached build layer, so only the first run on a
machine builds everything.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.deploy.conftest import CHART, NAMESPACE, RELEASE, ROOT, Rendered
from tests.image.netns import NetNamespace
from tests.image.oci import Container, Rootfs
from tests.image.podspec import DEFAULT_CAPABILITIES, ImageConfig, Pod, Process, process_of

#: The image the tier builds (a tag of its own: a person's `scripts/build-image.sh` default is left alone).
TAG = "localhost/dragonfly-supernode-py:image-tests"
BUILD_TIMEOUT = 1500
#: Binaries the tier runs, with the Debian package that has each.
TOOLS = {"buildah": "buildah", "runc": "runc", "debootstrap": "debootstrap", "unshare": "util-linux",
         "ip": "iproute2"}
#: The chart's values the tier renders: every workload on (the dfget DaemonSet is off by default) and a
#: supernode config file, so that the ConfigMap mount and --config are exercised too.
VALUES: dict[str, Any] = {"dfget": {"enabled": True}, "supernode": {"config": {"cdn_task_limit": 8}}}
#: Addresses on the test's node network: the node (hostNetwork pods) and one per pod.
NODE_IP = "10.244.0.1"
SUPERNODE_IP = "10.244.1.10"
OPERATOR_IP = "10.244.1.11"


@dataclass(frozen=True)
class BuiltImage:
    tag: str
    seconds: float
    size: str
    config: ImageConfig
    inspect: dict[str, Any]


_report: list[str] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    for line in _report:
        terminalreporter.write_line(line)


def _missing_tools() -> list[str]:
    return [f"{tool} (Debian package {pkg})" for tool, pkg in TOOLS.items() if shutil.which(tool) is None]


def _image_id(tag: str) -> str:
    found = subprocess.run(["buildah", "inspect", "--type", "image", "--format", "{{.FromImageID}}", tag],
                           capture_output=True, text=True, timeout=60)
    return found.stdout.strip() if found.returncode == 0 else ""


@pytest.fixture(scope="session")
def image() -> BuiltImage:
    if os.geteuid() != 0:
        pytest.skip("the image tier needs root (debootstrap for the stand-in base, runc for the containers)")
    missing = _missing_tools()
    if missing:
        pytest.skip(f"the image tier needs {', '.join(missing)} (scripts/test.sh installs them as root)")
    previous = _image_id(TAG)
    start = time.monotonic()
    build = subprocess.run(["bash", str(ROOT / "scripts" / "build-image.sh"), "--debian-base", "-t", TAG],
                           cwd=ROOT, capture_output=True, text=True, timeout=BUILD_TIMEOUT)
    seconds = time.monotonic() - start
    if build.returncode != 0:
        pytest.fail(f"scripts/build-image.sh failed ({build.returncode}):\n{build.stderr[-6000:]}", pytrace=False)
    assert build.stdout.strip().splitlines()[-1] == TAG, build.stdout
    if previous and previous != _image_id(TAG):
        # The last run's image (and its now unused cached layers): a rebuild per source change must not pile up.
        subprocess.run(["buildah", "rmi", previous], capture_output=True, timeout=120)
    data = json.loads(subprocess.run(["buildah", "inspect", "--type", "image", TAG], check=True,
                                     capture_output=True, text=True, timeout=60).stdout)
    (listed,) = json.loads(subprocess.run(["buildah", "images", "--json", TAG], check=True, capture_output=True,
                                          text=True, timeout=60).stdout)
    built = BuiltImage(TAG, seconds, listed["size"], ImageConfig.from_inspect(data), data)
    _report.append(f"image tier: built {TAG} in {seconds:.0f} s (scripts/build-image.sh --debian-base), "
                   f"size {built.size}")
    return built


@pytest.fixture(scope="session")
def rendered() -> Iterator[Rendered]:
    """The chart rendered with :data:`VALUES` by the Helm SDK, as tests/deploy renders it."""
    helm = pytest.importorskip("helm_python", reason="the Helm SDK wheel (helm-python-sdk) is not installed")
    chart = helm.Chart.load(str(CHART))
    try:
        yield Rendered(chart.render(json.loads(json.dumps(VALUES)), name=RELEASE, namespace=NAMESPACE))
    finally:
        chart.close()


def pods(rendered: Rendered, node: Node) -> dict[str, Pod]:
    """The pods of the render's workloads, by component: supernode, operator, dfget."""
    config_maps = {d["metadata"]["name"]: d.get("data", {}) for d in rendered.of_kind("ConfigMap")}
    found: dict[str, Pod] = {}
    for kind, ip, suffix in (("StatefulSet", SUPERNODE_IP, "0"), ("Deployment", OPERATOR_IP, "7d9f8-x2kq4"),
                             ("DaemonSet", NODE_IP, "h5k2p")):
        for workload in rendered.of_kind(kind):
            template = workload["spec"]["template"]
            component = template["metadata"]["labels"]["app.kubernetes.io/component"]
            spec = template["spec"]
            found[component] = Pod(
                name=f"{workload['metadata']['name']}-{suffix}", namespace=NAMESPACE, spec=spec,
                pod_ip=NODE_IP if spec.get("hostNetwork") else ip, host_ip=NODE_IP, node_root=node.root / "node",
                volumes_root=node.root / "pods", config_maps=config_maps,
                claim_templates={t["metadata"]["name"] for t in workload["spec"].get("volumeClaimTemplates", [])})
    return found


class Node:
    """The test's node: a network namespace with the pod and node addresses, and the containers run on it."""

    def __init__(self, root: Path, image: BuiltImage) -> None:
        self.root = root
        self.image = image
        self.net = NetNamespace([NODE_IP, SUPERNODE_IP, OPERATOR_IP])
        self._rootfs: list[Rootfs] = []
        self._containers: list[Container] = []

    def container(self, pod: Pod, name: str) -> Container:
        """A container of the pod, ready to start, on its own copy of the image."""
        rootfs = Rootfs(self.image.tag).__enter__()
        self._rootfs.append(rootfs)
        process = process_of(pod, pod.container(name), self.image.config)
        container = Container(name, process, rootfs.path, self.net.path, pod.name, self.root / "bundles",
                              self.root / "runc")
        self._containers.append(container)
        return container

    def run_in_image(self, args: list[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``docker run --network <this node> IMAGE args...``: the image's own user, environment and directory,
        the runtime's default capabilities, a writable root file system."""
        rootfs = Rootfs(self.image.tag).__enter__()
        self._rootfs.append(rootfs)
        config = self.image.config
        uid, _, gid = config.user.partition(":")
        process = Process(args=args, env=config.env, cwd=config.workdir, uid=int(uid or 0), gid=int(gid or 0),
                          groups=[int(gid or 0)], capabilities=sorted(DEFAULT_CAPABILITIES), read_only_root=False,
                          no_new_privileges=False, mounts=[])
        container = Container("run", process, rootfs.path, self.net.path, "run", self.root / "bundles",
                              self.root / "runc")
        self._containers.append(container)
        code = container.run(timeout)
        return subprocess.CompletedProcess(args, code, container.stdout, container.stderr)

    def close(self) -> None:
        for container in reversed(self._containers):
            container.delete()
        for rootfs in self._rootfs:
            rootfs.__exit__(None, None, None)
        self.net.stop()


@pytest.fixture
def node(image: BuiltImage, tmp_path: Path) -> Iterator[Node]:
    built = Node(tmp_path, image)
    built.net.start()
    try:
        yield built
    finally:
        for container in built._containers:
            print(f"--- {container.name} (exit {container.exit_code}):\n{container.output()}")
        built.close()
