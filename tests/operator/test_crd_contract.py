"""The operator and the Preheat CRD agree: every status field it writes is declared (the API server prunes
undeclared ones), its values fit the schema, and the names it watches are the CRD's.

Checked against the contract copy next to these tests, and against ``crds/preheat.yaml`` (written with
the Helm chart) once that file exists.
"""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
import yaml

from dfoperator.resource import GROUP, KIND, PLURAL, VERSION
from dfoperator.state import EntryState, PreheatState, Problem, Reason
from tests.operator.helpers import CRD_PATH, crd_schema, pruned_fields

REPO_CRD = Path(__file__).resolve().parents[2] / "crds" / "preheat.yaml"
T0 = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)


def crd_files() -> list[Path]:
    return [CRD_PATH, *([REPO_CRD] if REPO_CRD.exists() else [])]


def written_statuses() -> list[dict[str, Any]]:
    """Statuses as the operator writes them, with every field it can set."""
    running = PreheatState()
    running.begin(2, T0)
    running.add_supernodes(["http://10.0.0.1:8002", "http://10.0.0.2:8002", "http://10.0.0.3:8002"])
    running.entry("http://10.0.0.1:8002").accepted("a" * 64, EntryState.RUNNING)
    running.entry("http://10.0.0.2:8002").state = EntryState.RETRYING
    running.entry("http://10.0.0.2:8002").error_msg = "unreachable: connection refused"
    running.settle(T0)
    done = PreheatState.from_status(running.to_status())
    done.entry("http://10.0.0.1:8002").observed(EntryState.SUCCESS)
    done.entry("http://10.0.0.2:8002").state = EntryState.UNREACHABLE
    done.entry("http://10.0.0.3:8002").observed(EntryState.FAILED, "source answered HTTP 404")
    done.settle(T0)
    invalid = PreheatState()
    invalid.begin(1, T0)
    invalid.failure = Problem(Reason.INVALID_SPEC, "spec.type: bad")
    invalid.settle(T0)
    return [s.to_status() for s in (running, done, invalid)]


@pytest.mark.parametrize("path", crd_files(), ids=lambda p: p.name)
def test_what_the_operator_writes_fits_the_crd(path: Path) -> None:
    schema = crd_schema(path)
    for status in written_statuses():
        obj = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "x", "namespace": "d"},
               "spec": {"type": "file", "url": "http://o/f"},
               "status": {k: v for k, v in status.items() if v is not None}}  # null deletes in a merge patch
        assert pruned_fields(obj, schema) == []
        jsonschema.validate(obj, schema, format_checker=jsonschema.FormatChecker())


@pytest.mark.parametrize("path", crd_files(), ids=lambda p: p.name)
def test_the_crd_names_what_the_operator_watches(path: Path) -> None:
    crd = yaml.safe_load(path.read_text())
    spec = crd["spec"]
    assert (spec["group"], spec["names"]["plural"], spec["names"]["kind"], spec["scope"]) == \
        (GROUP, PLURAL, KIND, "Namespaced")
    assert "ph" in spec["names"]["shortNames"]
    version = next(v for v in spec["versions"] if v["name"] == VERSION)
    assert version["served"] and version["storage"] and version["subresources"]["status"] == {}
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {"Type", "URL", "Phase", "Ready", "Age"}
    properties = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert set(properties["required"]) == {"type", "url"}
    assert properties["properties"]["type"]["enum"] == ["image", "file"]


@pytest.mark.parametrize("path", crd_files(), ids=lambda p: p.name)
def test_the_crd_rejects_what_the_operator_would_call_invalid(path: Path) -> None:
    schema = crd_schema(path)
    good = {"apiVersion": f"{GROUP}/{VERSION}", "kind": KIND, "metadata": {"name": "x"},
            "spec": {"type": "image", "url": "https://r/v2/a/manifests/1", "platforms": ["linux/amd64"],
                     "headersSecretRef": {"name": "creds"}}}
    jsonschema.validate(good, schema)
    for bad_spec in ({"type": "tarball", "url": "http://o/f"}, {"type": "file"}, {"type": "file", "url": "x"},
                     {"type": "file", "url": "http://o/f", "headersSecretRef": {}}):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate({**good, "spec": bad_spec}, schema)
