"""How a dfget run ends for whoever started it: the summary line, or why it failed, and the exit code.

Shared by a run in the dfget process and a run the node's daemon does for a caller, so both print
the same lines and return the same codes; only where the text goes differs (this process's stdout
and stderr, or the events streamed back to the caller). Interruption is each caller's own business.
"""

from __future__ import annotations

import logging

from . import __version__
from .constants import ExitCode
from .core import DfgetRun
from .errors import DfgetError
from .progress import TextSink, summary

log = logging.getLogger(__name__)


async def run_and_report(run: DfgetRun, stdout: TextSink, stderr: TextSink, shown_output: str = "") -> int:
    """Execute ``run``; ``shown_output`` names the output in the summary as the user gave it (default: as run)."""
    config, progress = run.config, run.progress
    log.info("dfget %s: %s -> %s", __version__, config.url, config.output)
    try:
        result = await run.execute()
    except DfgetError as exc:
        progress.clear()
        log.error("download failed: %s", exc)
        print(f"dfget: download failed: {exc}", file=stderr, flush=True)
        return int(exc.exit_code)
    progress.clear()
    line = summary(output=shown_output or result.output, length=result.length, seconds=result.seconds,
                   counts=result.counts, supernode=result.supernode, piece_failures=result.piece_failures,
                   migrations=result.migrations, backsource=result.backsource)
    log.info("%s", line)
    print(line, file=stdout, flush=True)
    return int(ExitCode.OK)
