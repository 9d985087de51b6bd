"""Sizes and durations as Dragonfly's Go configuration writes them (``20M``, ``1GB``, ``3m0s``).

Operators copy values from Go supernode configs; accepting the same spellings makes the switch a
drop-in. Plain numbers stay plain: bytes for sizes, seconds for durations.
"""

from __future__ import annotations

import re

_SIZE_UNITS = {"": 1, "B": 1, "K": 1024, "KB": 1024, "M": 1024**2, "MB": 1024**2, "G": 1024**3, "GB": 1024**3,
               "T": 1024**4, "TB": 1024**4}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?B?)\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(value: str | int | float) -> int:
    """Bytes from ``1024``, ``20M``, ``20MB`` or ``1.5G`` (1024-based, as Go's ``fileutils``)."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"size must not be negative: {value}")
        return int(value)
    match = _SIZE_RE.match(value)
    if not match:
        raise ValueError(f"invalid size {value!r}: use a number with an optional K, M, G or T suffix")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).upper()])


def parse_duration(value: str | int | float) -> float:
    """Seconds from ``30``, ``1.5``, ``500ms``, ``3m``, ``3m0s`` or ``2h``."""
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration must not be negative: {value}")
        return float(value)
    text = value.strip()
    try:
        seconds = float(text)
    except ValueError:
        pass
    else:
        if seconds < 0:
            raise ValueError(f"duration must not be negative: {value}")
        return seconds
    parts = _DURATION_PART.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"invalid duration {value!r}: use e.g. 30s, 3m, 2h or 500ms")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
