"""Registered peers, as plain records with the listing rules of the REST API.

Every dfget registration creates a new peer (ID ``{hostName}-{IP}-{unixNanos}``), and the supernode
registers itself at start-up, with the download port as its port.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from dfwire.ids import peer_id as make_peer_id

from .errors import invalid, not_found
from .models import PeerInfo, SortDirection

SORT_KEYS = {"id": "ID", "ip": "IP", "created": "created", "hostname": "hostName", "port": "port",
             "version": "version"}


@dataclass(eq=False)
class Peer:
    id: str
    ip: str
    host_name: str
    port: int
    version: str = ""
    created: datetime = field(default_factory=lambda: datetime.now(UTC))
    service_down_time: float | None = None

    def info(self) -> PeerInfo:
        return PeerInfo(id=self.id, ip=self.ip, created=self.created, host_name=self.host_name, port=self.port,
                        version=self.version)

    def sort_value(self, key: str) -> str | int | datetime:
        values: dict[str, str | int | datetime] = {
            "ID": self.id, "IP": self.ip, "created": self.created, "hostName": self.host_name,
            "port": self.port, "version": self.version,
        }
        return values[key]


class PeerRegistry:
    def __init__(self) -> None:
        self._peers: dict[str, Peer] = {}
        self._last_nanos = 0

    def register(self, *, ip: str, host_name: str, port: int, version: str = "") -> Peer:
        if not ip:
            raise invalid("peer IP")
        nanos = max(time.time_ns(), self._last_nanos + 1)
        self._last_nanos = nanos
        peer = Peer(id=make_peer_id(host_name, ip, nanos), ip=ip, host_name=host_name, port=port, version=version)
        self._peers[peer.id] = peer
        return peer

    def get(self, peer_id: str) -> Peer:
        peer = self._peers.get(peer_id)
        if peer is None:
            raise not_found(f"peer {peer_id}")
        return peer

    def find(self, peer_id: str) -> Peer | None:
        return self._peers.get(peer_id)

    def remove(self, peer_id: str) -> Peer:
        peer = self._peers.pop(peer_id, None)
        if peer is None:
            raise not_found(f"peer {peer_id}")
        return peer

    def __len__(self) -> int:
        return len(self._peers)

    def all(self) -> list[Peer]:
        return list(self._peers.values())

    def list(self, *, page_num: int = 0, page_size: int = 0, sort_keys: Sequence[str] = (),
             direction: SortDirection = SortDirection.ASC) -> list[Peer]:
        """Sorted by the given keys in order (ties by creation time), then the page is cut out.

        ``page_size`` 0 means everything; a page past the end is empty.
        """
        keys: list[str] = []
        for key in sort_keys:
            canonical = SORT_KEYS.get(key.lower())
            if canonical is None:
                raise invalid(f"unknown sortKey {key!r}: use one of {', '.join(SORT_KEYS.values())}")
            keys.append(canonical)
        keys.append("created")
        peers = sorted(self._peers.values(), key=lambda p: tuple(p.sort_value(k) for k in keys),
                       reverse=direction == SortDirection.DESC)
        if page_size == 0:
            return peers if page_num == 0 else []
        return peers[page_num * page_size:(page_num + 1) * page_size]
