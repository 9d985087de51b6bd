"""A download in the dfget process itself: without a daemon on the node, with ``--verbose``, or as the fallback.

This is dfget as it was before runs were handed to the node's daemon, and still what starts that
daemon (through :func:`dfget.launcher.ensure_uploader`); it imports the whole stack, which is why
the command line imports it only when it gets here.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from .config import DownloadConfig
from .constants import ExitCode
from .core import DfgetRun
from .logfiles import CLIENT_LOG, setup_logging
from .progress import Progress
from .report import run_and_report


async def _execute(run: DfgetRun) -> int:
    """The run, cancelled by SIGTERM like by Ctrl-C, so that its temporary files are removed either way."""
    task = asyncio.current_task()
    assert task is not None
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
    return await run_and_report(run, sys.stdout, sys.stderr)


def run_download(config: DownloadConfig) -> int:
    setup_logging(config.home, CLIENT_LOG, config.verbose)
    progress = Progress.for_terminal(sys.stderr)
    try:
        return asyncio.run(_execute(DfgetRun(config, progress)))
    except (KeyboardInterrupt, asyncio.CancelledError):
        progress.clear()
        print("dfget: interrupted", file=sys.stderr)
        return int(ExitCode.INTERRUPTED)
