"""containerd's ``certs.d/<registry>/hosts.toml`` for the mirrored registries (Dragonfly2's dfinit role).

One directory per registry, named as containerd names the registry (``host[:port]``), with the mirror
as the first host and the registry itself as ``server``, so containerd falls back to the registry by
itself whenever the mirror does not answer (``hosts.toml`` is read at every pull: no restart). A
registry's private CA is copied beside its ``hosts.toml`` and named by absolute path, since the
runtime resolves it on the node, where the directory is the same path as here.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from .config import MirrorConfig, Registry

HEADER = "# Written by `dfget proxy --write-hosts-toml`: pulls go to the node's registry mirror first.\n"


def hosts_toml(registry: Registry, mirror_url: str, ca: Path | None) -> str:
    lines = [HEADER.rstrip("\n"), f'server = "{registry.url}"']
    if ca is not None:
        lines.append(f'ca = "{ca}"')
    lines += ["", f'[host."{mirror_url}"]', '  capabilities = ["pull", "resolve"]', ""]
    return "\n".join(lines)


def write_hosts(certs_dir: Path, config: MirrorConfig, mirror_url: str) -> list[Path]:
    """Write (atomically, by rename) one ``hosts.toml`` per registry; return their paths."""
    written = []
    for registry in config.registries:
        directory = certs_dir / registry.name
        directory.mkdir(parents=True, exist_ok=True)
        ca: Path | None = None
        if registry.ca_file is not None:
            ca = directory.absolute() / "ca.crt"
            shutil.copyfile(registry.ca_file, ca)
        path = directory / "hosts.toml"
        temp = directory / ".hosts.toml.tmp"
        temp.write_text(hosts_toml(registry, mirror_url, ca))
        os.replace(temp, path)
        written.append(path)
    return written


def mirror_url(config: MirrorConfig) -> str:
    """Where containerd on this node reaches the mirror: its listen address (loopback for a wildcard)."""
    host = "127.0.0.1" if config.listen in ("", "0.0.0.0") else config.listen
    return f"http://{host}:{config.port}"
