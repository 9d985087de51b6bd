"""What a person sees: a progress bar on a terminal, notices on stderr, one summary line at the end.

The bar is drawn only when stderr is a terminal (scripts and logs get no control characters), at
most five times a second, and shows where the bytes came from: peers, the supernode's CDN or the
source. Notices (a migration, the reason for going back to the source) clear the bar first so that
they stay readable. A run the node's daemon does for a caller draws into the caller's terminal: it
says whether that is a terminal and how wide, and the text travels back as events.
"""

from __future__ import annotations

import shutil
import sys
import time
from dataclasses import dataclass, field
from typing import Literal, Protocol, TextIO

Source = Literal["peer", "supernode", "source"]

REDRAW_INTERVAL = 0.2


class TextSink(Protocol):
    """Where a run's text goes: this process's stderr or stdout, or the stream back to a caller."""

    def write(self, text: str, /) -> object: ...

    def flush(self) -> None: ...


def human_bytes(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(size) < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}" if seconds >= 3600 else \
        f"{seconds // 60}:{seconds % 60:02d}"


@dataclass
class Progress:
    """Byte counters of one dfget run, by source, and their rendering."""

    stream: TextSink = field(default_factory=lambda: sys.stderr)
    enabled: bool = False
    columns: int | None = None  # the terminal's width; None: ask this process's terminal at each redraw
    total: int = -1
    counts: dict[Source, int] = field(default_factory=lambda: {"peer": 0, "supernode": 0, "source": 0})
    started: float = field(default_factory=time.monotonic)
    in_flight: int = 0  # bytes of pieces still being received: shown, not yet counted by source
    _drawn_at: float = 0.0
    _drawn: bool = False

    @classmethod
    def for_terminal(cls, stream: TextIO) -> Progress:
        return cls(stream=stream, enabled=stream.isatty())

    @property
    def done(self) -> int:
        return sum(self.counts.values())

    def add(self, size: int, source: Source) -> None:
        """Count ``size`` verified bytes from ``source``."""
        self.counts[source] += size
        self._maybe_draw()

    def moving(self, delta: int) -> None:
        """Bytes of unverified pieces arrived (+) or were settled, kept or dropped (-): they move the bar only."""
        self.in_flight += delta
        self._maybe_draw()

    def _maybe_draw(self) -> None:
        now = time.monotonic()
        if self.enabled and now - self._drawn_at >= REDRAW_INTERVAL:
            self._draw(now)

    def restart(self, total: int) -> None:
        """Start counting again from zero: the P2P bytes were abandoned for a download from the source."""
        self.total = total
        self.counts = {"peer": 0, "supernode": 0, "source": 0}
        self.in_flight = 0
        self.started = time.monotonic()

    def notice(self, message: str) -> None:
        self.clear()
        print(f"dfget: {message}", file=self.stream, flush=True)

    def clear(self) -> None:
        if self._drawn:
            self.stream.write("\r\033[K")
            self.stream.flush()
            self._drawn = False

    def _draw(self, now: float) -> None:
        self._drawn_at = now
        elapsed = max(now - self.started, 1e-6)
        shown = self.done + max(self.in_flight, 0)
        rate = shown / elapsed
        width = self.columns or shutil.get_terminal_size((100, 20)).columns
        parts = [f"{human_bytes(shown)}" + (f"/{human_bytes(self.total)}" if self.total >= 0 else ""),
                 f"{human_bytes(rate)}/s"]
        if self.total > 0 and rate > 0:
            parts.append(f"ETA {human_duration(max(self.total - shown, 0) / rate)}")
        parts.append(" ".join(f"{name} {human_bytes(size)}" for name, size in self.counts.items() if size))
        text = "  ".join(p for p in parts if p)
        if self.total > 0:
            share = min(1.0, shown / self.total)
            bar = max(10, min(40, width - len(text) - 10))
            filled = int(share * bar)
            text = f"[{'=' * filled}{'>' if filled < bar else ''}{' ' * (bar - filled - 1)}] {share:4.0%}  {text}"
        self.stream.write("\r" + text[: width - 1] + "\033[K")
        self.stream.flush()
        self._drawn = True


def summary(*, output: str, length: int, seconds: float, counts: dict[Source, int], supernode: str,
            piece_failures: int, migrations: int, backsource: str) -> str:
    """The one line printed on success, e.g. ``dfget: 24.0 MiB in 1.2s (20.0 MiB/s) to out: ...``."""
    rate = length / seconds if seconds > 0 else 0.0
    origins = [f"{human_bytes(counts['peer'])} from peers", f"{human_bytes(counts['supernode'])} from supernode"
               + (f" {supernode}" if supernode else ""), f"{human_bytes(counts['source'])} from source"]
    extra = []
    if piece_failures:
        extra.append(f"{piece_failures} piece{'s' if piece_failures != 1 else ''} retried")
    if migrations:
        extra.append(f"{migrations} migration{'s' if migrations != 1 else ''}")
    if backsource:
        extra.append(f"back-source: {backsource}")
    tail = f" ({'; '.join(extra)})" if extra else ""
    return (f"dfget: downloaded {human_bytes(length)} in {seconds:.2f}s ({human_bytes(rate)}/s) to {output}: "
            f"{', '.join(origins)}{tail}")
