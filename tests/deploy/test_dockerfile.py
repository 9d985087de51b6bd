"""The Dockerfile and its dependency lock, checked by reading them (tests/image builds the image and runs it;
these checks need no build tools): a pinned python:3.11 slim base, a non-root user, a HEALTHCHECK on
/_ping, dependencies only from the hashed lock, and a lock that covers every third-party import of our
packages within pyproject's version ranges."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

from .conftest import CHART, ROOT

DOCKERFILE = ROOT / "Dockerfile"
LOCK = ROOT / "requirements.lock"
PYPROJECT = ROOT / "pyproject.toml"
#: Extras installed into the image (when pyproject.toml defines them).
IMAGE_EXTRAS = ("perf", "operator")
#: Our packages: their directory, and the console script the chart runs from each.
PACKAGES = {"dfwire": ROOT / "dfwire", "supernode": ROOT / "supernode", "dfget": ROOT / "dfget"}
CHART_COMMANDS = ("supernode", "dfget", "dragonfly-operator")


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@pytest.fixture(scope="module")
def dockerfile() -> Any:
    parse = pytest.importorskip("dockerfile_parse", reason="dockerfile-parse is not installed")
    return parse.DockerfileParser(str(DOCKERFILE))


def _stages(dockerfile: Any) -> list[list[dict[str, Any]]]:
    stages: list[list[dict[str, Any]]] = []
    for item in dockerfile.structure:
        if item["instruction"] == "FROM":
            stages.append([])
        if stages:
            stages[-1].append(item)
    return stages


def _arg_defaults(dockerfile: Any) -> dict[str, str]:
    defaults = {}
    for item in dockerfile.structure:
        if item["instruction"] == "FROM":
            break
        if item["instruction"] == "ARG" and "=" in item["value"]:
            key, value = item["value"].split("=", 1)
            defaults[key.strip()] = value.strip().strip('"')
    return defaults


def _base_images(dockerfile: Any) -> list[str]:
    args = _arg_defaults(dockerfile)
    images = []
    for item in dockerfile.structure:
        if item["instruction"] == "FROM":
            image = item["value"].split()[0]
            images.append(re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), image))
    return images


def _pip_installs(dockerfile: Any) -> list[list[str]]:
    """Argument lists of every ``pip install`` in a RUN (commands split on && and ;)."""
    out = []
    for item in dockerfile.structure:
        if item["instruction"] != "RUN":
            continue
        for command in re.split(r"&&|;", item["value"]):
            words = shlex.split(command)
            for i, word in enumerate(words[:-1]):
                if (word == "pip" or word.endswith("/pip")) and words[i + 1] == "install":
                    out.append(words[i + 2:])
    return out


# --------------------------------------------------------------------------------------------- Dockerfile


def test_base_image_is_python_311_slim_pinned(dockerfile: Any) -> None:
    images = _base_images(dockerfile)
    assert images and len(set(images)) == 1, f"every stage on the same base: {images}"
    image = images[0]
    assert re.fullmatch(r"(docker\.io/library/)?python:3\.11\.\d+-slim(-\w+)?(@sha256:[0-9a-f]{64})?", image), (
        f"{image}: pin python:3.11.<patch>-slim[-<debian>] (and a digest where possible)")


def test_runtime_stage_runs_as_the_charts_non_root_user(dockerfile: Any) -> None:
    final = _stages(dockerfile)[-1]
    users = [i["value"].strip() for i in final if i["instruction"] == "USER"]
    assert users, "the runtime stage must switch to a non-root USER"
    uid, _, gid = users[-1].partition(":")
    assert uid.isdigit() and int(uid) != 0, f"USER {users[-1]}: numeric, non-zero (runAsNonRoot checks it)"
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for component in ("supernode", "operator", "dfget"):
        security = values[component]["podSecurityContext"]
        assert security["runAsUser"] == int(uid), component
        assert not gid or security["runAsGroup"] == int(gid), component
    last_user = max(i["startline"] for i in final if i["instruction"] == "USER")
    late = [i for i in final if i["instruction"] == "RUN" and i["startline"] > last_user]
    assert not late, "nothing runs as root after USER... and nothing should run at all after it"


def test_healthcheck_pings_the_supernode(dockerfile: Any) -> None:
    final = _stages(dockerfile)[-1]
    (check,) = [i["value"] for i in final if i["instruction"] == "HEALTHCHECK"]
    assert check.strip().upper() != "NONE"
    assert "/_ping" in check and "8002" in check
    for option in ("--interval=", "--timeout=", "--retries="):
        assert option in check
    assert re.search(r"CMD\s*\[", check), "exec form: no shell in the health check"


def test_entry_point_and_ports(dockerfile: Any) -> None:
    final = _stages(dockerfile)[-1]
    (cmd,) = [i["value"] for i in final if i["instruction"] == "CMD"]
    assert cmd.replace(" ", "") == '["supernode"]'
    assert not [i for i in final if i["instruction"] == "ENTRYPOINT"], "no ENTRYPOINT: `docker run IMAGE dfget ...`"
    exposed = {p for i in final if i["instruction"] == "EXPOSE" for p in i["value"].split()}
    assert {"8002", "8001"} <= exposed
    env = dockerfile.envs
    assert env.get("SUPERNODE_HOME_DIR") == "/var/lib/dragonfly/supernode"
    assert "/opt/dragonfly/bin" in env.get("PATH", "")


def test_dependencies_come_only_from_the_hashed_lock(dockerfile: Any) -> None:
    installs = _pip_installs(dockerfile)
    assert installs
    locked = [args for args in installs if "--require-hashes" in args]
    assert locked, "the lock must be installed with --require-hashes"
    for args in locked:
        assert "-r" in args and args[args.index("-r") + 1] == "requirements.lock"
        assert "--only-binary=:all:" in args, "wheels only: the slim image has no compiler"
    for args in installs:
        for arg in args:
            if arg.startswith("-") or arg == "requirements.lock":
                continue
            pinned = re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9.+!\-]*", arg)
            wheel = arg.endswith(".whl") and "--no-index" in args and "--no-deps" in args
            assert pinned or wheel, f"pip install {arg!r}: neither pinned nor our own wheel without deps"


def test_build_context_is_an_allow_list() -> None:
    lines = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
             if line.strip() and not line.startswith("#")]
    assert lines[0] == "*", "ignore everything, then allow what the build needs"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    pyproject = tomllib.loads(PYPROJECT.read_text())
    # every folder the wheel takes a package from: a package left out builds a wheel without it
    wheel_dirs = {Path(p).parts[0] for p in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]}
    needed = {"pyproject.toml", "requirements.lock", pyproject["project"]["readme"], *wheel_dirs}
    assert needed <= allowed, f"not in the build context: {needed - allowed}"


# --------------------------------------------------------------------------------------------- the lock


def _lock() -> dict[str, tuple[str, list[str]]]:
    """Normalized name -> (version, hashes) of every requirement in requirements.lock."""
    text = LOCK.read_text()
    entries: dict[str, tuple[str, list[str]]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", "\n" + text):
        block = "\n".join(line for line in block.splitlines() if not line.lstrip().startswith("#"))
        if not block.strip():
            continue
        head = block.split("\\")[0].strip()
        match = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9_.\-]*)(\[[^\]]*\])?\s*==\s*([^\s;]+)\s*(;.*)?", head)
        assert match, f"not an exact pin: {head!r}"
        hashes = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
        entries[_normalize(match.group(1))] = (match.group(3), hashes)
    return entries


def test_lock_pins_every_package_with_hashes() -> None:
    lock = _lock()
    assert lock
    unhashed = [name for name, (_, hashes) in lock.items() if not hashes]
    assert not unhashed, f"no --hash for {unhashed}"


def _runtime_requirements() -> list[str]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    requirements = list(project.get("dependencies", []))
    for extra in IMAGE_EXTRAS:
        requirements += project.get("optional-dependencies", {}).get(extra, [])
    return requirements


def test_lock_satisfies_pyprojects_runtime_dependencies() -> None:
    packaging = pytest.importorskip("packaging.requirements")
    lock = _lock()
    problems = []
    for text in _runtime_requirements():
        req = packaging.Requirement(text)
        name = _normalize(req.name)
        if name not in lock:
            problems.append(f"{req}: not in requirements.lock")
        elif not req.specifier.contains(lock[name][0], prereleases=True):
            problems.append(f"{req}: locked at {lock[name][0]}")
    assert not problems, "regenerate requirements.lock (command in its header): " + "; ".join(problems)


def _third_party_imports(directory: Path, own: set[str]) -> set[str]:
    modules: set[str] = set()
    for path in directory.rglob("*.py"):
        if "tests" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                modules.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                modules.add(node.module.split(".")[0])
    return {m for m in modules if m not in sys.stdlib_module_names and m not in own}


def test_lock_provides_every_third_party_import_of_our_packages() -> None:
    """What dfwire/, supernode/, dfget/ and the operator import must be installed in the image."""
    directories = [*PACKAGES.values()]
    operator = ROOT / "operator"
    own = set(PACKAGES)
    if operator.is_dir():
        directories.append(operator)
        own |= {p.name for p in operator.iterdir() if (p / "__init__.py").is_file()}
    modules = set().union(*(_third_party_imports(d, own) for d in directories))
    providers = importlib.metadata.packages_distributions()
    lock = _lock()
    missing = {}
    for module in sorted(modules):
        dists = {_normalize(d) for d in providers.get(module, [module])}
        if not dists & set(lock):
            missing[module] = sorted(dists)
    assert not missing, f"imported but not in requirements.lock (module: distributions): {missing}"


# --------------------------------------------------------------------------------------------- entry points


@pytest.mark.parametrize("command", CHART_COMMANDS)
def test_chart_commands_are_console_scripts_of_the_wheel(command: str) -> None:
    """The chart runs `supernode`, `dfget server` and `dragonfly-operator` from the image's PATH: each must be
    a [project.scripts] entry whose package the wheel contains."""
    pyproject = tomllib.loads(PYPROJECT.read_text())
    scripts = pyproject["project"].get("scripts", {})
    if command not in scripts:
        pytest.xfail(f"pyproject.toml [project.scripts] has no {command!r} yet (needed by the chart and image)")
    package = scripts[command].split(":")[0].split(".")[0]
    wheel = pyproject.get("tool", {}).get("hatch", {}).get("build", {}).get("targets", {}).get("wheel", {})
    shipped = {Path(p).name for p in wheel.get("packages", [])}
    if package not in shipped:
        pytest.xfail(f"[tool.hatch.build.targets.wheel] packages lacks {package!r} (the {command} script's)")
