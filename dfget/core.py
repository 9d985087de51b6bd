"""One dfget run from start to end: through the supernodes when possible, from the source otherwise.

The order of a run is dfget 1.0.6's (spec §3.1-§3.8): prepare the names, start or reuse the node's
uploader, register with the supernode that owns the task on the hash ring, run the pull loop,
publish the verified file, tell the uploader and report ``/task/metrics``. Any failure that the
source can rescue falls back to it with the reason printed, unless ``--notbs``; the reason is what
the metrics report carries (+1000 when the source was not tried).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

from dfwire.ids import convert_headers, filter_url_param, task_id

from .backsource import download_from_source
from .config import DownloadConfig
from .downloader import P2PDownloader
from .errors import DfgetError, DownloadTimeout, NotBackSourced, P2PError
from .launcher import LocalUploader, UploaderError, ensure_uploader
from .locator import Locator, Node
from .piece_fetch import READ_BUFFER, PieceFetcher
from .progress import Progress, Source
from .protocol import NOT_BACKSOURCED, BackSourceReason, make_cid, make_sign, peer_path, task_file_name
from .ratelimit import TokenBucket
from .register import RegisterRequest, Registration, register
from .storage import PieceFile, PieceWatcher, prepare_output
from .supernode_api import ApiError, SupernodeApi, metrics_body

log = logging.getLogger(__name__)

UNKNOWN_LENGTH_TIMEOUT = 300.0
CONNECT_PROBE_TIMEOUT = 1.0


@dataclass
class RunResult:
    output: str
    length: int
    md5: str
    seconds: float
    counts: dict[Source, int]
    supernode: str = ""
    piece_failures: int = 0
    migrations: int = 0
    backsource: str = ""  # why the file came from the source ("" when it did not)


@dataclass
class _Registered:
    """What the metrics report needs once a supernode accepted the run (updated by migrations)."""

    node: Node
    task_id: str
    file_length: int


@dataclass
class _Stats:
    piece_failures: int = 0
    migrations: int = 0
    registered: _Registered | None = None
    backsource: BackSourceReason = BackSourceReason.NONE  # set once the run goes to the source
    ip: str = ""
    cid: str = ""
    port: int = 0


def default_timeout(file_length: int, min_rate: int) -> float:
    """Go's ``calculateTimeout``: the time the file takes at ``--minrate`` plus 10 s; 5 min when unknown."""
    return file_length / min_rate + 10 if file_length > 0 else UNKNOWN_LENGTH_TIMEOUT


async def detect_local_ip(nodes: Sequence[Node]) -> str:
    """The address this host uses to reach a supernode (dfget's default for ``--ip``)."""
    for node in nodes:
        try:
            _, writer = await asyncio.wait_for(asyncio.open_connection(node.host, node.port), CONNECT_PROBE_TIMEOUT)
        except (OSError, TimeoutError):
            continue
        address = writer.get_extra_info("sockname")
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        if address and isinstance(address[0], str) and "." in address[0]:
            return address[0]
    return "127.0.0.1"


class DfgetRun:
    """One download; :meth:`execute` returns a :class:`RunResult` or raises ``DfgetError``."""

    def __init__(self, config: DownloadConfig, progress: Progress, sign: str | None = None,
                 watcher: PieceWatcher | None = None) -> None:
        self.config = config
        self.progress = progress
        self.watcher = watcher  # told about the pieces of a download through the supernodes
        # A run the node's daemon does for a caller is signed with the caller's pid: the sign makes the
        # cid and the task file name, which concurrent runs in one daemon must not share.
        self.sign = sign or make_sign()
        self.stats = _Stats()
        self._started = time.monotonic()

    async def execute(self) -> RunResult:
        config = self.config
        task_url = filter_url_param(config.url, config.filters)
        key = task_id(task_url, md5=config.md5, identifier=config.identifier, headers=convert_headers(config.headers))
        nodes = Locator(config.nodes).order(key)
        limiter = TokenBucket(config.local_limit)
        prepare_output(config.output)  # a bad output path is not something the source could fix
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector, auto_decompress=False, read_bufsize=READ_BUFFER,
                                         skip_auto_headers=("Accept-Encoding",)) as session:
            api = SupernodeApi(session)
            try:
                result, reason = await self._download(session, api, nodes, task_url, limiter)
            except DfgetError as exc:
                # Why the source was tried (it failed too), else why it was not: +1000.
                failed = self.stats.backsource or exc.reason + NOT_BACKSOURCED
                await self._report_metrics(api, success=False, reason=failed)
                raise
            await self._report_metrics(api, success=True, reason=reason)
            return result

    async def _download(self, session: aiohttp.ClientSession, api: SupernodeApi, nodes: list[Node], task_url: str,
                        limiter: TokenBucket) -> tuple[RunResult, BackSourceReason]:
        """Through the supernodes if possible, else from the source; the result and the back-source reason."""
        config = self.config
        if config.pattern == "source":
            reason, why = BackSourceReason.USER_SPECIFIED, "--pattern source"
        elif not nodes:
            reason, why = BackSourceReason.NODE_EMPTY, "no supernode given"
        else:
            try:
                return await self._through_supernodes(session, api, nodes, task_url, limiter), BackSourceReason.NONE
            except DfgetError as exc:
                if not exc.backsource_allowed:
                    raise
                if config.notbs:
                    raise NotBackSourced(exc) from exc
                reason, why = exc.reason, str(exc)
        self.progress.notice(f"downloading from the source ({why}; back-source reason {int(reason)})")
        self.stats.backsource = reason
        return await self._from_source(session, limiter, reason, why), reason

    # ------------------------------------------------------------------ through the supernodes

    async def _through_supernodes(self, session: aiohttp.ClientSession, api: SupernodeApi, nodes: list[Node],
                                  task_url: str, limiter: TokenBucket) -> RunResult:
        config = self.config
        ip = config.ip or await detect_local_ip(nodes)
        name = task_file_name(config.output, self.sign)
        cid = make_cid(ip, self.sign)
        self.stats.ip, self.stats.cid = ip, cid
        uploader: LocalUploader | None = None
        if config.pattern == "p2p":
            try:
                uploader = await ensure_uploader(session, config, ip, name)
            except UploaderError as exc:
                self.progress.notice(f"the uploader is not available ({exc}); downloading without sharing")
        self.stats.port = uploader.port if uploader else 0
        request = RegisterRequest(
            raw_url=config.url, task_url=task_url, cid=cid, ip=ip, host_name=socket.gethostname(),
            port=self.stats.port, path=peer_path(name), md5=config.md5, identifier=config.identifier,
            call_system=config.call_system, headers=config.headers, pattern="p2p" if uploader else "cdn",
            root_cas=config.root_cas, dfdaemon=config.dfdaemon, download_limit=config.local_limit,
            upload_limit=config.total_limit if uploader else 0)

        async def register_again(excluded: set[Node]) -> Registration:
            registration = await register(api, [node for node in nodes if node not in excluded], request)
            self._registered(registration)
            return registration

        target = PieceFile(config.output, self.sign, config.data_dir / f"{name}.service" if uploader else None,
                           self.watcher)
        published = False
        deadline = asyncio.timeout(config.timeout or None)
        downloader: P2PDownloader | None = None
        try:
            async with deadline:
                registration = await register_again(set())
                if registration.cdn_source == "source":
                    raise P2PError(f"{registration.node} runs in source-CDN mode (cdnSource=source), "
                                   "which this dfget does not support")
                if not config.timeout:
                    deadline.reschedule(asyncio.get_running_loop().time()
                                        + default_timeout(registration.file_length, config.min_rate))
                self.progress.restart(registration.file_length)
                fetcher = PieceFetcher(session, target, limiter, self.progress, min_rate=config.min_rate)
                downloader = P2PDownloader(api=api, registration=registration, registrar=register_again, cid=cid,
                                           target=target, fetcher=fetcher, progress=self.progress)
                result = await downloader.run()
                if not (config.md5 or result.md5):
                    log.warning("neither --md5 nor the supernode gives an MD5: the file is checked piece by piece only")
                md5 = await target.publish(result.length, config.md5 or result.md5)
                published = True
        except TimeoutError:
            if not deadline.expired():
                raise
            raise DownloadTimeout(f"the download through the supernodes did not finish within "
                                  f"{self._elapsed():.0f}s") from None
        finally:
            if downloader is not None:
                self.stats.piece_failures = downloader.piece_failures
                self.stats.migrations = downloader.migrations
            if published:
                target.close()
            else:
                target.discard()
        if uploader is not None:
            try:
                await uploader.finish(name=name, task_id=result.registration.task_id, cid=cid,
                                      super_node=result.registration.node.address)
            except UploaderError as exc:
                log.warning("the uploader was not told about the finished download: %s", exc)
        return RunResult(str(config.output), result.length, md5, self._elapsed(), dict(self.progress.counts),
                         result.registration.node.address, self.stats.piece_failures, self.stats.migrations)

    def _registered(self, registration: Registration) -> None:
        self.stats.registered = _Registered(registration.node, registration.task_id, registration.file_length)

    # ------------------------------------------------------------------ from the source

    async def _from_source(self, session: aiohttp.ClientSession, limiter: TokenBucket, reason: BackSourceReason,
                           why: str) -> RunResult:
        config = self.config
        deadline = asyncio.timeout(config.timeout or None)
        try:
            async with deadline:
                length, md5 = await download_from_source(
                    session, url=config.url, headers=config.headers, output=config.output, sign=self.sign,
                    md5=config.md5, limiter=limiter, progress=self.progress)
        except TimeoutError:
            if not deadline.expired():
                raise
            raise DownloadTimeout(f"the download from the source did not finish within {config.timeout:g}s") \
                from None
        return RunResult(str(config.output), length, md5, self._elapsed(), dict(self.progress.counts),
                         piece_failures=self.stats.piece_failures, migrations=self.stats.migrations,
                         backsource=f"{why} (reason {int(reason)})")

    # ------------------------------------------------------------------ reporting

    async def _report_metrics(self, api: SupernodeApi, *, success: bool, reason: int) -> None:
        """``POST /task/metrics`` to the supernode that has the task, once (dfget 1.0.6 sends it twice)."""
        registered = self.stats.registered
        if registered is None or self.config.pattern == "source":
            return
        body = metrics_body(ip=self.stats.ip, backsource_reason=reason, cid=self.stats.cid,
                            call_system=self.config.call_system,
                            duration=self._elapsed(), file_length=registered.file_length, port=self.stats.port,
                            success=success, task_id=registered.task_id)
        try:
            await api.report_metrics(registered.node, body)
        except ApiError as exc:
            log.warning("metrics report failed: %s", exc)

    def _elapsed(self) -> float:
        return time.monotonic() - self._started
