"""What the thin command line shares with the rest of dfget: the default home, the versions, the exit codes.

Standard library only. ``dfget --version``, usage errors and a download handed to the node's daemon
load this, the flag grammar (:mod:`dfget.args`) and the delegation client, and nothing heavy; the
pydantic and aiohttp modules take these names from here too, so each has one definition.
"""

from __future__ import annotations

from enum import IntEnum
from pathlib import Path

DEFAULT_HOME = Path("~/.small-dragonfly")

#: The dfget version we announce: the uploader's ``/check`` answer must match it for a Go 1.0.6 dfget
#: on the same node to reuse our uploader, and supernodes log it per peer.
PROTOCOL_VERSION = "1.0.6"


class ExitCode(IntEnum):
    OK = 0
    FAILED = 1  # an unexpected error
    USAGE = 2  # bad command line (argparse uses 2 as well)
    SUPERNODE_FAILED = 3  # the P2P download failed and going to the source was not allowed
    SOURCE_FAILED = 4  # the source download failed
    MD5_MISMATCH = 5  # the file's MD5 differs from --md5 or from the supernode's
    LOCAL_IO = 6  # the output or the work home cannot be written
    TIMEOUT = 7  # --timeout (or the computed timeout) expired
    INTERRUPTED = 130
