"""What the kubelet and a CRI runtime make of one container of a rendered pod: its process and its mounts.

The chart is the contract: the command and args (with Kubernetes' ``$(VAR)`` expansion), the environment
(the image's, then the container's, with ``fieldRef`` values from the pod), the user and groups of the security
contexts (``fsGroup`` as a supplementary group), the capabilities left after ``drop``/``add``, a read-only root
file system, no privilege escalation, and every volumeMount backed as its volume kind would be on a node. What
this models is named here so that a difference from a real node is easy to see: no seccomp profile, no cgroup
limits, no DNS.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

#: containerd's default capabilities (what ``drop``/``add`` apply to).
DEFAULT_CAPABILITIES = ("CHOWN", "DAC_OVERRIDE", "FSETID", "FOWNER", "MKNOD", "NET_RAW", "SETGID", "SETUID",
                        "SETFCAP", "SETPCAP", "NET_BIND_SERVICE", "SYS_CHROOT", "KILL", "AUDIT_WRITE")


@dataclass(frozen=True)
class ImageConfig:
    """The parts of the image's (Docker format) config a runtime uses."""

    user: str
    env: list[str]
    entrypoint: list[str]
    cmd: list[str]
    workdir: str
    exposed_ports: set[str]
    healthcheck: list[str]

    @classmethod
    def from_inspect(cls, data: dict[str, Any]) -> ImageConfig:
        config = data["Docker"]["config"]
        return cls(user=config.get("User") or "", env=list(config.get("Env") or []),
                   entrypoint=list(config.get("Entrypoint") or []), cmd=list(config.get("Cmd") or []),
                   workdir=config.get("WorkingDir") or "/", exposed_ports=set(config.get("ExposedPorts") or {}),
                   healthcheck=list((config.get("Healthcheck") or {}).get("Test") or []))


@dataclass
class Pod:
    """One pod of the chart's render on the test's "node": its spec, its addresses, and where its volumes live."""

    name: str
    namespace: str
    spec: dict[str, Any]
    pod_ip: str
    host_ip: str
    #: The node's file system for hostPath volumes (shared by every pod of a test).
    node_root: Path
    #: Where this pod's emptyDir, claim and configMap volumes are made.
    volumes_root: Path
    #: Rendered ConfigMaps by name: their ``data``.
    config_maps: dict[str, dict[str, str]] = field(default_factory=dict)
    #: Extra mounts the kubelet adds (name -> host directory), e.g. the service account token.
    extra_volumes: dict[str, Path] = field(default_factory=dict)
    claim_templates: set[str] = field(default_factory=set)
    #: Variables the kubelet adds to every container (KUBERNETES_SERVICE_HOST/PORT), before the container's.
    kubelet_env: dict[str, str] = field(default_factory=dict)

    @property
    def fields(self) -> dict[str, str]:
        """The downward API's fieldRef values."""
        return {"metadata.name": self.name, "metadata.namespace": self.namespace, "status.podIP": self.pod_ip,
                "status.hostIP": self.host_ip, "spec.nodeName": "node-0",
                "spec.serviceAccountName": self.spec.get("serviceAccountName", "default")}

    def container(self, name: str) -> dict[str, Any]:
        for c in [*self.spec.get("initContainers", []), *self.spec["containers"]]:
            if c["name"] == name:
                return dict(c)
        raise KeyError(f"pod {self.name} has no container {name!r}")

    def volume_source(self, name: str) -> Path:
        """The host directory behind a volume, made as the kubelet makes that kind of volume."""
        if name in self.extra_volumes:
            return self.extra_volumes[name]
        security = self.spec.get("securityContext", {})
        fs_group = security.get("fsGroup")
        volume = next((v for v in self.spec.get("volumes", []) if v["name"] == name), None)
        if volume is None and name in self.claim_templates:
            volume = {"name": name, "persistentVolumeClaim": {"claimName": f"{name}-{self.name}"}}
        assert volume is not None, f"volumeMount {name!r} of pod {self.name} names no volume"
        if "hostPath" in volume:
            path: Path = self.node_root / str(volume["hostPath"]["path"]).lstrip("/")
            if not path.exists():
                assert volume["hostPath"].get("type") in ("DirectoryOrCreate", "", None), volume
                path.mkdir(parents=True, mode=0o755)  # DirectoryOrCreate: root-owned 0755
            return path
        path = self.volumes_root / self.name / name
        if path.exists():
            return path
        path.mkdir(parents=True)
        if "configMap" in volume:
            for key, text in self.config_maps[volume["configMap"]["name"]].items():
                (path / key).write_text(text)
                (path / key).chmod(0o644)
            path.chmod(0o755)
        elif "emptyDir" in volume:
            path.chmod(0o777)
        else:
            assert "persistentVolumeClaim" in volume, volume
            path.chmod(0o755)
        if fs_group is not None and "configMap" not in volume:
            # fsGroup: the volume's group becomes fsGroup, group-writable and setgid.
            os.chown(path, 0, int(fs_group))
            path.chmod(path.stat().st_mode | 0o2070)
        return path


@dataclass(frozen=True)
class Mount:
    source: Path
    destination: str
    read_only: bool


@dataclass(frozen=True)
class Process:
    """A container's process as the runtime starts it."""

    args: list[str]
    env: list[str]
    cwd: str
    uid: int
    gid: int
    groups: list[int]
    capabilities: list[str]
    read_only_root: bool
    no_new_privileges: bool
    mounts: list[Mount]

    def with_args(self, args: list[str]) -> Process:
        return Process(args, self.env, self.cwd, self.uid, self.gid, self.groups, self.capabilities,
                       self.read_only_root, self.no_new_privileges, self.mounts)


_VAR = re.compile(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(text: str, env: dict[str, str]) -> str:
    """Kubernetes' dependent variable expansion: ``$(VAR)`` of a defined variable, ``$$`` for ``$``."""
    def one(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group(1)
        return env.get(name, match.group(0))

    return _VAR.sub(one, text)


def _container_env(pod: Pod, container: dict[str, Any]) -> dict[str, str]:
    env: dict[str, str] = dict(pod.kubelet_env)
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = expand(str(var["value"]), env)
        else:
            ref = var["valueFrom"]["fieldRef"]["fieldPath"]
            env[var["name"]] = pod.fields[ref]
    return env


def process_of(pod: Pod, container: dict[str, Any], image: ImageConfig) -> Process:
    """The process and mounts of one container, as the kubelet asks the runtime for them."""
    env = _container_env(pod, container)
    command = container.get("command")
    args = container.get("args")
    argv = ([*(command or image.entrypoint), *(args if args is not None else ([] if command else image.cmd))])
    argv = [expand(a, env) for a in argv]
    merged = dict(e.split("=", 1) for e in image.env)
    merged.update(env)

    pod_security = pod.spec.get("securityContext", {})
    security = {**pod_security, **container.get("securityContext", {})}
    image_uid, _, image_gid = image.user.partition(":")
    uid = int(security.get("runAsUser", image_uid or 0))
    gid = int(security.get("runAsGroup", image_gid or 0))
    if security.get("runAsNonRoot"):
        assert uid != 0, f"container {container['name']}: runAsNonRoot with uid 0: the kubelet refuses to start it"
    groups = [gid] + ([int(pod_security["fsGroup"])] if "fsGroup" in pod_security else [])
    caps = set(DEFAULT_CAPABILITIES)
    declared = security.get("capabilities", {})
    drops = {c.upper() for c in declared.get("drop", [])}
    caps = set() if "ALL" in drops else caps - drops
    caps |= {c.upper() for c in declared.get("add", [])}

    mounts = [Mount(pod.volume_source(m["name"]), m["mountPath"], bool(m.get("readOnly")))
              for m in container.get("volumeMounts", [])]
    mounts += [Mount(pod.volume_source(name), destination, True)
               for name, destination in _kubelet_mounts(pod).items()]
    return Process(args=argv, env=[f"{k}={v}" for k, v in merged.items()],
                   cwd=container.get("workingDir") or image.workdir, uid=uid, gid=gid, groups=groups,
                   capabilities=sorted(caps), read_only_root=bool(security.get("readOnlyRootFilesystem")),
                   no_new_privileges=security.get("allowPrivilegeEscalation") is False, mounts=mounts)


def _kubelet_mounts(pod: Pod) -> dict[str, str]:
    """Mounts the kubelet adds by itself: /etc/hosts, and the service account token where it is automounted."""
    mounts = {"etc-hosts": "/etc/hosts"}
    if "etc-hosts" not in pod.extra_volumes:
        hosts = pod.volumes_root / pod.name / "etc-hosts"
        hosts.mkdir(parents=True, exist_ok=True)
        (hosts / "hosts").write_text(f"127.0.0.1\tlocalhost\n{pod.pod_ip}\t{pod.name}\n")
        pod.extra_volumes["etc-hosts"] = hosts / "hosts"
    if "serviceaccount" in pod.extra_volumes and pod.spec.get("automountServiceAccountToken", True):
        mounts["serviceaccount"] = "/var/run/secrets/kubernetes.io/serviceaccount"
    return mounts
