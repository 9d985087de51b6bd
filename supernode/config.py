"""Settings of the supernode: flags, ``SUPERNODE_*`` environment variables and a YAML file.

Precedence, highest first: command-line flags, environment variables, the YAML file, defaults. The
defaults are the Go supernode's (spec §9) so that an existing deployment keeps its behaviour; the
YAML file may use the Go keys (``base: {listenPort: ...}``) or our snake_case names.
"""

from __future__ import annotations

import socket
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import BeforeValidator, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict

from dfwire.pieces import DEFAULT_PIECE_SIZE, MAX_PIECE_SIZE, MIB, piece_size_for
from dfwire.units import parse_duration, parse_size

from .security import SourceAllowList

DEFAULT_CONFIG_PATH = Path("/etc/dragonfly/supernode.yml")

Size = Annotated[int, BeforeValidator(parse_size), Field(ge=0)]
Duration = Annotated[float, BeforeValidator(parse_duration), Field(ge=0)]
Port = Annotated[int, Field(ge=0, le=65535)]


def _split_list(value: Any) -> Any:
    """``a,b c`` (an environment variable, a flag given once or more) -> ``["a", "b", "c"]``."""
    if isinstance(value, str):
        value = [value]
    if isinstance(value, list):
        return [item for text in value for item in (text.replace(",", " ").split() if isinstance(text, str)
                                                    else [text])]
    return value


def _blank_is_none(value: Any) -> Any:
    """``SUPERNODE_API_TOKEN=""`` (an empty Helm value) means no token, not an empty one."""
    return None if isinstance(value, str) and not value.strip() else value


StrList = Annotated[list[str], NoDecode, BeforeValidator(_split_list)]


class ConfigFileError(Exception):
    """The configuration file is missing (when given explicitly) or is not a YAML mapping."""


def _normalise(key: str) -> str:
    return key.replace("_", "").replace("-", "").lower()


def default_advertise_ip() -> str:
    """The first non-loopback IPv4 of this host, as the Go supernode picks it; loopback as a last resort."""
    try:
        candidates = socket.getaddrinfo(socket.gethostname(), None, socket.AF_INET)
    except OSError:
        candidates = []
    for *_, sockaddr in candidates:
        ip = str(sockaddr[0])
        if not ip.startswith("127."):
            return ip
    return "127.0.0.1"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SUPERNODE_", extra="ignore", validate_default=True)

    home_dir: Path = Path("/home/admin/supernode")
    listen_host: str = "0.0.0.0"
    port: Port = 8002
    download_port: Port = 8001
    advertise_ip: str = Field(default_factory=default_advertise_ip)
    debug: bool = False

    up_limit: int = Field(5, ge=1, description="concurrent uploads one peer may serve")
    down_limit: int = Field(4, ge=1, description="concurrent pieces one client may download")
    cdn_task_limit: int = Field(64, ge=1, description="most concurrent CDN piece downloads served per task (Go: "
                                "a fixed 4, which leaves peers waiting while the CDN could serve them); within "
                                "it the scheduler weighs the CDN against peers by measured throughput")
    elimination_limit: int = Field(5, ge=1)
    failure_count_limit: int = Field(5, ge=0)
    max_bandwidth: Size = 200 * 1024**2
    system_bandwidth: Size = 20 * 1024**2
    cdn_rate_limit: Size = Field(0, description="total rate at which the download port sends piece bytes, all "
                                 "connections together (bytes per second, e.g. 100M); 0: unlimited")
    piece_size: Size = Field(0, description="wrapped piece size of new tasks of files up to 200 MiB (the spec's "
                             "4 MiB), a whole number of MiB from 1M to 15M, e.g. 2M; a larger file gets the spec's "
                             "growing size (5-15 MiB), never less. A peer serves only pieces it holds whole, so each "
                             "hop of a piece through the swarm waits for a whole piece: smaller pieces spread a file "
                             "sooner when the piece port is the bottleneck, at the cost of more piece requests per "
                             "file. 0: 4 MiB, as Go")
    cdn_measure: bool = Field(True, description="with cdn_rate_limit 0, measure the port's capacity from the "
                              "pieces it sends, and seed at it once it saturates; false: take the port for "
                              "unlimited, as Go does")

    fail_access_interval: Duration = 180.0
    gc_initial_delay: Duration = 6.0
    gc_meta_interval: Duration = 120.0
    task_expire_time: Duration = 180.0
    peer_gc_delay: Duration = 180.0
    gc_disk_interval: Duration = 15.0
    young_gc_threshold: Size = 100 * 1024**3
    full_gc_threshold: Size = 5 * 1024**3
    interval_threshold: Duration = 7200.0
    clean_ratio: int = Field(1, ge=1, le=10)

    client_min_rate: Size = Field(64 * 1024, gt=0, description="dfget's minimum download rate (--minrate)")
    pull_hold: Duration = Field(1.0, le=4.0, description="longest a /peer/task that would answer 602 (wait), or 601 "
                                "without pieces to a client at its flow limit, is held while nothing changes in "
                                "the task (then 602); 0 answers at once, as Go does (at most 4 s: dfget gives a "
                                "request 5 s)")
    piece_timeout_margin: Duration = Field(40.0, description="added to pieceSize/minRate before a handed-out "
                                                               "piece that was never reported is taken back")
    source_probe_timeout: Duration = 4.0
    source_read_timeout: Duration = 60.0

    preheat_gc_threshold: Duration = Field(86400.0, description="how long a finished preheat stays queryable "
                                                                "(the spec's PreheatGCThreshold, 24h)")
    preheat_gc_interval: Duration = Field(60.0, description="how often finished preheats are collected")
    preheat_timeout: Duration = Field(1800.0, description="a running preheat fails after this long (Go: 30m)")
    preheat_concurrency: int = Field(4, ge=1, description="preheats that run at once; the others wait")
    preheat_layer_concurrency: int = Field(4, ge=1, description="layers of one image fetched at once")

    api_token: Annotated[SecretStr | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="bearer token required by every state-changing REST and preheat call (default: none, "
                          "the API is open); prefer api_token_file or SUPERNODE_API_TOKEN to a file or flag")
    api_token_file: Annotated[Path | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="file holding the token (a mounted Kubernetes Secret); re-read when it changes")
    tls_cert: Annotated[Path | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="PEM certificate (chain) of the API port; with tls_key the API port speaks HTTPS only")
    tls_key: Annotated[Path | None, BeforeValidator(_blank_is_none)] = Field(
        None, description="PEM private key of tls_cert")
    source_allow: StrList = Field(
        default_factory=list, description="hosts the supernode may fetch from: names, *.domain, IPs, networks "
                                          "(default: empty, every host is allowed)")

    @field_validator("source_allow")
    @classmethod
    def _patterns(cls, value: list[str]) -> list[str]:
        SourceAllowList.parse(value)
        return value

    @field_validator("piece_size")
    @classmethod
    def _whole_mib(cls, value: int) -> int:
        # The piece head keeps the piece size in its top byte (dataLen | pieceSize << 4), and Go caps it.
        if value and (value % MIB or value > MAX_PIECE_SIZE):
            raise ValueError(f"piece size must be a whole number of MiB from 1M to 15M, got {value} bytes")
        return value

    def piece_size_for(self, length: int) -> int:
        """The piece size a new task of ``length`` source bytes (-1: unknown) is cut in."""
        return piece_size_for(length, self.piece_size or DEFAULT_PIECE_SIZE)

    @model_validator(mode="after")
    def _pairs(self) -> Settings:
        if self.api_token is not None and self.api_token_file is not None:
            raise ValueError("set api_token or api_token_file, not both")
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("tls_cert and tls_key go together: set both or neither")
        return self

    @property
    def allow_list(self) -> SourceAllowList:
        return SourceAllowList.parse(self.source_allow)

    @field_validator("advertise_ip")
    @classmethod
    def _ipv4(cls, value: str) -> str:
        try:
            socket.inet_pton(socket.AF_INET, value)
        except OSError:
            raise ValueError(f"advertise IP must be an IPv4 address, got {value!r}") from None
        return value

    @property
    def cdn_rate(self) -> int:
        """Bytes per second the CDN may take from origins (Go: max - reserved, never below 1 MiB/s)."""
        return max(self.max_bandwidth - self.system_bandwidth, 1024**2)

    @property
    def cdn_egress_rate(self) -> int | None:
        """The download port's total egress rate in bytes per second, ``None`` when unlimited.

        The one place that knows ``cdn_rate_limit`` = 0 means unlimited: the piece server's bucket and
        the scheduler's notion of the CDN's capacity both read this.
        """
        return self.cdn_rate_limit or None

    @property
    def repo_dir(self) -> Path:
        return self.home_dir / "repo"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)


# Go's YAML keys that do not normalise to our field names.
_GO_KEYS = {"listenport": "port", "peeruplimit": "up_limit", "peerdownlimit": "down_limit",
            "systemreservedbandwidth": "system_bandwidth"}


def _yaml_values(path: Path) -> dict[str, Any]:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigFileError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigFileError(f"{path}: expected a mapping at the top level")
    flat: dict[str, Any] = {k: v for k, v in loaded.items() if k != "base"}
    if isinstance(loaded.get("base"), dict):
        flat.update(loaded["base"])
    names = {_normalise(name): name for name in Settings.model_fields} | _GO_KEYS
    return {names[_normalise(str(k))]: v for k, v in flat.items() if _normalise(str(k)) in names}


def load_settings(config: Path | None = None, **flags: Any) -> Settings:
    """Merge defaults < YAML < ``SUPERNODE_*`` environment < ``flags``.

    ``config=None`` reads the default file only if it exists; an explicit path must exist.
    """
    path = config if config is not None else DEFAULT_CONFIG_PATH
    values: dict[str, Any] = {}
    if path.is_file():
        values = _yaml_values(path)
    elif config is not None:
        raise ConfigFileError(f"config file {config} does not exist")
    values.update(EnvSettingsSource(Settings, env_prefix="SUPERNODE_")())
    values.update(flags)
    return Settings(**values)
