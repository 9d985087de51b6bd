"""Registering a download with the supernodes, in failover order (spec §3.3).

The first node that accepts wins. A node that cannot be reached or answers an error makes dfget try
the next one, except for the two answers that are about the *source* rather than the node: 607 (the
URL is unreachable: no other supernode will do better, go to the source) and 608 (the source needs
authentication: fail, since going to the source would fail too).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import ValidationError

from .errors import RegisterError
from .locator import Node
from .protocol import Code
from .supernode_api import ApiError, RegisterData, SupernodeApi, register_body

log = logging.getLogger(__name__)

WAIT_AUTH_RETRIES = 3
WAIT_AUTH_SLEEP = 1.0


@dataclass(frozen=True)
class RegisterRequest:
    """What dfget tells every supernode it registers with; ``super_node_ip`` is filled in per node."""

    raw_url: str
    task_url: str
    cid: str
    ip: str
    host_name: str
    port: int
    path: str
    md5: str
    identifier: str
    call_system: str
    headers: tuple[str, ...]
    pattern: str
    root_cas: tuple[str, ...] = ()  # base64 PEM CAs the supernode verifies an https source with
    dfdaemon: bool = False  # the download is for a container runtime, through the node's registry mirror
    download_limit: int = 0  # bytes/s this download is limited to (0: none)
    upload_limit: int = 0  # bytes/s the node's uploader is limited to (0: none, or no uploader)


@dataclass(frozen=True)
class Registration:
    node: Node
    task_id: str
    file_length: int  # the source's length, -1 when unknown
    piece_size: int  # wrapped
    cdn_source: str


async def register(api: SupernodeApi, nodes: Sequence[Node], request: RegisterRequest) -> Registration:
    """Register with the first node of ``nodes`` that accepts; ``RegisterError`` says why none did."""
    failures: list[str] = []
    for node in nodes:
        body = register_body(
            super_node_ip=node.host, raw_url=request.raw_url, task_url=request.task_url, cid=request.cid,
            ip=request.ip, host_name=request.host_name, port=request.port, path=request.path, md5=request.md5,
            identifier=request.identifier, call_system=request.call_system, headers=request.headers,
            pattern=request.pattern, root_cas=request.root_cas, dfdaemon=request.dfdaemon,
            download_limit=request.download_limit, upload_limit=request.upload_limit,
        )
        for attempt in range(WAIT_AUTH_RETRIES):
            try:
                answer = await api.register(node, body)
            except ApiError as exc:
                failures.append(str(exc))
                log.warning("register failed: %s", exc)
                break
            if answer.code == Code.SUCCESS:
                try:
                    data = RegisterData.model_validate(answer.data)
                except ValidationError as exc:
                    failures.append(f"{node}: malformed register answer: {exc.errors(include_url=False)}")
                    break
                log.info("registered with %s: task %s, length %d, piece size %d, cdn source %s", node,
                         data.task_id, data.file_length, data.piece_size, data.cdn_source)
                return Registration(node, data.task_id, data.file_length, data.piece_size, data.cdn_source)
            if answer.code == Code.NEED_AUTH:
                raise RegisterError(f"{node}: the source needs authentication ({answer.describe()})",
                                    backsource_allowed=False)
            if answer.code == Code.URL_NOT_REACHABLE:
                raise RegisterError(f"{node}: the source URL is not reachable ({answer.describe()})")
            if answer.code == Code.WAIT_AUTH and attempt + 1 < WAIT_AUTH_RETRIES:
                await asyncio.sleep(WAIT_AUTH_SLEEP)
                continue
            failures.append(f"{node}: register answered {answer.describe()}")
            break
    if not failures:
        raise RegisterError("no supernode left to try")
    raise RegisterError("no supernode accepted the download: " + "; ".join(failures))
