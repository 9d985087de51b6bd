"""Wake-ups for pulls that are waiting for something to change in a task.

A ``/peer/task`` that would answer 602 ("wait") is held for a moment instead (see
``PullLoop.pull_held``): the client would otherwise sleep a back-off of 50 ms to 1.6 s and come
back, idle all that time, even when the CDN finished a piece or a source freed an upload slot a
millisecond after the answer. Whatever can turn a 602 into pieces - a CDN piece sealed or failed, a
piece outcome recorded (which frees a download slot and an upload slot, and may add a holder) -
notifies the task here, and every pull held on it schedules again. A client's own piece reports are also
notified under a key of that client (``PullLoop``): a pull held only because the client runs all the
pieces it may waits on that key alone.

The held pulls wake in order of priority (lowest first; the pull loop uses the pieces a client
holds), one event-loop step after the notification. That step lets the pull that reported the change
join the queue first, so a freed source goes to the client that lags most rather than to whoever
happened to report: the sources of a swarm are its clients, and a client that lags holds fewer
pieces anyone still needs.
"""

from __future__ import annotations

import asyncio
import itertools


class TaskChanges:
    """Per task, the pulls waiting for a change; a notification wakes all of them, lowest priority first."""

    def __init__(self) -> None:
        self._waiters: dict[str, dict[asyncio.Future[None], tuple[int, int]]] = {}
        self._due: set[str] = set()
        self._order = itertools.count()

    def notify(self, task_id: str) -> None:
        """Wake every pull waiting on ``task_id`` at the next step of the event loop."""
        waiters = self._waiters.get(task_id)
        if not waiters or task_id in self._due:
            return
        self._due.add(task_id)
        next(iter(waiters)).get_loop().call_soon(self._wake, task_id)

    def waiting(self, task_id: str) -> bool:
        """Whether some pull is waiting on ``task_id``."""
        return bool(self._waiters.get(task_id))

    async def wait(self, task_id: str, within: float, priority: int = 0) -> bool:
        """Until the next notification for ``task_id`` (True) or ``within`` seconds (False)."""
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        waiters = self._waiters.setdefault(task_id, {})
        waiters[future] = (priority, next(self._order))
        try:
            async with asyncio.timeout(within):
                await future
            return True
        except TimeoutError:
            return False
        finally:
            waiters.pop(future, None)
            if not waiters and self._waiters.get(task_id) is waiters:
                del self._waiters[task_id]  # an idle task keeps nothing here

    def _wake(self, task_id: str) -> None:
        self._due.discard(task_id)
        waiters = self._waiters.pop(task_id, {})
        for future, _ in sorted(waiters.items(), key=lambda item: item[1]):
            if not future.done():
                future.set_result(None)
