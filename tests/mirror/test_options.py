"""``dfget proxy``'s options: every bad value is refused by flag name (exit 2), and the hosts.toml it writes."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from dfget.mirror.config import MirrorConfig, docker_auths, parse_registry
from dfget.mirror.hosts import mirror_url, write_hosts

pytestmark = pytest.mark.mirror

REPO_ROOT = Path(__file__).resolve().parents[2]


def _proxy(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dfget", "proxy", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=30)


@pytest.mark.parametrize(("args", "flag"), [
    ([], "--registry"),
    (["--registry", "a/b=http://x"], "--registry"),
    (["--registry", "r:5000=ftp://r:5000"], "--registry"),
    (["--registry", "r:5000", "--listen", "nowhere"], "--listen"),
    (["--registry", "r:5000", "--registry-ca", "other=/etc/hostname"], "--registry-ca"),
    (["--registry", "r:5000", "--registry-ca", "r:5000=/nonexistent.pem"], "--registry-ca"),
    (["--registry", "r:5000", "--auth-file", "/nonexistent.json"], "--auth-file"),
    (["--registry", "r:5000", "--registry", "r:5000"], "named twice"),
    (["--registry", "r:5000", "--stall-timeout", "soon"], "--stall-timeout"),
    (["--registry", "r:5000", "--node", "host:99999"], "--node"),
])
def test_bad_options_exit_2_naming_the_flag(args: list[str], flag: str) -> None:
    done = _proxy(*args)
    assert done.returncode == 2, done
    assert flag in done.stderr, done.stderr


def test_docker_config_json_credentials(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    token = base64.b64encode(b"alice:pw").decode()
    path.write_text(json.dumps({"auths": {"https://reg.example:5000/v1/": {"auth": token},
                                          "other.example": {"username": "bob", "password": "x"}}}))
    assert docker_auths(path) == {"reg.example:5000": f"Basic {token}",
                                  "other.example": "Basic " + base64.b64encode(b"bob:x").decode()}
    path.write_text(json.dumps({"auths": {"r": {"auth": "bm8tY29sb24="}}}))  # "no-colon"
    with pytest.raises(ValueError, match="user:password"):
        docker_auths(path)


def test_hosts_toml_sends_pulls_to_the_mirror_then_the_registry(tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\n")
    config = MirrorConfig(listen="0.0.0.0", port=65001, registries=(
        parse_registry("docker.io=https://registry-1.docker.io"),
        {**parse_registry("reg.local:5000"), "ca_file": ca}))
    [hub, local] = write_hosts(tmp_path / "certs.d", config, mirror_url(config))
    assert hub == tmp_path / "certs.d" / "docker.io" / "hosts.toml"
    hub_toml = tomllib.loads(hub.read_text())
    assert hub_toml == {"server": "https://registry-1.docker.io",
                        "host": {"http://127.0.0.1:65001": {"capabilities": ["pull", "resolve"]}}}
    local_toml = tomllib.loads(local.read_text())
    assert local_toml["server"] == "https://reg.local:5000"
    assert Path(local_toml["ca"]).read_text() == ca.read_text()


def test_the_mirrors_register_fields_are_sent_only_when_set() -> None:
    from dfget.supernode_api import register_body

    common = {"super_node_ip": "s", "raw_url": "u", "task_url": "u", "cid": "c", "ip": "i", "host_name": "h",
              "port": 0, "path": "p", "md5": "", "identifier": "", "call_system": "", "headers": (), "pattern": "p2p"}
    assert "rootCAs" not in register_body(**common) and "dfdaemon" not in register_body(**common)
    body = register_body(**common, root_cas=("Q0E=",), dfdaemon=True)
    assert list(body)[-3:] == ["pattern", "rootCAs", "dfdaemon"]
    assert body["rootCAs"] == ["Q0E="] and body["dfdaemon"] is True
