"""Task IDs, URL filtering and header conversion against the Go supernode's golden data."""

from __future__ import annotations

from typing import Any

import pytest

from dfwire.ids import (
    TASK_ID_KEY,
    cdn_http_path,
    convert_headers,
    effective_task_url,
    filter_url_param,
    is_super_cid,
    is_task_id,
    preheat_id,
    super_cid,
    task_id,
)
from tests.spec import vectors


def _cases() -> list[dict[str, Any]]:
    return list(vectors()["task_ids"])


def test_key_is_the_32_character_go_literal() -> None:
    assert len(TASK_ID_KEY) == 32
    assert TASK_ID_KEY == ">I$pg-~AS~sP'rqu_" + "`" + 'Oh&lz#9]"=;nE%'


@pytest.mark.parametrize("case", range(19))
def test_task_id_matches_go_supernode(case: int) -> None:
    cases = _cases()
    assert len(cases) == 19
    vector = cases[case]
    req = vector["request"]
    url = effective_task_url(req.get("taskUrl", ""), req["rawUrl"])
    got = task_id(url, md5=req.get("md5"), identifier=req.get("identifier"),
                  headers=convert_headers(req.get("headers")))
    assert got == vector["taskId"], vector["case"]


def test_protocol_file_vectors() -> None:
    assert task_id("http://aa.bb.com") == "f123ef7d9523aec972c0c275bf0b12de138baf41bfa4871af1be6a477175cedc"
    assert task_id("http://127.0.0.1:8009/normal.txt") == \
        "f4ebff40fb4fb2bb2659c12e8cfcf8d7197dde43c28a96c672f736a604883db6"


@pytest.mark.parametrize(("url", "filters", "expected"), [
    ("http://h/p?token=abc&x=1&sign=zz", ["token", "sign"], "http://h/p?x=1"),
    ("http://h/p?token=abc", ["token"], "http://h/p"),
    ("http://h/p?a=1&b=2", [], "http://h/p?a=1&b=2"),
    ("http://h/p", ["a"], "http://h/p"),
    ("http://h/p?", ["a"], "http://h/p?"),
    ("http://h/p?  ", ["a"], "http://h/p?  "),
    ("http://h/p?A=1&a=2", ["a"], "http://h/p?A=1"),
    ("http://h/p?a%20b=1&c", ["a%20b"], "http://h/p?c"),
    ("http://h/p?a&a=1&b", ["a"], "http://h/p?b"),
])
def test_filter_url_param(url: str, filters: list[str], expected: str) -> None:
    assert filter_url_param(url, filters) == expected


def test_convert_headers_rules() -> None:
    assert convert_headers(["Range:bytes=5-9", "X-A: 1", "X-A: 2", "Empty:", "nocolon"]) == \
        {"Range": "bytes=5-9", "X-A": "1,2"}
    assert convert_headers(None) == {}


def test_only_exact_range_key_enters_the_id() -> None:
    plain = task_id("http://h/f")
    assert task_id("http://h/f", headers={"range": "bytes=0-9"}) == plain
    assert task_id("http://h/f", headers={"Range": "bytes=0-9"}) != plain


def test_blank_sign_is_ignored_but_md5_wins() -> None:
    assert task_id("u", md5="  ", identifier="  ") == task_id("u")
    assert task_id("u", md5="m", identifier="i") == task_id("u", md5="m")
    assert task_id("u", md5=" ", identifier="i") == task_id("u", identifier="i")


def test_preheat_id_filters_and_uses_identifier_only() -> None:
    assert preheat_id("http://h/f?t=1&x=2", filter_text="t", identifier="id") == \
        task_id("http://h/f?x=2", identifier="id")


def test_cids_paths_and_validation() -> None:
    tid = "a" * 64
    assert super_cid("10.0.0.1", tid) == f"cdnnode:10.0.0.1~{tid}"
    assert is_super_cid(super_cid("10.0.0.1", tid), "10.0.0.1")
    assert not is_super_cid(super_cid("10.0.0.1", tid), "10.0.0.2")
    assert cdn_http_path(tid) == f"/download/aaa/{tid}"
    assert is_task_id(tid)
    for bad in ("../" + "a" * 61, "A" * 64, "a" * 63, "", "a" * 64 + "\n"):
        assert not is_task_id(bad)
