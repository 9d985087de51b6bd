"""``dragonfly-operator`` (and ``python -m dfoperator``): ``kopf run --standalone`` on our handlers.

Our own options become ``DFOPERATOR_*`` environment variables (so every setting has one source,
:class:`~dfoperator.config.OperatorConfig`); anything else is passed to ``kopf run`` as is, e.g.
``-n NAMESPACE`` (the default is every namespace, ``-A``), ``--liveness URL`` (the default serves
``/healthz`` on port 8080), ``--verbose``, ``--log-format json``.

``--standalone`` is always given: one operator replica, no kopf peering resources in the cluster.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Sequence

DEFAULT_LIVENESS = "http://0.0.0.0:8080/healthz"
HANDLERS_MODULE = "dfoperator.registered"

_OPTIONS: tuple[tuple[str, str, str, str], ...] = (
    ("--supernodes", "SUPERNODES", "URLS", "comma-separated supernode base URLs; when set, no Service is looked up"),
    ("--supernode-namespace", "SUPERNODE_NAMESPACE", "NS", "namespace of the supernode Service (default: our own)"),
    ("--supernode-service", "SUPERNODE_SERVICE", "NAME", "supernode Service name (default dragonfly-supernode)"),
    ("--supernode-port", "SUPERNODE_PORT", "PORT", "supernode API port of the Service, name or number (default api)"),
    ("--supernode-scheme", "SUPERNODE_SCHEME", "SCHEME", "http or https (default http)"),
    ("--allow-spec-supernodes", "ALLOW_SPEC_SUPERNODES", "BOOL", "honour spec.supernodes (default true)"),
    ("--retry-attempts", "RETRY_ATTEMPTS", "N", "attempts per supernode request before giving up (default 5)"),
    ("--retry-backoff", "RETRY_BACKOFF", "SECONDS", "delay before the first retry, doubled each time (default 2)"),
    ("--retry-backoff-max", "RETRY_BACKOFF_MAX", "SECONDS", "longest delay between two retries (default 120)"),
    ("--poll-interval", "POLL_INTERVAL", "SECONDS", "time between two polls of a running preheat (default 5)"),
    ("--request-timeout", "REQUEST_TIMEOUT", "SECONDS", "time per supernode or Kubernetes request (default 10)"),
    ("--metrics-host", "METRICS_HOST", "HOST", "address of the /metrics server (default 0.0.0.0)"),
    ("--metrics-port", "METRICS_PORT", "PORT", "port of /metrics; 0 picks one, -1 turns it off (default 9090)"),
)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dragonfly-operator",
        description="Turns Preheat resources (preheats.dragonfly.d7y.io) into preheats on every Dragonfly "
                    "supernode. Each option can also be set as DFOPERATOR_<NAME> in the environment; "
                    "other options are passed to `kopf run` (e.g. -n NAMESPACE, --liveness URL, --verbose).",
        argument_default=argparse.SUPPRESS, allow_abbrev=False)
    for flag, env, metavar, text in _OPTIONS:
        parser.add_argument(flag, dest=env, metavar=metavar, help=text)
    return parser


def kopf_arguments(rest: Sequence[str]) -> list[str]:
    """``kopf run`` arguments: ours first, then the caller's; defaults only where the caller gave none."""
    args = ["run", "--standalone", "-m", HANDLERS_MODULE]
    given = {arg.split("=", 1)[0] for arg in rest}
    if not given & {"-n", "--namespace", "-A", "--all-namespaces"}:
        args.append("--all-namespaces")
    if not given & {"-L", "--liveness"}:
        args.append(f"--liveness={DEFAULT_LIVENESS}")
    return [*args, *rest]


def main(argv: Sequence[str] | None = None) -> int:
    options, rest = _parser().parse_known_args(argv)
    for env, value in vars(options).items():
        os.environ[f"DFOPERATOR_{env}"] = str(value)

    from kopf.cli import main as kopf_main  # imported late: kopf configures logging on import of its CLI

    try:
        kopf_main.main(args=kopf_arguments(rest), prog_name="dragonfly-operator", standalone_mode=True)
    except SystemExit as exc:
        return exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    return 0
