"""Property-based fuzzing of every operation of the served ``/openapi.json`` (schemathesis).

The supernode runs as a real process on loopback; schemathesis reads the document the process serves
and sends generated requests, valid and invalid ones (positive and negative generation), to each
operation. The properties: no 5xx, ever; every 4xx (and every other error status) is JSON
``{"code","message"}`` with ``code`` equal to the HTTP status; every answer is well-formed JSON where
the document promises JSON.

The process allows only 127.0.0.0/8 as a source (``source_allow``), so the URLs the fuzzer invents are
refused before any DNS lookup or connection instead of reaching out to the network; fetching a loopback
port that nobody listens on fails at once. Each operation gets a small, fixed number of examples so the
whole module stays within about a minute on two cores.
"""

from __future__ import annotations

import asyncio
import json
import os
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis import Case

from tests.v1proto import SupernodeStartError, free_port

from .conftest import NodeProcess

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "16"))


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeProcess]:
    """One supernode process for the whole module: operations are independent and a start costs a second."""
    base = tmp_path_factory.mktemp("fuzz")
    node = NodeProcess(base / "home", base / "logs", api_port=free_port(), cdn_port=free_port(),
                       config={"source_allow": ["127.0.0.0/8"], "source_probe_timeout": "1s",
                               "preheat_timeout": "5s"})
    try:
        asyncio.run(node.start())
    except SupernodeStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    try:
        yield node
    finally:
        code = asyncio.run(node.stop())
        stderr = node.stderr_text(200_000)
        print(f"supernode exited with {code}; stderr tail:\n{stderr[-3000:]}")
        assert "Traceback" not in stderr, "the supernode logged an unexpected exception while fuzzed"


@pytest.fixture(scope="module")
def served_schema(fuzz_node: NodeProcess) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_node.api_url}/openapi.json")


schema = schemathesis.pytest.from_fixture("served_schema")


def check_answer(case: Case[Any], status: int, content_type: str, body: bytes) -> None:
    where = f"{case.method} {case.formatted_path} -> HTTP {status}: {body[:300]!r}"
    assert status < 500, f"server error: {where}"
    if case.method.upper() == "HEAD":
        return  # no body to look at
    if status >= 400:
        assert content_type.startswith("application/json"), f"error without JSON: {where}"
        answer = json.loads(body)
        assert isinstance(answer, dict) and set(answer) >= {"code", "message"}, f"not an error object: {where}"
        assert answer["code"] == status and isinstance(answer["message"], str), f"bad error object: {where}"
    elif content_type.startswith("application/json"):
        json.loads(body)  # well-formed, whatever it says


@pytest.mark.timeout(900)
@schema.parametrize()
@settings(max_examples=EXAMPLES, deadline=None, database=None, phases=[Phase.explicit, Phase.generate],
          suppress_health_check=list(HealthCheck))
def test_no_operation_fails_or_answers_without_a_json_error(case: Case[Any]) -> None:
    response = case.call(timeout=15)
    content_type = (response.headers.get("content-type") or [""])[0]  # schemathesis: lower-case keys, lists
    check_answer(case, response.status_code, content_type, response.content)


def test_the_fuzzed_process_is_still_healthy(fuzz_node: NodeProcess) -> None:
    """After the fuzzing the node still serves: nothing was wedged or exhausted."""
    with urllib.request.urlopen(f"{fuzz_node.api_url}/_ping", timeout=5) as resp:
        assert resp.status == 200 and resp.read() == b"OK"
    assert fuzz_node.memory()["VmRSS"] < 300 * 1024 * 1024
