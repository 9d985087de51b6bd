"""Which of our packages may import which: the dependency arrows of the layout, checked on the source.

dfget is installed on every node and must not drag the server in with it, so the code both sides share
lives in ``dfwire``, which imports neither. The wheel must ship every package its packages import, or the
console scripts fail on an installed machine while the tests, run from the checkout, pass.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
OURS = {"dfwire", "supernode", "dfget", "dfoperator"}
# Who may import whom among our packages (besides itself).
ALLOWED = {"dfwire": set(), "dfget": {"dfwire"}, "supernode": {"dfwire"}, "dfoperator": set()}
SOURCES = {"dfwire": ROOT / "dfwire", "supernode": ROOT / "supernode", "dfget": ROOT / "dfget",
           "dfoperator": ROOT / "operator" / "dfoperator"}


def _our_imports(package_dir: Path) -> dict[str, set[str]]:
    """Our top-level packages each module of ``package_dir`` imports, absolute imports only."""
    found: dict[str, set[str]] = {}
    for path in sorted(package_dir.rglob("*.py")):
        names: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names.add(node.module.split(".")[0])
        found[str(path.relative_to(ROOT))] = names & OURS
    return found


@pytest.mark.parametrize("package", sorted(SOURCES))
def test_a_package_imports_only_the_packages_below_it(package: str) -> None:
    wrong = {module: sorted(names - ALLOWED[package] - {package})
             for module, names in _our_imports(SOURCES[package]).items() if names - ALLOWED[package] - {package}}
    assert not wrong, f"{package} may import only {sorted(ALLOWED[package])}: {wrong}"


def test_the_wheel_ships_every_package_its_packages_import() -> None:
    wheel = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["hatch"]["build"]["targets"]["wheel"]
    shipped = {Path(p).name for p in wheel["packages"]}
    assert shipped == OURS
    mypy = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert set(mypy["packages"]) == OURS, "mypy checks every package the wheel ships"


def test_the_handlers_never_import_the_composition_root() -> None:
    """``node.py`` builds ``api/``'s routes; ``api/`` reaching back for ``Supernode`` would be a cycle."""
    for path in sorted((ROOT / "supernode" / "api").rglob("*.py")):
        package = ".".join(path.relative_to(ROOT).parent.parts)
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets = {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]) if node.level else ""
                module = ".".join(filter(None, (base, node.module)))
                targets = {module, *(f"{module}.{alias.name}" for alias in node.names)}
            else:
                continue
            assert "supernode.node" not in targets, f"{path.relative_to(ROOT)} imports supernode.node"
