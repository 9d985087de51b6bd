"""Test images that containerd can unpack: OCI manifests of uncompressed tar layers, pushed to a real registry."""

from __future__ import annotations

import io
import json
import os
import platform
import tarfile
from dataclasses import dataclass

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


async def push_image(pusher: Pusher, name: str, tag: str, layers: list[bytes]) -> PushedImage:
    blobs = tuple(Blob(data, OCI_TAR_LAYER) for data in layers)
    config = Blob(json.dumps({
        "architecture": GOARCH, "os": "linux", "config": {"Cmd": ["/bin/true"]},
        "rootfs": {"type": "layers", "diff_ids": [sha256_digest(b.data) for b in blobs]},
    }).encode(), OCI_CONFIG)
    for blob in (config, *blobs):
        await pusher.blob(name, blob)
    manifest = json.dumps({"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config.descriptor(),
                           "layers": [b.descriptor() for b in blobs]}).encode()
    digest = await pusher.manifest(name, tag, manifest, OCI_MANIFEST)
    return PushedImage(name, tag, digest, config, blobs)
