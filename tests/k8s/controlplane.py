"""A real Kubernetes control plane on loopback: etcd and kube-apiserver (v1.28) as child processes.

Only these two run (shared/k8s/README.md): no controller-manager, scheduler or kubelet, so nothing
makes Pods, EndpointSlices or default ServiceAccounts; a test creates what it needs. Both processes get
their own process group and are stopped by pid (SIGTERM, then SIGKILL), even when starting failed.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import ssl
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.spec import shared_dir
from tests.tlscerts import self_signed
from tests.v1proto import free_port

REPO_ROOT = Path(__file__).resolve().parents[2]
READY_WITHIN = 90.0  # about 4 s on an idle machine; much more on a loaded 2-core one
STOP_WITHIN = 15.0



def apiserver_binary() -> Path:
    return shared_dir() / "k8s" / "bin" / "kube-apiserver"


def missing_parts() -> list[str]:
    """What this tier needs and the machine lacks, each said so that a reader knows what to install."""
    missing = []
    binary = apiserver_binary()
    if not os.access(binary, os.X_OK):
        missing.append(f"kube-apiserver at {binary} (the shared folder; set DF_SHARED to find it elsewhere)")
    if shutil.which("etcd") is None:
        missing.append("etcd (Debian package etcd-server)")
    if shutil.which("kubectl") is None:
        missing.append("kubectl (Debian package kubernetes-client)")
    return missing


def write_kubeconfig(path: Path, *, server: str, ca_file: Path, token: str, user: str,
                     namespace: str = "default") -> Path:
    """A kubeconfig that kubectl, the kubernetes client and kopf all read: the CA and a bearer token."""
    path.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": user,
        "clusters": [{"name": "loopback", "cluster": {"server": server, "certificate-authority": str(ca_file)}}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "loopback", "user": user, "namespace": namespace}}],
    }))
    path.chmod(0o600)
    return path


@dataclass
class Process:
    """A child in its own process group, its output in a file."""

    name: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def start(self) -> None:
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(STOP_WITHIN)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(STOP_WITHIN)
        if self._log is not None:
            self._log.close()
            self._log = None


class ControlPlane:
    """etcd + kube-apiserver on free 127.0.0.1 ports, state under ``workdir``; an admin kubeconfig."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.port = free_port()
        self.etcd_port, self.peer_port = free_port(), free_port()
        self.admin_token = secrets.token_hex(16)
        self.ca_file = workdir / "pki" / "ca.crt"
        self.admin_kubeconfig = workdir / "admin.kubeconfig"
        self.processes: list[Process] = []

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def _write_keys(self) -> dict[str, Path]:
        pki = self.workdir / "pki"
        pki.mkdir(parents=True)
        serving_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        paths = {"cert": self.ca_file, "key": pki / "serving.key", "sa_key": pki / "sa.key",
                 "sa_pub": pki / "sa.pub", "tokens": pki / "tokens.csv"}
        # The serving certificate is its own CA (tests.tlscerts): clients trust it through certificate-authority.
        paths["cert"].write_bytes(self_signed(serving_key, "kube-apiserver").public_bytes(serialization.Encoding.PEM))
        for key, name in ((serving_key, "key"), (sa_key, "sa_key")):
            paths[name].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.TraditionalOpenSSL,
                                                      serialization.NoEncryption()))
        paths["sa_pub"].write_bytes(sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        paths["tokens"].write_text(f"{self.admin_token},admin,admin-uid,system:masters\n")
        for path in paths.values():
            path.chmod(0o600)
        return paths

    def start(self) -> None:
        keys = self._write_keys()
        etcd_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.peer_port}"
        etcd = Process("etcd", [
            "etcd", "--name", "t", "--data-dir", str(self.workdir / "etcd"),
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"t={peer_url}", "--initial-cluster-state", "new",
            "--listen-metrics-urls", f"http://127.0.0.1:{free_port()}",
        ], self.workdir / "etcd.log")
        apiserver = Process("kube-apiserver", [
            str(apiserver_binary()), f"--etcd-servers={etcd_url}", "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1", f"--secure-port={self.port}",
            f"--cert-dir={self.workdir / 'pki'}", f"--tls-cert-file={keys['cert']}",
            f"--tls-private-key-file={keys['key']}", f"--client-ca-file={keys['cert']}",
            f"--token-auth-file={keys['tokens']}", "--authorization-mode=RBAC",
            f"--service-account-key-file={keys['sa_pub']}", f"--service-account-signing-key-file={keys['sa_key']}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            "--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none", "--profiling=false",
        ], self.workdir / "kube-apiserver.log")
        for process in (etcd, apiserver):
            self.processes.append(process)
            process.start()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        write_kubeconfig(self.admin_kubeconfig, server=self.server, ca_file=self.ca_file,
                         token=self.admin_token, user="admin")

    def ssl_context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.ca_file))

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN
        request = urllib.request.Request(f"{self.server}/readyz",
                                         headers={"Authorization": f"Bearer {self.admin_token}"})
        last: Any = None
        while time.monotonic() < deadline:
            dead = [p for p in self.processes if not p.alive()]
            if dead:
                raise RuntimeError(f"{dead[0].name} exited while starting:\n{dead[0].tail()}")
            try:
                with urllib.request.urlopen(request, timeout=2, context=self.ssl_context()) as answer:
                    if answer.read().strip() == b"ok":
                        return
            except (OSError, urllib.error.URLError) as exc:
                last = exc
            time.sleep(0.3)
        raise RuntimeError(f"kube-apiserver not ready within {READY_WITHIN:g}s (last: {last!r}):\n"
                           f"{self.processes[-1].tail()}")

    def stop(self) -> None:
        """The API server first (it writes to etcd until it goes), then etcd."""
        for process in reversed(self.processes):
            process.stop()
        self.processes.clear()
