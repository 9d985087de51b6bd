"""The built image itself: its config (user, command, ports, HEALTHCHECK) and what is installed in it.

Run as ``docker run IMAGE ...`` runs a command (the image's user, environment and working directory; see
:meth:`Node.run_in_image`), never by reading the Dockerfile: this is what the build produced.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.deploy.conftest import Rendered
from tests.deploy.test_dockerfile import _lock, _normalize
from tests.image.conftest import BuiltImage, Node

pytestmark = [pytest.mark.image, pytest.mark.timeout(1800)]

#: What a virtual environment of Python 3.11 holds before anything is installed into it.
VENV_SEED = {"pip", "setuptools"}
#: Build tools and test packages: none may be in the runtime image.
NOT_IN_IMAGE_MODULES = ("hatchling", "editables", "wheel", "pytest", "mypy", "ruff", "hypothesis", "kmock",
                        "schemathesis", "helm_python")
NOT_IN_IMAGE_BINARIES = ("gcc", "cc", "c++", "make", "ld", "as", "git", "curl", "wget")
#: A guard against accidental bloat (the stand-in base is ~150 MB, the image ~355 MB).
MAX_SIZE_MB = 500

_WHICH = "import shutil, sys; print([b for b in sys.argv[1:] if shutil.which(b)])"
_FIND = ("import importlib.util, sys; "
         "print([m for m in sys.argv[1:] if importlib.util.find_spec(m) is not None])")
_DISTS = ("import importlib.metadata as m, json; "
          "print(json.dumps(sorted(d.metadata['Name'] for d in m.distributions())))")


def test_config_user_command_ports_and_healthcheck(image: BuiltImage, rendered: Rendered) -> None:
    config = image.config
    assert config.user == "10001:10001", "the chart's runAsUser/runAsGroup and fsGroup are 10001"
    assert config.entrypoint == [], "no ENTRYPOINT: the chart's `command` and `docker run IMAGE dfget` run as given"
    assert config.cmd == ["supernode"], f"CMD {config.cmd}: exec form, not wrapped in /bin/sh -c"
    assert config.workdir == "/var/lib/dragonfly"
    assert {"8002/tcp", "8001/tcp"} <= config.exposed_ports
    sts = rendered.one("StatefulSet")
    (supernode,) = sts["spec"]["template"]["spec"]["containers"]
    declared = {f"{p['containerPort']}/{p['protocol'].lower()}" for p in supernode["ports"]}
    assert declared <= config.exposed_ports, f"the chart's supernode ports {declared} are not all EXPOSEd"
    test = config.healthcheck
    assert test[:1] == ["CMD"], f"HEALTHCHECK {test}: exec form (CMD-SHELL needs a shell and hides the command)"
    assert "/_ping" in " ".join(test)
    check = image.inspect["Docker"]["config"]["Healthcheck"]
    assert check["Interval"] > 0 and check["Timeout"] > 0 and check["Retries"] > 0
    env = dict(e.split("=", 1) for e in config.env)
    assert env["PATH"].startswith("/opt/dragonfly/bin:")
    assert env["SUPERNODE_HOME_DIR"] == "/var/lib/dragonfly/supernode"


def test_image_size_is_reported_and_bounded(image: BuiltImage) -> None:
    match = re.fullmatch(r"([\d.]+) (kB|MB|GB)", image.size)
    assert match, image.size
    megabytes = float(match.group(1)) * {"kB": 1e-3, "MB": 1.0, "GB": 1e3}[match.group(2)]
    print(f"image {image.tag}: {image.size}, built in {image.seconds:.0f} s")
    assert megabytes < MAX_SIZE_MB, f"the image is {image.size}: more than {MAX_SIZE_MB} MB"


def test_runs_as_10001_with_a_clean_dependency_set(node: Node) -> None:
    ids = node.run_in_image(["python", "-c", "import os; print(os.getuid(), os.getgid(), *os.getgroups())"])
    assert ids.returncode == 0 and ids.stdout.split() == ["10001", "10001", "10001"], ids
    check = node.run_in_image(["pip", "check"])
    assert check.returncode == 0, f"pip check in the image:\n{check.stdout}{check.stderr}"
    assert node.run_in_image(["sh", "-c", "command -v pip"]).stdout.strip() == "/opt/dragonfly/bin/pip"

    listed = node.run_in_image(["python", "-c", _DISTS])
    assert listed.returncode == 0, listed.stderr
    installed = {_normalize(name) for name in json.loads(listed.stdout)}
    expected = set(_lock()) | {"dragonfly-supernode-py"} | VENV_SEED
    assert installed == expected, (f"in the image but not locked: {sorted(installed - expected)}; "
                                   f"locked but not in the image: {sorted(expected - installed)}")


def test_no_build_tools_or_test_packages(node: Node) -> None:
    binaries = node.run_in_image(["python", "-c", _WHICH, *NOT_IN_IMAGE_BINARIES])
    assert binaries.returncode == 0 and binaries.stdout.strip() == "[]", binaries
    # Both Pythons: the application's virtual environment and the base's own (the build stage's hatchling
    # went into the build stage's system Python; the runtime stage starts from the base again). The base's
    # Python brings pip, setuptools and wheel with it (the official 3.11 image as Debian's): not ours to judge.
    base_python = ["env", "PATH=/usr/local/bin:/usr/bin:/bin", "python3"]  # /usr/local/bin: the official base
    for python, ignored in ((["/opt/dragonfly/bin/python"], ()), (base_python, ("wheel",))):
        modules = [m for m in NOT_IN_IMAGE_MODULES if m not in ignored]
        found = node.run_in_image([*python, "-c", _FIND, *modules])
        assert found.returncode == 0 and found.stdout.strip() == "[]", (python, found)


def test_entry_points_run_and_the_stdlib_operator_module_is_not_shadowed(node: Node) -> None:
    for argv in (["supernode", "--help"], ["dfget", "--version"], ["dragonfly-operator", "--help"]):
        done = node.run_in_image(argv)
        assert done.returncode == 0, f"{argv}: {done.returncode}\n{done.stdout[-2000:]}{done.stderr[-2000:]}"
    where = node.run_in_image(["python", "-c", "import operator, dfoperator; print(operator.__file__); "
                               "print(dfoperator.__file__)"])
    assert where.returncode == 0, where.stderr
    stdlib, ours = (Path(p) for p in where.stdout.split())
    assert "site-packages" not in stdlib.parts, f"`import operator` finds {stdlib}, not the standard library's"
    assert ours.parent.name == "dfoperator" and "site-packages" in ours.parts
