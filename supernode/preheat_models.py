"""Wire models of the ``/preheats`` endpoints (``supernode-api.md``, PreheatCreateRequest and PreheatInfo).

Kept apart from :mod:`supernode.models` so the preheat feature can change without touching the models
every other endpoint shares. Field names and casing are the swagger ones; request keys match any
casing, as for every request model (:class:`~supernode.models.WireModel`).

Extensions beyond the seed API are marked as such in their descriptions: ``platforms``, ``caCert``
and ``insecure`` on the request; ``type``, ``url`` and ``children`` on PreheatInfo. Clients that do
not know them are unaffected (unknown request keys are ignored; extra answer keys are ignored by
Go's JSON decoder and by Harbor).
"""

from __future__ import annotations

import enum
import ssl
from datetime import UTC, datetime
from typing import Annotated

from pydantic import AfterValidator, Field, field_serializer, model_validator

from dfwire.ids import header_problem, source_url_problem
from dfwire.registry import Platform, RegistryError, parse_manifest_url

from .models import WireModel


class PreheatType(enum.StrEnum):
    IMAGE = "image"
    FILE = "file"


class PreheatStatus(enum.StrEnum):
    WAITING = "WAITING"
    RUNNING = "RUNNING"
    FAILED = "FAILED"
    SUCCESS = "SUCCESS"

    @property
    def finished(self) -> bool:
        return self in (PreheatStatus.FAILED, PreheatStatus.SUCCESS)


def _platform(text: str) -> str:
    Platform.parse(text)
    return text


def _ca_cert(pem: str) -> str:
    """Refuse an unusable CA at creation time (400) rather than failing the preheat later."""
    if pem:
        try:
            ssl.create_default_context(cadata=pem)
        except (ssl.SSLError, ValueError, TypeError) as exc:  # TypeError: non-ASCII text
            raise ValueError(f"caCert is not a PEM CA certificate: {exc}") from None
    return pem


class PreheatCreateRequest(WireModel):
    type: PreheatType = Field(description="image or file")
    url: str = Field(min_length=3, description="the file URL, or for an image its registry v2 manifest URL "
                                               "<proto>://<host>/v2/<name>/manifests/<tag or digest>")
    filter: str = Field("", description="&-separated query parameter names left out of the task ID")
    identifier: str = Field("", description="distinguishes preheats (and tasks) of the same URL")
    headers: dict[str, str] | None = Field(
        None, description="headers sent to the source; for an image: Authorization Basic (also used for the "
                          "registry's token endpoint) or Bearer")
    platforms: list[Annotated[str, AfterValidator(_platform)]] | None = Field(
        None, description="EXTENSION. For an image index: preheat only these platforms (os/arch[/variant]); "
                          "default every platform")
    ca_cert: Annotated[str, AfterValidator(_ca_cert)] = Field(
        "", alias="caCert", description="EXTENSION. PEM CA certificate(s) trusted for this preheat's HTTPS source")
    insecure: bool = Field(False, description="EXTENSION. Skip TLS verification of the source")

    @model_validator(mode="after")
    def _image_url(self) -> PreheatCreateRequest:
        if self.type == PreheatType.IMAGE:
            try:
                parse_manifest_url(self.url)
            except RegistryError as exc:
                raise ValueError(str(exc)) from None
        elif not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must be an http or https URL, got {self.url!r}")
        problem = source_url_problem(self.url)
        if problem:
            raise ValueError(f"url {self.url!r}: {problem}")
        for name, value in (self.headers or {}).items():
            problem = header_problem(name, value)
            if problem:
                raise ValueError(problem)
        return self


class PreheatCreateResponse(WireModel):
    id: str = Field(alias="ID")


EPOCH = datetime.fromtimestamp(0, UTC)


def rfc3339_millis(moment: datetime) -> str:
    """PreheatInfo times as the Go supernode renders them; an unset time is the Unix epoch."""
    moment = moment.astimezone(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


class PreheatInfo(WireModel):
    id: str = Field(alias="ID")
    finish_time: datetime = Field(EPOCH, alias="finishTime", description="RFC 3339 with milliseconds, UTC; "
                                                                       "1970-01-01T00:00:00.000Z until finished")
    start_time: datetime = Field(EPOCH, alias="startTime")
    status: PreheatStatus
    error_msg: str | None = Field(None, alias="errorMsg", description="why it FAILED (left out otherwise)")
    type: PreheatType | None = Field(None, description="EXTENSION. image or file")
    url: str | None = Field(None, description="EXTENSION. what is preheated")
    children: list[str] | None = Field(None, description="EXTENSION. IDs of an image's layer (and config) "
                                                         "preheats; each can be read with GET /preheats/{id}")

    @field_serializer("finish_time", "start_time")
    def _times(self, value: datetime) -> str:
        return rfc3339_millis(value)
