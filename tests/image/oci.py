"""The image's containers, run as a node runs them: a root file system from the image (``buildah from``), an
OCI runtime spec made from the pod's container (:mod:`tests.image.podspec`), and ``runc`` (buildah's runtime).

``buildah run`` would be shorter, but it cannot make the root file system read-only or drop every
capability, and the chart asks for both; runc takes the same spec a CRI runtime would give it. Every
container is stopped (SIGTERM, then SIGKILL) and deleted, and its root file system removed, at the end.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from tests.image.podspec import Process


class Rootfs:
    """A writable copy of the image (a buildah working container) mounted on the host."""

    def __init__(self, image: str) -> None:
        self.image = image
        self.name = f"dragonfly-test-{uuid.uuid4().hex[:12]}"
        self.path = ""

    def __enter__(self) -> Rootfs:
        subprocess.run(["buildah", "from", "--quiet", "--pull-never", "--name", self.name, self.image],
                       check=True, capture_output=True, timeout=120)
        self.path = subprocess.run(["buildah", "mount", self.name], check=True, capture_output=True, text=True,
                                   timeout=60).stdout.strip()
        return self

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["buildah", "rm", self.name], capture_output=True, timeout=120)


def _process_spec(process: Process, terminal: bool = False) -> dict[str, Any]:
    caps = ["CAP_" + c for c in process.capabilities]
    # As containerd does for a non-root user: the bounding set only, nothing effective or permitted.
    effective = caps if process.uid == 0 else []
    return {"terminal": terminal, "user": {"uid": process.uid, "gid": process.gid, "additionalGids": process.groups},
            "args": process.args, "env": process.env, "cwd": process.cwd,
            "capabilities": {"bounding": caps, "effective": effective, "permitted": effective, "inheritable": [],
                             "ambient": []},
            "noNewPrivileges": process.no_new_privileges}


def runtime_spec(process: Process, rootfs: str, netns: str, hostname: str) -> dict[str, Any]:
    mounts: list[dict[str, Any]] = [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755",
                                                                                  "size=65536k"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
         "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
         "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": ["nosuid", "noexec", "nodev"]},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "noexec", "nodev", "ro"]},
    ]
    for mount in process.mounts:
        mounts.append({"destination": mount.destination, "type": "bind", "source": str(mount.source),
                       "options": ["rbind", "ro" if mount.read_only else "rw"]})
    return {
        "ociVersion": "1.0.2-dev", "process": _process_spec(process), "hostname": hostname,
        "root": {"path": rootfs, "readonly": process.read_only_root}, "mounts": mounts,
        "linux": {"namespaces": [{"type": "pid"}, {"type": "ipc"}, {"type": "uts"}, {"type": "mount"},
                                 {"type": "network", "path": netns}],
                  "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
                  "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]},
    }


class Container:
    """One container: ``runc run`` in the foreground (its exit status is the container's), logs to a file."""

    def __init__(self, name: str, process: Process, rootfs: str, netns: str, hostname: str, workdir: Path,
                 runc_root: Path) -> None:
        self.name = name
        self.id = f"{name}-{uuid.uuid4().hex[:8]}"
        self.process = process
        self.bundle = workdir / self.id
        self.log_path = self.bundle / "output.log"
        self.stderr_path = self.bundle / "stderr.log"
        self._runc = ["runc", "--root", str(runc_root)]
        self._spec = runtime_spec(process, rootfs, netns, hostname)
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.bundle.mkdir(parents=True)
        (self.bundle / "config.json").write_text(json.dumps(self._spec, indent=1))
        with self.log_path.open("wb") as out, self.stderr_path.open("wb") as err:
            self._proc = subprocess.Popen([*self._runc, "run", "--bundle", str(self.bundle), self.id],
                                          stdin=subprocess.DEVNULL, stdout=out, stderr=err, start_new_session=True)

    def run(self, timeout: float) -> int:
        """Start and wait for the exit (an init container): its exit status."""
        self.start()
        assert self._proc is not None
        try:
            return self._proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError(f"{self.name} did not finish within {timeout:g}s:\n{self.output()}") from None

    @property
    def exit_code(self) -> int | None:
        return None if self._proc is None else self._proc.poll()

    @property
    def stdout(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    @property
    def stderr(self) -> str:
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def output(self, tail: int = 4000) -> str:
        """The tail of what the container (and runc) wrote, stdout then stderr, for diagnostics."""
        return (self.stdout[-tail:] + self.stderr[-tail:])[-tail:]

    def signal(self, sig: signal.Signals) -> None:
        """Signal the container's PID 1 as the runtime does (PID 1 ignores signals it has no handler for)."""
        subprocess.run([*self._runc, "kill", self.id, sig.name.removeprefix("SIG")], check=True,
                       capture_output=True, timeout=30)

    def exec(self, args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
        """Run a command in the running container as its own process runs (a HEALTHCHECK, a ``kubectl exec``)."""
        spec = self.bundle / f"exec-{uuid.uuid4().hex[:8]}.json"
        spec.write_text(json.dumps(_process_spec(self.process.with_args(args))))
        return subprocess.run([*self._runc, "exec", "--process", str(spec), self.id], capture_output=True,
                              text=True, timeout=timeout)

    def stop(self, grace: float) -> int:
        """SIGTERM, then SIGKILL after ``grace`` seconds (the pod's termination grace period): the exit status."""
        assert self._proc is not None
        if self._proc.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                return self._proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.kill()
                raise AssertionError(f"{self.name} ignored SIGTERM for {grace:g}s:\n{self.output()}") from None
        return self._proc.returncode

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            subprocess.run([*self._runc, "kill", self.id, "KILL"], capture_output=True, timeout=30)
            deadline = time.monotonic() + 15
            while self._proc.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if self._proc.poll() is None:  # runc itself is stuck: end its process group
                os.killpg(self._proc.pid, signal.SIGKILL)
                self._proc.wait(10)

    def delete(self) -> None:
        self.kill()
        subprocess.run([*self._runc, "delete", "--force", self.id], capture_output=True, timeout=30)
