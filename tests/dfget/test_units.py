"""Fast tests of dfget's pure parts: supernode locator, command line, rates, piece frames, wire bodies."""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from pathlib import Path

import pytest

from dfget import cli
from dfget.config import DownloadConfig
from dfget.locator import Locator, Node, parse_node, parse_nodes
from dfget.piece_fetch import FrameError, FrameReader
from dfget.progress import summary
from dfget.protocol import raw_query, task_file_name
from dfget.ratelimit import TokenBucket
from dfget.supernode_api import metrics_body, register_body
from dfget.uploader import RangeNotSatisfiable, amend_range, parse_upload_params, valid_task_name
from dfwire import pieces
from tests.spec import spec_path

MIB = 1024 * 1024

# ---------------------------------------------------------------------------------------------------
# Locator


@pytest.mark.parametrize(("text", "node"), [
    ("10.0.0.1", Node("10.0.0.1", 8002, 1)),
    ("10.0.0.1:9000", Node("10.0.0.1", 9000, 1)),
    ("sn-0.dragonfly:8002=3", Node("sn-0.dragonfly", 8002, 3)),
    (" host=2 ", Node("host", 8002, 2)),
])
def test_parse_node(text: str, node: Node) -> None:
    assert parse_node(text) == node


@pytest.mark.parametrize("text", ["", ":8002", "h:", "h:0", "h:70000", "h:x", "h=0", "h=x", "h=101", "a b", "h/x"])
def test_parse_node_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid node"):
        parse_node(text)


def test_parse_nodes_splits_commas_and_drops_repeats() -> None:
    assert parse_nodes(["a:1,b:2", "a:1=5", "c"]) == (Node("a", 1), Node("b", 2), Node("c"))


def test_order_is_deterministic_and_lists_every_node_once() -> None:
    nodes = [Node(f"10.0.0.{i}") for i in range(1, 6)]
    locator = Locator(nodes)
    for key in (f"task-{i}" for i in range(50)):
        order = locator.order(key)
        assert sorted(order, key=str) == sorted(nodes, key=str)
        assert Locator(list(reversed(nodes))).order(key) == order, "the node list's order must not matter"
    assert Locator([]).order("x") == []


def test_weights_share_the_tasks() -> None:
    locator = Locator([Node("a", weight=1), Node("b", weight=3)])
    owners = Counter(locator.order(f"task-{i}")[0].host for i in range(4000))
    assert 0.20 < owners["a"] / 4000 < 0.30


def test_a_failed_node_moves_only_its_own_tasks_to_the_next_node() -> None:
    """Consistent hashing: dropping a node changes no other task's owner, and its tasks go to the
    second node of their own order, which is where every peer fails over to."""
    nodes = [Node(f"10.0.0.{i}") for i in range(1, 5)]
    full, without = Locator(nodes), Locator([n for n in nodes if n != nodes[1]])
    moved = 0
    for key in (f"task-{i}" for i in range(1000)):
        order = full.order(key)
        if order[0] == nodes[1]:
            moved += 1
            assert without.order(key)[0] == order[1]
        else:
            assert without.order(key)[0] == order[0]
    assert 150 < moved < 350


# ---------------------------------------------------------------------------------------------------
# Command line


def test_download_flags() -> None:
    config = cli.parse_download([
        "-u", "http://origin/a/b.tar?token=1&x=2", "-o", "/tmp/out", "--node", "10.0.0.1:8002=2,10.0.0.2",
        "--node", "10.0.0.3", "--md5", "A" * 32, "-i", "build-7", "-f", "token&expires", "--header", "X-A: 1",
        "--header", "Range: bytes=0-99", "-s", "20M", "--totallimit", "1G", "--notbs", "-p", "cdn",
        "--ip", "127.0.0.2", "--port", "15001", "--home", "/tmp/h", "--callsystem", "ci", "--timeout", "90s",
        "--alivetime", "2m", "--expiretime", "30s", "--verbose", "-m", "1M",
    ])
    assert config == DownloadConfig(
        url="http://origin/a/b.tar?token=1&x=2", output=Path("/tmp/out"),
        nodes=(Node("10.0.0.1", 8002, 2), Node("10.0.0.2"), Node("10.0.0.3")), md5="a" * 32,
        identifier="build-7", filters=("token", "expires"), headers=("X-A: 1", "Range: bytes=0-99"),
        local_limit=20 * MIB, min_rate=MIB, total_limit=1024 * MIB, notbs=True, pattern="cdn", ip="127.0.0.2",
        port=15001, home=Path("/tmp/h"), call_system="ci", timeout=90.0, verbose=True, alive_time=120.0,
        expire_time=30.0,
    )


def test_download_defaults_follow_go_dfget() -> None:
    config = cli.parse_download(["-u", "https://origin/dir/file%20name.iso"])
    assert config.output == Path("file name.iso")
    assert config.nodes == (Node("127.0.0.1", 8002),)
    assert (config.local_limit, config.min_rate, config.total_limit) == (20 * MIB, 64 * 1024, 0)
    assert (config.pattern, config.alive_time, config.expire_time, config.timeout) == ("p2p", 300.0, 180.0, 0.0)
    assert config.home == Path("~/.small-dragonfly").expanduser()


@pytest.mark.parametrize(("text", "rate"), [("20M", 20 * MIB), ("1G", 1024 * MIB), ("512K", 512 * 1024),
                                            ("100MB", 100 * MIB), ("1048576", MIB), ("0", 0), ("1.5M", 3 * MIB // 2)])
def test_rates(text: str, rate: int) -> None:
    assert cli.parse_download(["-u", "http://o/f", "-s", text]).local_limit == rate


@pytest.mark.parametrize(("argv", "message"), [
    (["-u", "ftp://o/f"], "invalid --url: 'ftp://o/f' is not an http(s) URL"),
    (["-u", "http://o/"], "invalid --output: required: the URL names no file"),
    (["-u", "http://o/f", "-s", "fast"], "invalid --locallimit: invalid size 'fast'"),
    (["-u", "http://o/f", "--totallimit=-1M"], "invalid --totallimit: invalid size"),
    (["-u", "http://o/f", "--node", "h:port"], "invalid --node: invalid node 'h:port'"),
    (["-u", "http://o/f", "--md5", "xyz"], "invalid --md5: 'xyz' is not 32 hexadecimal digits"),
    (["-u", "http://o/f", "--header", "novalue"], "invalid --header: 'novalue' is not 'Name: value'"),
    (["-u", "http://o/f", "--ip", "localhost"], "invalid --ip: 'localhost' is not an IPv4 address"),
    (["-u", "http://o/f", "--port", "80"], "invalid --port: must be 0 (pick one) or from 15000 to 65000"),
    (["-u", "http://o/f", "--timeout", "soon"], "invalid --timeout: invalid duration 'soon'"),
    (["-u", "http://o/f", "-p", "torrent"], "invalid choice: 'torrent'"),
    (["-o", "x"], "the following arguments are required: -u/--url"),
])
def test_bad_input_exits_2_with_a_message(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_server_flags() -> None:
    config = cli.parse_server(["--ip", "127.0.0.2", "--port", "15002", "--home", "/tmp/h", "--alivetime", "3m0s",
                               "--expiretime", "1m", "--totallimit", "50M"])
    assert (config.ip, config.port, config.total_limit) == ("127.0.0.2", 15002, 50 * MIB)
    assert (config.alive_time, config.expire_time) == (180.0, 60.0)
    assert (config.data_dir, config.meta_path) == (Path("/tmp/h/data"), Path("/tmp/h/meta/host.meta"))
    custom = cli.parse_server(["--meta", "/m/host.meta", "--data", "/d"])
    assert (custom.data_dir, custom.meta_path) == (Path("/d"), Path("/m/host.meta"))


# ---------------------------------------------------------------------------------------------------
# Rate limit, piece frames, uploader ranges


def test_token_bucket_reserves_time_in_order() -> None:
    bucket = TokenBucket(1000, burst=0.0)
    assert bucket.reserve(500, now=10.0) == pytest.approx(0.5)
    assert bucket.reserve(500, now=10.0) == pytest.approx(1.0), "a second stream waits behind the first"
    assert bucket.reserve(100, now=20.0) == pytest.approx(0.1), "idle time is not saved up without a burst"
    assert TokenBucket(0).reserve(10**9, now=0.0) == 0.0, "0 means unlimited"
    burst = TokenBucket(1000, burst=0.5)
    assert burst.reserve(500, now=100.0) == 0.0


def _frame(data: bytes, piece_size: int = 4 * MIB) -> bytes:
    return pieces.wrap(data, piece_size)


@pytest.mark.parametrize("split", [1, 3, 4, 5, 7, 64])
def test_frame_reader_unwraps_in_any_chunking(split: int) -> None:
    data = bytes(range(200))
    framed = _frame(data)
    reader = FrameReader(max_data=4 * MIB - 5)
    out = b"".join(reader.feed(framed[i:i + split]) for i in range(0, len(framed), split))
    reader.close()
    assert out == data and reader.data_len == len(data) and reader.received == len(framed)
    assert reader.md5.hexdigest() == hashlib.md5(framed).hexdigest()


def test_frame_reader_spec_vectors() -> None:
    reader = FrameReader(max_data=100)
    assert reader.feed(_frame(b"hello Dragonfly")) == b"hello Dragonfly"
    reader.close()
    assert f"{reader.md5.hexdigest()}:{reader.received}" == "8f95b369fc1f8d38262bb1b42d1ac87c:20"
    empty = FrameReader(max_data=100)
    assert empty.feed(bytes.fromhex("040000007f")) == b""
    empty.close()


@pytest.mark.parametrize(("framed", "error"), [
    (_frame(b"x" * 20)[:-1], "before its tail"),
    (_frame(b"x" * 20)[:-1] + b"\x00", "tail is 0x00"),
    (_frame(b"x" * 20) + b"\x7f", "after the piece's tail"),
    (_frame(b"x" * 200), "announces 200 data bytes, at most 100 fit"),
])
def test_frame_reader_rejects(framed: bytes, error: str) -> None:
    reader = FrameReader(max_data=100)
    with pytest.raises(FrameError, match=error):
        reader.feed(framed)
        reader.close()


def test_upload_ranges_spec_vectors() -> None:
    """Go's TestUploadPiece: file ``hello File`` (10 bytes), pieceSize 4 MiB (spec §3.10)."""
    size = len(b"hello File")

    def served(start: int, end: int, padded: bool = True, num: int = 0) -> tuple[int, int]:
        return amend_range(size, padded, parse_upload_params(f"bytes={start}-{end}", str(num), str(4 * MIB)))

    assert served(0, 5) == (0, 6)  # head + "h" + tail
    assert served(0, 4) == (0, 5)  # head + tail
    assert served(0, 15) == (0, 15)  # head + "hello File" + tail
    assert served(0, 4194303) == (0, 15)  # the last piece is announced at full size
    assert served(2, 5, padded=False) == (2, 4)
    with pytest.raises(RangeNotSatisfiable):
        served(4194304, 8388607, num=1)


@pytest.mark.parametrize(("range_value", "num", "size"), [
    ("bytes=5-5", "0", "4194304"), ("bytes=0-1-2", "0", "4194304"), ("0-10", "0", "4194304"),
    ("bytes=a-10", "0", "4194304"), ("bytes=0-10", "x", "4194304"), ("bytes=0-10", "0", None), (None, "0", "1"),
])
def test_upload_params_rejected(range_value: str | None, num: str | None, size: str | None) -> None:
    with pytest.raises(ValueError, match="invalid"):
        parse_upload_params(range_value, num, size)


@pytest.mark.parametrize(("name", "ok"), [("out-1-2.3", True), ("..", False), (".", False), ("", False),
                                          ("a/b", False), ("../etc/passwd", False), ("a\0b", False)])
def test_task_names_stay_in_the_data_dir(name: str, ok: bool) -> None:
    assert valid_task_name(name) is ok


# ---------------------------------------------------------------------------------------------------
# Wire bodies and names


def test_register_body_is_byte_identical_to_dfget_1_0_6() -> None:
    """The first register of the two-peers transcript, rebuilt from its fields."""
    text = spec_path("transcripts", "two-peers.txt").read_text()
    recorded = json.loads(json.loads(text.split("POST /peer/registry", 1)[1].split("body (285 bytes): ", 1)[1]
                                     .split("\n", 1)[0]))
    body = register_body(
        super_node_ip="127.0.0.1", raw_url="http://127.0.0.1:18080/file20m.bin",
        task_url="http://127.0.0.1:18080/file20m.bin", cid="127.0.0.2-30627-1795617987.488", ip="127.0.0.2",
        host_name="vm", port=15101, path="/peer/file/out1-30627-1795617987.488", md5="", identifier="",
        call_system="", headers=(), pattern="p2p")
    assert json.dumps(body, separators=(",", ":")) == json.dumps(recorded, separators=(",", ":"))
    with_md5 = register_body(super_node_ip="s", raw_url="u", task_url="u", cid="c", ip="i", host_name="h", port=0,
                             path="p", md5="m", identifier="ignored", call_system="cs", headers=("A: 1",),
                             pattern="cdn")
    assert list(with_md5)[9:] == ["md5", "callSystem", "headers", "pattern"]
    told = register_body(super_node_ip="s", raw_url="u", task_url="u", cid="c", ip="i", host_name="h", port=0,
                         path="p", md5="", identifier="", call_system="", headers=(), pattern="p2p",
                         download_limit=20 * 1024**2, upload_limit=10 * 1024**2)
    assert list(told)[9:] == ["pattern", "downloadLimit", "uploadLimit"]
    assert (told["downloadLimit"], told["uploadLimit"]) == (20 * 1024**2, 10 * 1024**2)


def test_metrics_body_leaves_out_empty_fields() -> None:
    body = metrics_body(ip="127.0.0.2", backsource_reason=0, cid="c", call_system="", duration=1.5,
                        file_length=-1, port=0, success=False, task_id="t")
    assert body == {"IP": "127.0.0.2", "backsourceReason": "0", "cID": "c", "duration": 1.5, "taskId": "t"}


def test_queries_and_names() -> None:
    assert raw_query([("dstCid", "cdnnode:10.0.0.1~ab"), ("range", ""), ("x", "a b&c")]) == \
        "dstCid=cdnnode:10.0.0.1~ab&range=&x=a%20b%26c"
    assert task_file_name(Path("/d/my file?.bin"), "7-1.000") == "my_file_.bin-7-1.000"


def test_summary_line() -> None:
    line = summary(output="/o", length=24 * MIB, seconds=2.0, counts={"peer": 8 * MIB, "supernode": 16 * MIB,
                   "source": 0}, supernode="10.0.0.1:8002", piece_failures=1, migrations=0, backsource="")
    assert line == ("dfget: downloaded 24.0 MiB in 2.00s (12.0 MiB/s) to /o: 8.0 MiB from peers, 16.0 MiB from "
                    "supernode 10.0.0.1:8002, 0 B from source (1 piece retried)")
