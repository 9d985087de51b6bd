"""Settings of the operator: ``DFOPERATOR_*`` environment variables (the flags of :mod:`.cli` set them).

Everything that differs between a cluster and a test is here, so that the handlers can be registered
with any settings (:class:`~dfoperator.handlers.PreheatOperator` takes an :class:`OperatorConfig`)
instead of reading the environment at import time.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


def normalize_base_url(url: str) -> str:
    """A supernode base URL as the operator stores and compares it: scheme and host, no trailing slash."""
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"a supernode URL must start with http:// or https://, got {url!r}")
    return url


def own_namespace() -> str:
    """The namespace this operator runs in: ``POD_NAMESPACE`` (downward API), the service account's, or default."""
    env = os.environ.get("POD_NAMESPACE", "").strip()
    if env:
        return env
    try:
        return SERVICE_ACCOUNT_NAMESPACE.read_text().strip() or "default"
    except OSError:
        return "default"


class OperatorConfig(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="DFOPERATOR_", extra="ignore", populate_by_name=True)

    supernodes: Annotated[list[str], NoDecode] = Field(
        default_factory=list, validation_alias=AliasChoices("DFOPERATOR_SUPERNODES", "SUPERNODES"),
        description="static supernode base URLs (comma-separated in the environment); when set, the Service "
                    "is not looked up")
    supernode_namespace: str = Field("", description="namespace of the supernode Service (default: the "
                                                     "operator's own namespace)")
    supernode_service: str = Field("dragonfly-supernode", description="name of the supernode Service whose "
                                                                      "EndpointSlices list the supernodes")
    supernode_port: str = Field("api", description="the Service port (name or number) of the supernode API")
    supernode_scheme: str = Field("http", pattern="^https?$")
    allow_spec_supernodes: bool = Field(
        True, description="honour spec.supernodes; turn off where whoever may create Preheats should not pick "
                          "the URLs the operator sends a Secret's headers to")
    retry_attempts: int = Field(5, ge=1, description="attempts per supernode request (and Secret or Service "
                                                     "lookup) before the preheat is Failed")
    retry_backoff: float = Field(2.0, gt=0, description="seconds before the first retry; doubled each time")
    retry_backoff_max: float = Field(120.0, gt=0)
    poll_interval: float = Field(5.0, gt=0, description="seconds between two polls of a running preheat")
    request_timeout: float = Field(10.0, gt=0, description="seconds for one supernode or Kubernetes request")
    metrics_host: str = "0.0.0.0"
    metrics_port: int = Field(9090, ge=-1, le=65535, description="port of /metrics; 0 picks a free one, "
                                                                 "-1 turns the endpoint off")

    @field_validator("supernodes", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [part for part in (p.strip() for p in value.split(",")) if part]
        return value

    @field_validator("supernodes")
    @classmethod
    def _urls(cls, value: list[str]) -> list[str]:
        return list(dict.fromkeys(normalize_base_url(url) for url in value))

    def backoff(self, attempt: int) -> float:
        """Seconds to wait after the ``attempt``-th failure (1-based): doubled each time, capped."""
        return float(min(self.retry_backoff * 2 ** max(attempt - 1, 0), self.retry_backoff_max))

    def service_namespace(self) -> str:
        return self.supernode_namespace or own_namespace()
