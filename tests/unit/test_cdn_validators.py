"""What an origin answer or a cache entry's ``.meta`` lets the CDN do, judged on real header values.

Response headers are built as aiohttp hands them over (a case-insensitive multidict), request headers as
the registrant's plain dict.
"""

from __future__ import annotations

import pytest
from multidict import CIMultiDict

from dfwire.ids import task_id
from dfwire.pieces import data_size
from supernode.cdn.store import CacheMeta
from supernode.cdn.validators import (
    can_resume,
    content_length,
    continues,
    has_header,
    http_date,
    http_date_ms,
    if_range,
    meta_matches,
    unchanged,
)
from supernode.tasks import TaskSpec

URL = "http://origin.example/file.bin"
DATE = "Tue, 14 Nov 2023 22:13:20 GMT"
DATE_MS = 1_700_000_000_000
LATER = "Wed, 15 Nov 2023 22:13:20 GMT"
LENGTH = 10_000
PIECE_SIZE = 4096


def meta(**changes: object) -> CacheMeta:
    """An interrupted download's ``.meta`` with a strong ETag and a date; ``changes`` override fields."""
    fields: dict[str, object] = {"task_id": task_id(URL), "url": URL, "piece_size": PIECE_SIZE,
                                 "http_file_len": LENGTH, "etag": '"v1"', "last_modified": DATE_MS}
    return CacheMeta.model_validate({**fields, **changes})


def headers(**values: str) -> CIMultiDict[str]:
    """Response headers; ``Content_Length`` stands for ``Content-Length``."""
    return CIMultiDict((name.replace("_", "-"), value) for name, value in values.items())


# --- dates, lengths, header lookup ------------------------------------------------------------------

def test_http_dates_are_epoch_milliseconds_both_ways() -> None:
    assert http_date_ms(DATE) == DATE_MS
    assert http_date(DATE_MS) == DATE


@pytest.mark.parametrize("value", [None, "", "yesterday", "Tue, 99 Nov 2023 22:13:20 GMT"])
def test_a_missing_or_unparsable_date_is_unknown(value: str | None) -> None:
    assert http_date_ms(value) == 0


@pytest.mark.parametrize(("value", "length"), [("0", 0), ("1234", 1234), ("-1", -1), ("12a", -1), (" 12", -1)])
def test_content_length_is_a_plain_number_or_unknown(value: str, length: int) -> None:
    assert content_length(CIMultiDict({"content-length": value})) == length


def test_content_length_without_the_header_is_unknown() -> None:
    assert content_length(headers()) == -1


def test_request_headers_are_looked_up_whatever_their_case() -> None:
    assert has_header({"range": "bytes=0-"}, "Range")
    assert has_header({"RANGE": "bytes=0-"}, "range")
    assert not has_header({"If-Range": '"v1"'}, "Range")


# --- which validator a resume sends -----------------------------------------------------------------

def test_if_range_prefers_a_strong_etag() -> None:
    assert if_range(meta()) == '"v1"'


def test_if_range_falls_back_to_the_date_when_the_etag_is_weak_or_missing() -> None:
    assert if_range(meta(etag='W/"v1"')) == DATE
    assert if_range(meta(etag="")) == DATE


def test_if_range_is_empty_without_a_strong_validator() -> None:
    assert if_range(meta(etag='W/"v1"', last_modified=0)) == ""
    assert if_range(meta(etag="", last_modified=0)) == ""


# --- whether a cache entry belongs to the task, and can be resumed -----------------------------------

def test_meta_matches_the_task_it_was_made_for() -> None:
    spec = TaskSpec(task_id=task_id(URL), raw_url=URL, task_url=URL)
    assert meta_matches(meta(), spec)
    assert not meta_matches(meta(url=URL + "?v=2"), spec)
    assert not meta_matches(meta(task_id=task_id(URL + "?v=2")), spec)


def test_meta_matches_on_md5_when_the_task_has_one_else_on_identifier() -> None:
    with_md5 = TaskSpec(task_id=task_id(URL), raw_url=URL, task_url=URL, md5="a" * 32, identifier="x")
    assert meta_matches(meta(md5="a" * 32, biz_id="other"), with_md5)
    assert not meta_matches(meta(md5="b" * 32, biz_id="x"), with_md5)
    blank_md5 = TaskSpec(task_id=task_id(URL), raw_url=URL, task_url=URL, md5="  ", identifier="x")
    assert meta_matches(meta(biz_id="x"), blank_md5)
    assert not meta_matches(meta(biz_id="y"), blank_md5)


def test_an_unfinished_download_of_known_length_with_a_validator_can_resume() -> None:
    assert can_resume(meta(), {})
    assert can_resume(meta(etag=""), {"X-Token": "t"})


@pytest.mark.parametrize("changes", [
    {"finish": True}, {"http_file_len": 0}, {"http_file_len": -1}, {"etag": "", "last_modified": 0},
    {"etag": 'W/"v1"', "last_modified": 0},
])
def test_no_resume_when_finished_of_unknown_length_or_without_a_strong_validator(changes: dict[str, object]) -> None:
    assert not can_resume(meta(**changes), {})


def test_no_resume_for_a_registrant_that_asks_for_its_own_range() -> None:
    assert not can_resume(meta(), {"range": "bytes=0-99"})


# --- whether a 206 continues the interrupted download ------------------------------------------------

START = 2 * data_size(PIECE_SIZE)


def test_a_206_for_the_rest_of_the_same_content_continues() -> None:
    rest = f"bytes {START}-{LENGTH - 1}/{LENGTH}"
    assert continues(headers(Content_Range=rest, ETag='"v1"', Last_Modified=DATE), meta(), START)
    assert continues(headers(Content_Range=rest), meta(), START)
    assert continues(headers(Content_Range=rest, ETag='"v2"'), meta(etag=""), START)
    assert continues(headers(Content_Range=rest, Last_Modified=LATER), meta(last_modified=0), START)


@pytest.mark.parametrize("content_range", [
    f"bytes 0-{LENGTH - 1}/{LENGTH}", f"bytes {START + 1}-{LENGTH - 1}/{LENGTH}",
    f"bytes {START}-{LENGTH}/{LENGTH + 1}", f"bytes {START}-{LENGTH - 1}/*", "bytes */10000", "bytes", "",
])
def test_a_206_for_another_range_or_length_does_not_continue(content_range: str) -> None:
    assert not continues(headers(Content_Range=content_range), meta(), START)


def test_a_206_with_other_validators_does_not_continue() -> None:
    rest = f"bytes {START}-{LENGTH - 1}/{LENGTH}"
    assert not continues(headers(Content_Range=rest, ETag='"v2"'), meta(), START)
    assert not continues(headers(Content_Range=rest, Last_Modified=LATER), meta(), START)


# --- whether the answer to a conditional request leaves the cache as it is -------------------------------

def test_304_means_unchanged() -> None:
    assert unchanged(304, headers(), meta(finish=True, success=True))


@pytest.mark.parametrize("status", [206, 404, 500])
def test_other_statuses_than_200_and_304_are_not_unchanged(status: int) -> None:
    assert not unchanged(status, headers(ETag='"v1"', Last_Modified=DATE), meta())


def test_a_200_with_the_stored_validators_and_length_is_unchanged() -> None:
    assert unchanged(200, headers(ETag='"v1"', Last_Modified=DATE, Content_Length=str(LENGTH)), meta())
    assert unchanged(200, headers(ETag='"v1"', Last_Modified=DATE), meta())
    assert unchanged(200, headers(ETag='"v1"'), meta(last_modified=0))
    assert unchanged(200, headers(Last_Modified=DATE), meta(etag=""))


def test_a_200_of_another_length_or_with_other_validators_is_a_change() -> None:
    assert not unchanged(200, headers(ETag='"v1"', Last_Modified=DATE, Content_Length=str(LENGTH + 1)), meta())
    assert not unchanged(200, headers(ETag='"v2"', Last_Modified=DATE), meta())
    assert not unchanged(200, headers(ETag='"v1"', Last_Modified=LATER), meta())
    assert not unchanged(200, headers(ETag='"v1"'), meta())


def test_a_200_without_validators_is_a_change() -> None:
    assert not unchanged(200, headers(Content_Length=str(LENGTH)), meta())
    assert not unchanged(200, headers(ETag='"v1"'), meta(etag="", last_modified=0))
