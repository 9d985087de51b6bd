"""What our components export, as Prometheus sample names, and the metric names a PromQL expression uses.

The dashboard and the alert rules may only query series that exist:

* supernode and dfget: the families registered by :class:`supernode.metrics.Metrics` (one instance,
  collected), expanded to the sample names the exposition has (``_total`` for counters, ``_bucket``,
  ``_sum`` and ``_count`` for histograms, ...);
* operator: the metric definitions in the operator package's ``metrics.py`` (``prometheus_client``
  constructor calls, read with :mod:`ast` so that the package need not be importable here) when that
  module exists, else the contract the operator is written against (:data:`OPERATOR_CONTRACT`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

#: The operator's metrics as agreed (issue 6): full family name -> type.
OPERATOR_CONTRACT: dict[str, str] = {
    "dragonfly_operator_preheats": "gauge",
    "dragonfly_operator_reconcile": "counter",  # dragonfly_operator_reconcile_total{handler,result}
    "dragonfly_operator_reconcile_duration_seconds": "histogram",
    "dragonfly_operator_supernode_request_errors": "counter",  # ..._total{supernode,operation}
}

_SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
    "stateset": ("",),
    "enum": ("",),
    "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
    "unknown": ("",),
}


def sample_names(families: dict[str, str]) -> set[str]:
    """Family name -> type, expanded to every sample name the text exposition can carry."""
    return {name + suffix for name, kind in families.items() for suffix in _SUFFIXES[kind]}


def supernode_families() -> dict[str, str]:
    from supernode.metrics import Metrics

    return {family.name: family.type for family in Metrics("test").registry.collect()}


_CONSTRUCTORS = {"Counter": "counter", "Gauge": "gauge", "Histogram": "histogram", "Summary": "summary",
                 "Info": "info", "Enum": "stateset"}


def operator_metrics_module() -> Path | None:
    """The operator package's metrics module, wherever under operator/ it is."""
    base = ROOT / "operator"
    if not base.is_dir():
        return None
    found = sorted(p for p in base.rglob("metrics.py") if "tests" not in p.parts)
    return found[0] if found else None


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def families_from_source(source: str) -> dict[str, str]:
    """prometheus_client constructor calls with literal names: ``Counter("x_total", ..., namespace=...)``."""
    families: dict[str, str] = {}
    constants: dict[str, str] = {}
    tree = ast.parse(source)

    def text(node: ast.AST | None) -> str | None:
        if isinstance(node, ast.Name):
            return constants.get(node.id)
        return _const_str(node)

    # Names bound to strings anywhere (NAMESPACE = "dragonfly"; ns, sub = NAMESPACE, "operator"), resolved
    # until nothing changes; the first string a name gets wins (so the loop ends). Good enough for a module
    # that only defines metrics.
    pairs: list[tuple[ast.expr, ast.expr | None]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign):
            for target in node.targets:
                if isinstance(target, ast.Tuple) and isinstance(node.value, ast.Tuple):
                    pairs.extend(zip(target.elts, node.value.elts, strict=False))
                else:
                    pairs.append((target, node.value))
        elif isinstance(node, ast.AnnAssign):
            pairs.append((node.target, node.value))
    changed = True
    while changed:
        changed = False
        for target, value in pairs:
            resolved = text(value)
            if isinstance(target, ast.Name) and resolved is not None and target.id not in constants:
                constants[target.id] = resolved
                changed = True

    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        ctor = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        if ctor not in _CONSTRUCTORS:
            continue
        kwargs = {kw.arg: kw.value for kw in node.keywords if kw.arg}
        name = text(node.args[0]) if node.args else text(kwargs.get("name"))
        if not name:
            continue
        parts = [text(kwargs.get("namespace")) or "", text(kwargs.get("subsystem")) or "", name]
        full = "_".join(p for p in parts if p)
        kind = _CONSTRUCTORS[ctor]
        if kind == "counter":
            full = full.removesuffix("_total")
        families[full] = kind
    return families


def operator_families() -> tuple[dict[str, str], str]:
    """The operator's families and where they were read from (a path, or "contract")."""
    module = operator_metrics_module()
    if module is None:
        return dict(OPERATOR_CONTRACT), "contract"
    return families_from_source(module.read_text()), str(module.relative_to(ROOT))


def mirror_families() -> dict[str, str]:
    """The registry mirror's (``dfget proxy``) families, registered by :class:`dfget.mirror.metrics.MirrorMetrics`."""
    from dfget.mirror.metrics import MirrorMetrics

    return {family.name: family.type for family in MirrorMetrics().registry.collect()}


def exported_sample_names() -> set[str]:
    operator, _ = operator_families()
    return sample_names(supernode_families()) | sample_names(operator) | sample_names(mirror_families())


# ------------------------------------------------------------------------------------------- PromQL

_GRAFANA_INTERVALS = re.compile(r"\$__(rate_interval|interval|range)\b|\$\{__(rate_interval|interval|range)\}")


def grafana_to_promql(expr: str) -> str:
    """Grafana's interval variables as a literal duration; other variables only occur inside label-matcher
    strings (``namespace=~"$namespace"``), where they are plain text to the parser."""
    return _GRAFANA_INTERVALS.sub("5m", expr)


def metric_names(expr: str) -> set[str]:
    """Names of every vector selector in a PromQL expression (parsed, so a syntax error raises)."""
    import promql_parser

    names: set[str] = set()

    def visit(node: object) -> bool:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)
        return True

    promql_parser.walk(promql_parser.parse(grafana_to_promql(expr)), visit)
    return names


_LABEL_VALUES = re.compile(r"^label_values\((?P<selector>.+),\s*(?P<label>[a-zA-Z_][a-zA-Z0-9_]*)\)$")


def template_query_metric_names(query: str) -> set[str]:
    """Metric names in a Grafana Prometheus variable query such as ``label_values(metric{...}, label)``."""
    match = _LABEL_VALUES.match(query.strip())
    if match:
        return metric_names(match.group("selector"))
    return metric_names(query)
