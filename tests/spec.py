"""Access to the shared spec folder (golden vectors and transcripts) beside the repository."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

SPEC_DIR = Path(__file__).resolve().parents[2] / "shared" / "spec"


def spec_path(*parts: str) -> Path:
    path = SPEC_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"spec data not found at {path} (the shared/ folder sits beside the repository)")
    return path


def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(spec_path("vectors.json").read_text())
    return data
