"""The command line's raw values -> a validated :class:`DownloadConfig` or :class:`ServerConfig`.

One function per kind, used by the command line for a run in its own process and by the node's
daemon for a run handed to it, so that an invalid value gets the same ``dfget: invalid --flag: ...``
lines whichever of them validates it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from .args import FLAGS
from .config import DownloadConfig, ServerConfig

M = TypeVar("M", bound=BaseModel)


class InvalidOptions(ValueError):
    """Values the command line accepted but the config rejects; ``lines`` are what the user is shown."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("\n".join(lines))
        self.lines = lines


def _validate(model: type[M], values: dict[str, Any], prog: str) -> M:
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        lines = []
        for error in exc.errors(include_url=False):
            field = str(error["loc"][0]) if error["loc"] else ""
            detail = error["msg"].removeprefix("Value error, ")
            if error["type"] == "missing" and field == "output":
                detail = "required: the URL names no file, give -o/--output"
            lines.append(f"{prog}: invalid {FLAGS.get(field, field)}: {detail}")
        raise InvalidOptions(lines) from None


def download_config(raw: Mapping[str, Any]) -> DownloadConfig:
    """``raw`` as :func:`dfget.args.download_args` returns it."""
    args = dict(raw)
    args["filters"] = tuple(f for f in args.pop("filter").split("&") if f)
    args["headers"] = tuple(args["headers"])
    if args["nodes"] is None:
        del args["nodes"]
    return _validate(DownloadConfig, args, "dfget")


def server_config(raw: Mapping[str, Any]) -> ServerConfig:
    """``raw`` as :func:`dfget.args.server_args` returns it."""
    return _validate(ServerConfig, dict(raw), "dfget server")
