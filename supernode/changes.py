"""Wake-ups for pulls that are waiting for something to change in a task.

A ``/peer/task`` that would answer 602 ("wait") is held for a moment instead (see
``TaskManager.pull_held``): the client would otherwise sleep a back-off of 50 ms to 1.6 s and come
back, idle all that time, even when the CDN finished a piece or a source freed an upload slot a
millisecond after the answer. Whatever can turn a 602 into pieces - a CDN piece sealed or failed, a
piece outcome recorded (which frees a download slot and an upload slot, and may add a holder) -
notifies the task here, and every pull held on it schedules again at once.
"""

from __future__ import annotations

import asyncio


class TaskChanges:
    """One event per task with waiters; a notification wakes every current waiter, then is forgotten."""

    def __init__(self) -> None:
        self._events: dict[str, asyncio.Event] = {}
        self._waiters: dict[str, int] = {}

    def notify(self, task_id: str) -> None:
        event = self._events.pop(task_id, None)
        if event is not None:
            event.set()

    async def wait(self, task_id: str, within: float) -> bool:
        """Until the next notification for ``task_id`` (True) or ``within`` seconds (False)."""
        event = self._events.get(task_id)
        if event is None:
            event = self._events[task_id] = asyncio.Event()
        self._waiters[task_id] = self._waiters.get(task_id, 0) + 1
        try:
            async with asyncio.timeout(within):
                await event.wait()
            return True
        except TimeoutError:
            return False
        finally:
            left = self._waiters.pop(task_id) - 1
            if left:
                self._waiters[task_id] = left
            elif self._events.get(task_id) is event:
                del self._events[task_id]  # an idle task keeps nothing here
