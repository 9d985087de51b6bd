"""Test images that containerd can unpack: OCI manifests of uncompressed tar layers, pushed to a real registry
through its HTTP API (:class:`~tests.preheat.registry.Pusher`) or, as a user would, with ``skopeo copy`` from an
OCI image layout written here."""

from __future__ import annotations

import asyncio
import io
import json
import os
import platform
import shutil
import tarfile
from dataclasses import dataclass
from pathlib import Path

from tests.preheat.registry import OCI_CONFIG, OCI_MANIFEST, Blob, Pusher, sha256_digest

OCI_TAR_LAYER = "application/vnd.oci.image.layer.v1.tar"
GOARCH = {"x86_64": "amd64", "aarch64": "arm64"}.get(platform.machine(), platform.machine())


def tar_layer(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@dataclass(frozen=True)
class PushedImage:
    name: str
    tag: str
    manifest_digest: str
    config: Blob
    layers: tuple[Blob, ...]

    @property
    def blobs(self) -> tuple[Blob, ...]:
        return (self.config, *self.layers)

    @property
    def size(self) -> int:
        """Blob bytes of the image: what a pull without the swarm takes from the registry."""
        return sum(len(b.data) for b in self.blobs)


def random_image_layers(*sizes: int) -> list[bytes]:
    """One tar layer per size, each holding one file of that many random bytes (fresh content per call)."""
    return [tar_layer({f"data-{i}.bin": os.urandom(size)}) for i, size in enumerate(sizes)]


SKOPEO = shutil.which("skopeo") or "/usr/bin/skopeo"


def _image_parts(layers: list[bytes]) -> tuple[Blob, tuple[Blob, ...], bytes]:
    blobs = tuple(Blob(data, OCI_TAR_LAYER) for data in layers)
    config = Blob(json.dumps({
        "architecture": GOARCH, "os": "linux", "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b.data) for b in blobs]},
    }).encode(), OCI_CONFIG)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
                           "layers": [b.descriptor() for b in blobs]}).encode()
    return config, blobs, manifest


async def push_image(pusher: Pusher, name: str, tag: str, layers: list[bytes]) -> PushedImage:
    config, blobs, manifest = _image_parts(layers)
    for blob in (config, *blobs):
        await pusher.blob(name, blob)
    digest = await pusher.manifest(name, tag, manifest, OCI_MANIFEST)
    return PushedImage(name, tag, digest, config, blobs)


async def skopeo_push(layout: Path, registry: str, name: str, tag: str, layers: list[bytes]) -> PushedImage:
    """Write an OCI image layout under ``layout``, then ``skopeo copy`` it to ``registry`` (plain HTTP host:port)."""
    config, blobs, manifest = _image_parts(layers)
    store = layout / "blobs" / "sha256"
    store.mkdir(parents=True)
    for data in (config.data, manifest, *(b.data for b in blobs)):
        (store / sha256_digest(data).removeprefix("sha256:")).write_bytes(data)
    (layout / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [{
        "mediaType": OCI_MANIFEST, "digest": sha256_digest(manifest), "size": len(manifest),
        "annotations": {"org.opencontainers.image.ref.name": tag}}]}))
    proc = await asyncio.create_subprocess_exec(
        SKOPEO, "--insecure-policy", "copy", "--preserve-digests", "--dest-tls-verify=false", f"oci:{layout}:{tag}",
        f"docker://{registry}/{name}:{tag}", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    assert proc.returncode == 0, f"skopeo copy failed: {out.decode(errors='replace')}"
    return PushedImage(name, tag, sha256_digest(manifest), config, blobs)
