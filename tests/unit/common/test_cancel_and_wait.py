"""``cancel_and_wait``: background tasks end at stop even when a library drops a cancel."""

from __future__ import annotations

import asyncio

from pointsman.runtime import cancel_and_wait


async def test_a_task_that_swallows_a_cancel_is_cancelled_again_until_it_ends() -> None:
    swallowed = 0

    async def loop() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:  # what nats-py's publish does while it flushes
                swallowed += 1
                if swallowed > 2:
                    raise

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)
    await cancel_and_wait([task])
    assert task.cancelled() and swallowed == 3


async def test_errors_of_stopping_tasks_are_consumed_and_done_tasks_are_left_alone() -> None:
    async def fails() -> None:
        raise RuntimeError("boom")

    async def done() -> int:
        return 1

    failing, finished = asyncio.create_task(fails()), asyncio.create_task(done())
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await cancel_and_wait([failing, finished])
    assert finished.result() == 1 and isinstance(failing.exception(), RuntimeError)


async def test_a_task_that_never_ends_is_given_up_after_the_limit() -> None:
    release = asyncio.Event()

    async def stubborn() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    await cancel_and_wait([task], every_s=0.01, limit_s=0.05)
    assert not task.done()
    release.set()
    task.cancel()
    await asyncio.wait([task])
