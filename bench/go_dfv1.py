"""The Go Dragonfly v1 programs as benchmark parts: where they are, nginx for the Go CDN, and their logs.

The Go supernode does not serve piece bytes: upstream runs nginx on its download port with document root
``{home-dir}/repo`` (``/work/shared/dfv1/README.md``). :func:`nginx_conf` writes a minimal configuration
for that, with every path (pid, logs, temp dirs) inside the run's own directory so nginx can run in the
foreground as a child of the benchmark, and with an access log of ``status body_bytes_sent`` per request:
that log is how the Go CDN's bytes and pieces are counted (the supernode itself only counts the pieces
dfget reports as done, ``dragonfly_supernode_pieces_downloaded_size_bytes_total``).

Go dfget run with ``--verbose`` logs one ``client range:... from peer:IP:PORT ... length:L`` record per piece
read (its ``downloading piece`` records are the pull requests, which carry only some of the finished pieces):
:func:`go_dfget_pieces` counts them by source. :func:`go_dfget_tail` times what it does after its last piece:
it waits for its file writer, then checks the whole file against the MD5 the supernode's finish answer gave.
"""

from __future__ import annotations

import os
import re
import shutil
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

MIB = 1024 * 1024
WRAP = 5
"""Bytes of framing per piece on the wire (4-byte head, 1-byte tail): a piece of pieceSize carries pieceSize-5."""


def shared_dir(repo: Path) -> Path:
    """``$DF_SHARED``, else ``<repo>/../shared``."""
    return Path(os.environ.get("DF_SHARED") or repo.parent / "shared")


def go_binary(repo: Path, name: str) -> Path:
    path = shared_dir(repo) / "dfv1" / "bin" / name
    if not os.access(path, os.X_OK):
        raise SystemExit(f"error: the Go {name} is not at {path} (set DF_SHARED to the directory holding dfv1/)")
    return path


def nginx_binary() -> str:
    found = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if os.access(p, os.X_OK)), None)
    if found is None:
        raise SystemExit("error: nginx not found; the Go supernode needs it on its download port "
                         "(Debian: apt-get install -y nginx)")
    return found


def nginx_conf(work: Path, port: int, root: Path) -> Path:
    """A foreground nginx serving ``root`` on 127.0.0.1:``port`` with sendfile; returns the config's path."""
    base = work / "nginx"
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (base / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    temps = "\n".join(f"    {kind}_temp_path {base / 'tmp' / sub};" for kind, sub in
                      (("client_body", "body"), ("proxy", "proxy"), ("fastcgi", "fastcgi"), ("uwsgi", "uwsgi"),
                       ("scgi", "scgi")))
    conf = base / "nginx.conf"
    # user root: the run's temp dir is 0700, and workers would otherwise run as nobody
    conf.write_text(f"""daemon off;
user root;
worker_processes 1;
pid {base / 'nginx.pid'};
error_log {base / 'error.log'} warn;
events {{ worker_connections 4096; }}
http {{
    log_format bench '$status $body_bytes_sent';
    access_log {base / 'access.log'} bench;
{temps}
    default_type application/octet-stream;
    sendfile on;
    server {{
        listen 127.0.0.1:{port};
        location / {{ root {root}; }}
    }}
}}
""")
    return conf


@dataclass
class NginxCounts:
    bytes_sent: int = 0
    pieces: int = 0
    requests: int = 0
    not_found: int = 0


def nginx_counts(work: Path) -> NginxCounts:
    """Body bytes and piece requests (2xx with a body) from the access log of :func:`nginx_conf`."""
    counts = NginxCounts()
    log = work / "nginx" / "access.log"
    if not log.is_file():
        return counts
    for line in log.read_text(errors="replace").splitlines():
        parts = line.split()
        if len(parts) != 2 or not all(p.isdigit() for p in parts):
            continue
        status, sent = int(parts[0]), int(parts[1])
        counts.requests += 1
        counts.bytes_sent += sent
        if 200 <= status < 300 and sent > 0:
            counts.pieces += 1
        counts.not_found += status == 404
    return counts


@dataclass
class GoPieces:
    from_supernode: int = 0
    from_peers: int = 0
    supernode_bytes: int = 0
    peer_bytes: int = 0
    supernode_seconds: float = 0.0
    peer_seconds: float = 0.0


# one debug record per piece read (``--verbose``); length 0 is a failed read
_PIECE = re.compile(r"client range:\d+-\d+ cost:([0-9.]+) from peer:([0-9.]+):\d+, readCost:[0-9.]+, length:(\d+)")
CDN_IP = "127.0.0.1"
"""The supernode's advertised address in the benchmark; every peer has its own 127.0.0.2+."""


def go_dfget_pieces(home: Path) -> GoPieces:
    """Pieces (data bytes, read time) a Go dfget run with ``--verbose`` read, by source, from its dfclient.log."""
    out = GoPieces()
    log = home / "logs" / "dfclient.log"
    if not log.is_file():
        return out
    for match in _PIECE.finditer(log.read_text(errors="replace")):
        seconds, ip, length = float(match.group(1)), match.group(2), int(match.group(3))
        if length <= WRAP:
            continue
        if ip == CDN_IP:
            out.from_supernode += 1
            out.supernode_bytes += length - WRAP
            out.supernode_seconds += seconds
        else:
            out.from_peers += 1
            out.peer_bytes += length - WRAP
            out.peer_seconds += seconds
    return out


def go_supernode_events(home: Path) -> dict[str, int]:
    """Counts of Go supernode log records that explain an origin/F above 1: CDN (re)starts and task GCs.

    Peers registering at the same moment start the CDN twice; the second start resets the repo (deletes the
    file nginx is serving), a piece read then gets 404, dfget reports FILE_NOT_EXIST and the supernode drops
    the task, so every dfget falls back to the source.
    """
    log = home / "logs" / "app.log"
    text = log.read_text(errors="replace") if log.is_file() else ""
    return {"cdn_repo_resets": text.count("reset repo for taskID"),
            "cdn_downloads_started": text.count("start to download for taskId"),
            "tasks_gc_file_missing": text.count("file data doesn't exist, start to gc this task")}


_COST = re.compile(r"download SUCCESS cost:([0-9.]+)s")


def go_dfget_seconds(stdout: str) -> float:
    """The download time Go dfget prints (``download SUCCESS cost:1.760s``), 0 if absent."""
    match = _COST.search(stdout)
    return float(match.group(1)) if match else 0.0


def went_to_source(stdout: str) -> bool:
    return "from the source station" in stdout


@dataclass
class GoTail:
    """What a Go dfget did after it had read its last piece, from its dfclient.log timestamps (seconds).

    With many dfgets on few cores these are CPU, not network: the writer flushes its queue, then the whole
    file's MD5 is computed (the finish answer carries it; every dfget of a swarm does this at about the
    same moment). The benchmark reports it beside the completion time, so that the time the supernode took
    to deliver every piece can be told from the time the clients took to check them.
    """

    after_last_piece: float
    writer_wait: float
    md5: float


_STAMP = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}) ", re.MULTILINE)
_WRITER = re.compile(r"wait client writer finish cost:([0-9.]+)")
_MD5 = re.compile(r"compute raw md5:\S* for file:\S+ cost:([0-9.]+)s")


def _stamp(line: str) -> datetime | None:
    match = _STAMP.match(line)
    return datetime.strptime(match.group(1), "%Y-%m-%d %H:%M:%S.%f") if match else None


def go_dfget_tail(home: Path) -> GoTail | None:
    """:class:`GoTail` of a Go dfget run with ``--verbose``; None without a piece read and a final record."""
    log = home / "logs" / "dfclient.log"
    if not log.is_file():
        return None
    text = log.read_text(errors="replace")
    last_piece = end = None
    for line in text.splitlines():
        if (piece := _PIECE.search(line)) and int(piece.group(3)) > WRAP:
            last_piece = _stamp(line)
        elif "download SUCCESS cost:" in line:
            end = _stamp(line)
    if last_piece is None or end is None:
        return None
    writer, md5 = _WRITER.search(text), _MD5.search(text)
    return GoTail(after_last_piece=round((end - last_piece).total_seconds(), 3),
                  writer_wait=float(writer.group(1)) if writer else 0.0, md5=float(md5.group(1)) if md5 else 0.0)
