"""Replay what Go dfget 1.0.6 sent to the Go supernode (shared/spec/transcripts) against ours.

The recordings are the ground truth of compatibility: each dfget request is sent again, byte for byte
except for what must be live (origin address, task IDs, the CDN port), and our answer must be one that
dfget handles the same way as the recorded one: same HTTP status class, same ResultInfo code, same
JSON keys, and the same values wherever they follow from the content (file lengths, piece MD5s, the
file MD5, the bytes of every CDN piece).

Timing is the one thing a replay cannot copy. A recorded 601 and 602 are both "carry on" to dfget and
depend on how far the CDN has got, so either is accepted, except that a client's first 601 (the CDN
has finished, the client holds nothing) must come within a few seconds, and a recorded 600 must be
reached; a 602 is retried for these, as dfget retries it.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from dfwire import ids, pieces
from tests.spec import SPEC_DIR
from tests.v1proto import (
    CODE_PEER_CONTINUE,
    CODE_PEER_FINISH,
    CODE_PEER_WAIT,
    CODE_URL_NOT_REACHABLE,
    PIECE_TASK_KEYS,
    Answer,
    OriginServer,
    SupernodeProcess,
    pattern_bytes,
    raw_request,
)

TRANSCRIPTS = SPEC_DIR / "transcripts"
MIB = 1024 * 1024
RESULT_INFO_KEYS = frozenset({"code", "data", "msg"})
RECORDED_ADVERTISE_IP = "127.0.0.1"
FIRST_601_WITHIN = 10.0
FINISH_WITHIN = 5.0
CDN_PIECE_WITHIN = 10.0

# failures.txt #1-#2, the source answers 404: Go answers HTTP 500; §13 allows HTTP 200 with code 607.
UNREACHABLE_REGISTERS = {("failures.txt", 1), ("failures.txt", 2)}
# failures.txt #30, DELETE /api/v1/tasks/{unknown}: Go answers 200, the seed API (our first contract) 404.
SEED_API_404 = {("failures.txt", 30)}


# ---------------------------------------------------------------------------------------------------
# Parsing the recordings


@dataclass
class Exchange:
    number: int
    kind: str  # api | cdn | pcap
    title: str
    method: str = ""
    target: str = ""
    request_headers: list[tuple[str, str]] = field(default_factory=list)
    request_body: bytes = b""
    status: int = 0
    response_headers: dict[str, str] = field(default_factory=dict)
    response_body: bytes | None = None  # None: binary, summarised in ``binary``
    binary: tuple[int, str, str] | None = None  # (length, first 16 bytes hex, last 8 bytes hex)

    @property
    def path(self) -> str:
        return self.target.partition("?")[0]

    def query(self, key: str) -> str:
        """A value of the raw (unescaped) query string, as dfget wrote it."""
        pairs = (pair.partition("=") for pair in self.target.partition("?")[2].split("&"))
        return next((value for name, _, value in pairs if name == key), "")

    def recorded_json(self) -> Any:
        try:
            return json.loads(self.response_body or b"")
        except ValueError:
            return None


_EXCHANGE = re.compile(r"^=== #(\d+) \[\+[\d.]+s\] (\w+)\s+(.*)$")
_REQUEST = re.compile(r"^>>> (\S+) (\S+) HTTP/1\.1$")
_RESPONSE = re.compile(r"^<<< \[\+[\d.]+s\] HTTP/1\.1 (\d{3})\b")
_TEXT_BODY = re.compile(r'^body \((\d+) bytes\): (".*")$')
_BINARY_BODY = re.compile(
    r"^body: binary, (\d+) bytes captured; first 16 bytes hex ([0-9a-f]*); last 8 bytes hex ([0-9a-f]*)$"
)
_HEADER = re.compile(r"^([A-Za-z0-9-]+): (.*)$")


def parse_transcript(path: Path) -> list[Exchange]:
    """The exchanges of one transcript file, in recorded order (format: see each file's header)."""
    exchanges: list[Exchange] = []
    current: Exchange | None = None
    in_response = False
    for line in path.read_text().splitlines():
        if match := _EXCHANGE.match(line):
            current = Exchange(int(match[1]), match[2], match[3])
            exchanges.append(current)
            in_response = False
            continue
        if current is None:
            continue
        if match := _REQUEST.match(line):
            current.method, current.target = match[1], match[2]
        elif match := _RESPONSE.match(line):
            current.status, in_response = int(match[1]), True
        elif line.startswith("    "):
            text = line.strip()
            if match := _TEXT_BODY.match(text):
                body = json.loads(match[2]).encode()
                assert len(body) == int(match[1]), f"{path.name} #{current.number}: body length"
                if in_response:
                    current.response_body = body
                else:
                    current.request_body = body
            elif match := _BINARY_BODY.match(text):
                current.binary = (int(match[1]), match[2], match[3])
            elif text.startswith("(empty body"):
                if in_response:
                    current.response_body = b""
            elif (match := _HEADER.match(text)) and not text.startswith("NOTE:"):
                if in_response:
                    current.response_headers[match[1]] = match[2]
                else:
                    current.request_headers.append((match[1], match[2]))
    return exchanges


def load(name: str) -> list[Exchange]:
    path = TRANSCRIPTS / name
    if not path.is_file():
        pytest.skip(f"transcript {path} not found: the shared spec is not checked out beside the repo")
    return parse_transcript(path)


# ---------------------------------------------------------------------------------------------------
# Replaying


@dataclass
class Replay:
    """Sends recorded requests to the live supernode and collects every way our answers differ."""

    session: aiohttp.ClientSession
    supernode: SupernodeProcess
    origin: OriginServer
    recorded_origin: str
    transcript: str
    substitutions: dict[str, str] = field(default_factory=dict)
    registrations: dict[str, dict[str, Any]] = field(default_factory=dict)  # live cid -> register body
    recorded_md5s: dict[int, str] = field(default_factory=dict)  # pieceNum -> recorded "md5:len"
    fed: set[str] = field(default_factory=set)  # cids that got pieces from our supernode
    problems: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.substitutions[self.recorded_origin] = self.origin.hostport

    def live(self, text: str) -> str:
        for recorded, live in self.substitutions.items():
            text = text.replace(recorded, live)
        return text

    def assert_clean(self) -> None:
        if self.problems:
            pytest.fail(f"{len(self.problems)} answer(s) differ from what dfget accepts:\n" + "\n".join(self.problems),
                        pytrace=False)

    def problem(self, ex: Exchange, expected: str, answer: Answer | None) -> None:
        got = answer.brief() if answer is not None else "no answer"
        self.problems.append(
            f"{self.transcript} #{ex.number} {ex.method} {self.live(ex.target)[:160]}\n"
            f"    expected: {expected}\n    got:      {got}"
        )

    async def send(self, ex: Exchange) -> Answer:
        base = self.supernode.cdn_url if ex.kind == "cdn" else self.supernode.api_url
        target = self.live(ex.target)
        if ex.kind == "cdn":
            task_id = target.rsplit("/", 1)[-1]
            target = ids.cdn_http_path(task_id)
        headers = [(name, value) for name, value in ex.request_headers if name not in {"Host", "Content-Length"}]
        body = self.live(ex.request_body.decode()).encode() if ex.request_body else None
        return await raw_request(self.session, ex.method, base + target, body=body, headers=headers)

    async def send_until(self, ex: Exchange, done: Callable[[Answer], bool], within: float) -> Answer:
        """Re-send while ``done`` is false, as dfget re-sends after a 602, for at most ``within`` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        answer = await self.send(ex)
        while not done(answer) and loop.time() < deadline:
            await asyncio.sleep(0.1)
            answer = await self.send(ex)
        return answer

    async def run(self, exchanges: list[Exchange]) -> None:
        for ex in exchanges:
            for item in self.recorded_items(ex):
                self.recorded_md5s.setdefault(int(item["pieceNum"]), str(item["pieceMd5"]))
        for ex in exchanges:
            if ex.kind == "cdn":
                await self.replay_cdn(ex)
            elif ex.kind == "api":
                await self.replay_api(ex)

    @staticmethod
    def recorded_items(ex: Exchange) -> list[dict[str, Any]]:
        recorded = ex.recorded_json()
        if isinstance(recorded, dict) and recorded.get("code") == CODE_PEER_CONTINUE:
            return list(recorded.get("data") or [])
        return []

    async def replay_api(self, ex: Exchange) -> None:
        if ex.path == "/peer/task":
            await self.replay_pull(ex)
            return
        answer = await self.send(ex)
        recorded = ex.recorded_json()
        if ex.status != 200:
            self.check_refusal(ex, answer)
        elif ex.path == "/peer/registry":
            self.check_register(ex, answer)
        elif isinstance(recorded, dict) and "code" in recorded and ex.path.startswith("/peer/"):
            self.check_result_info(ex, answer, recorded)
        elif (self.transcript, ex.number) in SEED_API_404 and answer.status == 404:
            self.check_error_body(ex, answer)
        elif not 200 <= answer.status < 300:
            self.problem(ex, f"HTTP 2xx like Go's {ex.status}", answer)
        elif ex.path == "/_ping" and answer.body != ex.response_body:
            self.problem(ex, f"body {ex.response_body!r}", answer)

    def check_error_body(self, ex: Exchange, answer: Answer) -> None:
        body = answer.obj
        if (
            body is None
            or not isinstance(body.get("code"), int)
            or not isinstance(body.get("message"), str)
            or "Traceback" in answer.text
        ):
            self.problem(ex, 'a JSON error body {"code": int, "message": str}', answer)

    def check_refusal(self, ex: Exchange, answer: Answer) -> None:
        """Go refused: a JSON error with the same 4xx, or any 4xx/5xx where Go fell back to its 500.

        dfget only sees "not 200"; Go's 500 is its catch-all for every error (§1.2), which the seed API
        refines into 400/404/409. A 4xx from Go was a deliberate answer and must stay the same.
        """
        if (self.transcript, ex.number) in UNREACHABLE_REGISTERS and answer.status == 200:
            if answer.code != CODE_URL_NOT_REACHABLE:
                self.problem(ex, f"HTTP {ex.status}, or HTTP 200 with code 607", answer)
            return
        if ex.status < 500 and answer.status != ex.status:
            self.problem(ex, f"HTTP {ex.status} like Go, with a JSON error body", answer)
            return
        if not 400 <= answer.status < 600:
            self.problem(ex, f"a refusal (4xx/5xx) like Go's HTTP {ex.status}", answer)
            return
        self.check_error_body(ex, answer)

    def check_keys(self, ex: Exchange, answer: Answer, recorded: dict[str, Any]) -> dict[str, Any] | None:
        """Our answer is a ResultInfo with the keys of ``recorded`` (``msg`` may be left out)."""
        body = answer.obj
        if answer.status != 200 or body is None:
            self.problem(ex, f"HTTP 200 with a ResultInfo like {ex.response_body!r}", answer)
            return None
        wanted = set(recorded) - {"msg"}
        if not wanted <= body.keys() <= RESULT_INFO_KEYS:
            self.problem(ex, f"ResultInfo keys {sorted(wanted)} (+ optional msg)", answer)
            return None
        return body

    def check_result_info(self, ex: Exchange, answer: Answer, recorded: dict[str, Any]) -> None:
        body = self.check_keys(ex, answer, recorded)
        if body is not None and body["code"] != recorded["code"]:
            self.problem(ex, f"code {recorded['code']}", answer)

    def check_register(self, ex: Exchange, answer: Answer) -> None:
        recorded = ex.recorded_json()
        body = self.check_keys(ex, answer, recorded)
        if body is None:
            return
        if body["code"] != 200:
            self.problem(ex, "code 200", answer)
            return
        data, recorded_data = body.get("data"), recorded["data"]
        if not isinstance(data, dict) or data.keys() != recorded_data.keys():
            self.problem(ex, f"data keys {sorted(recorded_data)}", answer)
            return
        sent = json.loads(self.live(ex.request_body.decode()))
        task_id = ids.task_id(
            ids.effective_task_url(sent.get("taskUrl"), sent["rawUrl"]), md5=sent.get("md5"),
            identifier=sent.get("identifier"), headers=ids.convert_headers(sent.get("headers")),
        )
        expected = {**recorded_data, "taskId": task_id}
        if data != expected:
            self.problem(ex, f"data {json.dumps(expected)}", answer)
        self.substitutions[recorded_data["taskId"]] = data["taskId"]
        self.registrations[sent["cid"]] = sent

    async def replay_pull(self, ex: Exchange) -> None:
        recorded = ex.recorded_json()
        code = recorded.get("code") if isinstance(recorded, dict) else None
        src_cid, task_id = self.live(ex.query("srcCid")), self.live(ex.query("taskId"))
        if code == CODE_PEER_FINISH:
            answer = await self.send_until(ex, lambda a: a.code != CODE_PEER_WAIT, FINISH_WITHIN)
        elif code == CODE_PEER_CONTINUE and src_cid not in self.fed and src_cid in self.registrations:
            answer = await self.send_until(
                ex, lambda a: a.code != CODE_PEER_WAIT or a.status != 200, FIRST_601_WITHIN
            )
        else:
            answer = await self.send(ex)
        if not isinstance(recorded, dict):
            self.problem(ex, "(unparsable recording)", answer)
            return
        # The keys depend on the code we answered: 600 carries data, 601 may (Go's "peer continue" has
        # none), 602 never does.
        required = {"code": 0, "data": None} if answer.code == CODE_PEER_FINISH and "data" in recorded else {"code": 0}
        body = self.check_keys(ex, answer, required)
        if body is None:
            return
        if body["code"] == CODE_PEER_WAIT and body.get("data") is not None:
            self.problem(ex, "a 602 without data", answer)
        carry_on = {CODE_PEER_CONTINUE, CODE_PEER_WAIT}
        if code in carry_on and body["code"] in carry_on:
            if code == CODE_PEER_CONTINUE and src_cid not in self.fed and src_cid in self.registrations \
                    and not body.get("data"):
                self.problem(ex, "a first 601 with pieces once the CDN holds the file", answer)
            if body["code"] == CODE_PEER_CONTINUE:
                self.check_piece_tasks(ex, answer, src_cid, task_id)
        elif body["code"] != code:
            self.problem(ex, f"code {code}", answer)
        elif code == CODE_PEER_FINISH and "data" in recorded and body.get("data") != recorded["data"]:
            self.problem(ex, f"600 data {json.dumps(recorded['data'])}", answer)

    def check_piece_tasks(self, ex: Exchange, answer: Answer, src_cid: str, task_id: str) -> None:
        items = answer.data
        if items is None:
            return
        if not isinstance(items, list) or len(items) > 4:
            self.problem(ex, "601 data: a list of at most peerDownLimit (4) pieces", answer)
            return
        if items:
            self.fed.add(src_cid)
        for item in items:
            if not isinstance(item, dict) or item.keys() != PIECE_TASK_KEYS:
                self.problem(ex, f"601 items with exactly the keys {sorted(PIECE_TASK_KEYS)}", answer)
                return
            expected = self.expected_piece_task(item, self.registrations[src_cid], task_id)
            if expected is None:
                self.problem(ex, "601 items served by the supernode or by another registered peer", answer)
            elif item != expected:
                self.problem(ex, f"a 601 item like {json.dumps(expected)}", answer)

    def expected_piece_task(
        self, item: dict[str, Any], requester: dict[str, Any], task_id: str
    ) -> dict[str, Any] | None:
        """The correct 601 item for this piece number and source; ``None`` for an unknown source.

        Supernode pieces point at the download port through the requester's ``superNodeIp``; peer
        pieces at the source's registered uploader (§4.2).
        """
        size = 4 * MIB
        num = item["pieceNum"] if isinstance(item["pieceNum"], int) else -1
        cid = item["cid"]
        if cid == ids.super_cid(RECORDED_ADVERTISE_IP, task_id):
            source = {"peerIp": requester["superNodeIp"], "peerPort": self.supernode.cdn_port,
                      "path": ids.cdn_http_path(task_id)}
        elif cid in self.registrations and cid != requester["cid"]:
            peer = self.registrations[cid]
            source = {"peerIp": peer["ip"], "peerPort": peer["port"], "path": peer["path"]}
        else:
            return None
        return {
            "range": pieces.piece_range(num, size), "pieceNum": num, "pieceSize": size,
            "pieceMd5": self.recorded_md5s.get(num, "(a piece the recording never handed out)"), "cid": cid,
            **source, "downLink": item["downLink"] if isinstance(item["downLink"], int) else 0,
        }

    async def replay_cdn(self, ex: Exchange) -> None:
        """A piece GET on the download port: same length and bytes as nginx served the Go CDN file."""
        assert ex.binary is not None
        length, head_hex, tail_hex = ex.binary
        num = int(dict(ex.request_headers)["Piecenum"])
        expected_md5 = self.recorded_md5s.get(num, "").partition(":")[0]

        def matches(answer: Answer) -> bool:
            return (
                answer.status == 206
                and len(answer.body) == length
                and answer.headers.get("Content-Length") == str(length)
                and answer.body[:16].hex() == head_hex
                and answer.body[-8:].hex() == tail_hex
                and hashlib.md5(answer.body).hexdigest() == expected_md5
            )

        answer = await self.send_until(ex, matches, CDN_PIECE_WITHIN)
        if not matches(answer):
            self.problem(
                ex, f"206, {length} bytes starting {head_hex[:16]}.., md5 {expected_md5}",
                Answer(answer.status, answer.headers, answer.body[:64]),
            )


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(auto_decompress=False) as client:
        yield client


def is_legacy(ex: Exchange) -> bool:
    """The endpoints dfget itself calls (§1.4)."""
    return ex.path.startswith(("/peer/", "/task/"))


async def replay(
    name: str, recorded_origin: str, files: dict[str, bytes], session: aiohttp.ClientSession,
    supernode: SupernodeProcess, origin: OriginServer, keep: Callable[[Exchange], bool] = lambda _: True,
) -> Replay:
    exchanges = [ex for ex in load(name) if keep(ex)]
    origin.files.update(files)
    replayer = Replay(session, supernode, origin, recorded_origin, name)
    await replayer.run(exchanges)
    return replayer


async def test_single_download(
    session: aiohttp.ClientSession, supernode: SupernodeProcess, origin: OriginServer
) -> None:
    result = await replay(
        "single-download.txt", "127.0.0.1:18080", {"/file10m.bin": pattern_bytes(10 * MIB)},
        session, supernode, origin,
    )
    result.assert_clean()


async def test_two_peers(session: aiohttp.ClientSession, supernode: SupernodeProcess, origin: OriginServer) -> None:
    result = await replay(
        "two-peers.txt", "127.0.0.1:18080", {"/file20m.bin": pattern_bytes(20 * MIB)},
        session, supernode, origin,
    )
    result.assert_clean()


def group(ex: Exchange) -> str:
    """failures.txt is replayed in groups so that each reports alone."""
    if is_legacy(ex):
        return "dfget-endpoints"
    return "preheats" if "/preheats" in ex.path else "rest-and-system"


@pytest.mark.parametrize("name", [
    "dfget-endpoints",
    "rest-and-system",
    "preheats",
])
async def test_failures(
    session: aiohttp.ClientSession, supernode: SupernodeProcess, origin: OriginServer, name: str
) -> None:
    result = await replay(
        "failures.txt", "127.0.0.1:18380", {"/ok.bin": pattern_bytes(1000), "/ok2.bin": pattern_bytes(1000)},
        session, supernode, origin, keep=lambda ex: group(ex) == name,
    )
    result.assert_clean()
