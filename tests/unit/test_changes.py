"""Held pulls wake lowest priority first (the pull loop uses the pieces a client holds)."""

from __future__ import annotations

import asyncio

from supernode.changes import TaskChanges


async def test_waiters_wake_in_priority_order_then_in_arrival_order() -> None:
    changes = TaskChanges()
    woken: list[str] = []

    async def waiter(name: str, priority: int) -> None:
        assert await changes.wait("t", 5.0, priority=priority)
        woken.append(name)

    tasks = [asyncio.create_task(waiter(name, p)) for name, p in [("c", 3), ("a", 1), ("b1", 2), ("b2", 2)]]
    await asyncio.sleep(0)
    assert changes.waiting("t")
    changes.notify("t")
    changes.notify("t")  # one wake-up per loop step, however many notifications
    await asyncio.gather(*tasks)
    assert woken == ["a", "b1", "b2", "c"]
    assert not changes.waiting("t")


async def test_a_waiter_that_joins_before_the_wake_up_runs_is_woken_too() -> None:
    changes = TaskChanges()
    first = asyncio.create_task(changes.wait("t", 5.0, priority=5))
    await asyncio.sleep(0)

    async def reporter() -> bool:
        changes.notify("t")  # as a recorded piece outcome does
        return await changes.wait("t", 5.0, priority=0)  # then the reporting pull joins the queue

    assert await asyncio.wait_for(asyncio.gather(first, reporter()), 1.0) == [True, True]


async def test_a_wait_times_out_and_leaves_nothing_behind() -> None:
    changes = TaskChanges()
    assert not await changes.wait("t", 0.01)
    assert not changes.waiting("t")
    changes.notify("t")  # nobody waits: nothing to do
