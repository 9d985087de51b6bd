"""Which supernode serves a task: ``--node host[:port][=weight]`` and consistent hashing.

Several supernodes share the load by task: every dfget hashes the task ID onto the same ring of
nodes, so all peers of one task meet on one supernode (one CDN fetch, one swarm) while different
tasks spread over the nodes in proportion to their weights. Walking the ring past the first node
gives the failover order: when a node fails, its tasks move to the next node on the ring, the same
one for every peer, and no other task moves.
"""

from __future__ import annotations

import bisect
import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from .protocol import DEFAULT_SUPERNODE_PORT

#: Ring points per unit of weight: enough for an even spread over a handful of nodes.
POINTS_PER_WEIGHT = 160
MAX_WEIGHT = 100


@dataclass(frozen=True)
class Node:
    host: str
    port: int = DEFAULT_SUPERNODE_PORT
    weight: int = 1

    @property
    def address(self) -> str:
        """``host:port``: how dfget names a supernode to its uploader (``superNode``) and in messages."""
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def __str__(self) -> str:
        return self.address


def parse_node(text: str) -> Node:
    """``host``, ``host:port`` or either with ``=weight``; ``ValueError`` with a readable message."""
    spec = text.strip()
    address, sep, weight_text = spec.partition("=")
    weight = 1
    if sep:
        if not weight_text.isdigit() or not 1 <= int(weight_text) <= MAX_WEIGHT:
            raise ValueError(f"invalid node {text!r}: weight must be an integer from 1 to {MAX_WEIGHT}")
        weight = int(weight_text)
    host, colon, port_text = address.partition(":")
    if not host or any(c.isspace() or c in "/?#@[]" for c in host):
        raise ValueError(f"invalid node {text!r}: expected host[:port][=weight]")
    port = DEFAULT_SUPERNODE_PORT
    if colon:
        if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
            raise ValueError(f"invalid node {text!r}: port must be a number from 1 to 65535")
        port = int(port_text)
    return Node(host, port, weight)


def parse_nodes(values: Iterable[str]) -> tuple[Node, ...]:
    """Every ``--node`` value, each possibly comma-separated as Go's string slices are; first wins on repeats."""
    nodes: dict[str, Node] = {}
    for value in values:
        for part in value.split(","):
            if part.strip():
                node = parse_node(part)
                nodes.setdefault(node.address, node)
    return tuple(nodes.values())


def _point(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big")


class Locator:
    """A consistent-hash ring over the supernodes; :meth:`order` is the failover order for one key."""

    def __init__(self, nodes: Sequence[Node]) -> None:
        self.nodes = tuple(nodes)
        ring = sorted(
            (_point(f"{node.address}#{i}"), index)
            for index, node in enumerate(self.nodes)
            for i in range(node.weight * POINTS_PER_WEIGHT)
        )
        self._points = [point for point, _ in ring]
        self._owners = [index for _, index in ring]

    def order(self, key: str) -> list[Node]:
        """Every node once: the owner of ``key`` first, then the next distinct nodes clockwise."""
        if not self.nodes:
            return []
        start = bisect.bisect(self._points, _point(key))
        seen: list[int] = []
        for step in range(len(self._owners)):
            owner = self._owners[(start + step) % len(self._owners)]
            if owner not in seen:
                seen.append(owner)
                if len(seen) == len(self.nodes):
                    break
        return [self.nodes[index] for index in seen]
