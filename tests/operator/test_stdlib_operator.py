"""The repository folder is ``operator/``, but ``import operator`` must always be the standard library's:
kopf, pydantic, asyncio and much of the stdlib import it, and a shadowing package would break them all."""

from __future__ import annotations

import importlib
import os
import pkgutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import dfoperator

REPO_ROOT = Path(__file__).resolve().parents[2]
STDLIB = Path(sysconfig.get_paths()["stdlib"]).resolve()


def test_the_operator_folder_is_not_a_package() -> None:
    assert (REPO_ROOT / "operator" / "dfoperator" / "__init__.py").is_file()
    assert not (REPO_ROOT / "operator" / "__init__.py").exists()


def test_importing_our_package_leaves_operator_the_stdlib_module() -> None:
    # Every module but the two whose import runs something: __main__ (the CLI) and registered (which
    # fills kopf's default registry; the fresh-interpreter test below imports it).
    for module in pkgutil.walk_packages(dfoperator.__path__, "dfoperator."):
        if module.name not in ("dfoperator.__main__", "dfoperator.registered"):
            importlib.import_module(module.name)

    import operator

    assert operator.__file__ is not None
    assert Path(operator.__file__).resolve().parent == STDLIB
    assert operator.itemgetter(1)(("a", "b")) == "b"
    assert Path(dfoperator.__file__ or "").resolve().parent == REPO_ROOT / "operator" / "dfoperator"


def test_a_fresh_interpreter_in_the_repository_still_gets_the_stdlib_module() -> None:
    """From the repository root (where ``operator/`` is right there on ``sys.path``), as kopf run would."""
    code = ("import dfoperator.registered, operator, kopf, sys; "
            "assert operator.itemgetter; print(operator.__file__)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "operator")]))
    env.pop("KUBECONFIG", None)
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert Path(done.stdout.strip()).resolve().parent == STDLIB
