"""Access to the shared folder: the spec's golden vectors and transcripts, and the Go and Kubernetes binaries.

It is ``$DF_SHARED`` when set, else ``shared/`` beside the repository (as CI lays it out). A user's fresh
clone has none: the tests that need it skip, naming the path they looked at.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def shared_dir() -> Path:
    env = os.environ.get("DF_SHARED", "").strip()
    return Path(env) if env else REPO_ROOT.parent / "shared"


SPEC_DIR = shared_dir() / "spec"


def spec_path(*parts: str) -> Path:
    path = SPEC_DIR.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"spec data not found at {path} (the shared/ folder sits beside the repository, or set DF_SHARED)")
    return path


def vectors() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(spec_path("vectors.json").read_text())
    return data
