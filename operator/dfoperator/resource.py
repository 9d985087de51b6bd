"""The ``Preheat`` resource: its names, and what its spec means to the supernodes.

The CRD (``crds/preheat.yaml``) validates a spec when the API server has it; the operator validates
again here because nothing guarantees that (an old CRD, a server without validation, an edit of the
stored object): a spec that cannot be preheated must end in a Failed condition that says why, not in
an endless retry.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from .config import normalize_base_url

GROUP = "dragonfly.d7y.io"
VERSION = "v1alpha1"
PLURAL = "preheats"
KIND = "Preheat"
API_VERSION = f"{GROUP}/{VERSION}"

ANNOTATION_PREFIX = GROUP
"""kopf keeps its progress and last-handled spec in annotations under our prefix, so status holds
only our schema (the API server would prune anything else from it)."""
FINALIZER = f"{GROUP}/finalizer"


class InvalidSpec(ValueError):
    """The spec cannot be preheated; the message names the fields, as ``kubectl describe`` shows it."""


class SecretRef(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)

    name: str = Field(min_length=1)
    key: str | None = Field(None, min_length=1, description="only this entry of the Secret becomes a header")


class PreheatSpec(BaseModel):
    """The spec as the operator uses it; unknown fields are ignored, as the API server prunes them."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    type: Literal["image", "file"]
    url: str = Field(min_length=3)
    filter: str = ""
    identifier: str = ""
    platforms: tuple[str, ...] = ()
    headers_secret_ref: SecretRef | None = Field(None, alias="headersSecretRef")
    supernodes: tuple[str, ...] = ()

    @field_validator("url")
    @classmethod
    def _http_url(cls, url: str) -> str:
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"must be an http:// or https:// URL, got {url!r}")
        return url

    @field_validator("supernodes")
    @classmethod
    def _supernode_urls(cls, urls: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(normalize_base_url(url) for url in urls))

    @classmethod
    def parse(cls, spec: Any) -> PreheatSpec:
        """Validate a spec as stored in the object, or raise :class:`InvalidSpec` naming every problem."""
        try:
            return cls.model_validate(dict(spec or {}))
        except ValidationError as exc:
            problems = []
            for error in exc.errors(include_url=False):
                where = ".".join(str(part) for part in ("spec", *error["loc"]))
                given = f" (got {error['input']!r})" if error["type"] != "missing" else ""
                problems.append(f"{where}: {error['msg']}{given}")
            raise InvalidSpec("invalid Preheat spec: " + "; ".join(problems)) from None

    def request(self, headers: dict[str, str]) -> dict[str, Any]:
        """The ``POST /preheats`` body (``supernode-api.md`` PreheatCreateRequest)."""
        body: dict[str, Any] = {"type": self.type, "url": self.url, "filter": self.filter,
                                "identifier": self.identifier}
        if headers:
            body["headers"] = dict(headers)
        if self.platforms:
            body["platforms"] = list(self.platforms)
        return body
