"""The hand-off of blocks from a PATCH's receiver to its writer (tusserver/handoff.py)."""

from __future__ import annotations

import anyio
import pytest

from tusserver.handoff import Handoff

pytestmark = pytest.mark.anyio


async def test_blocks_arrive_in_order_and_the_end_after_the_last_one() -> None:
    handoff = Handoff()
    taken: list[list[bytes]] = []

    async def take() -> None:
        async for block in handoff:
            taken.append(block)
            await anyio.sleep(0.001)  # a write: the sender queues the next meanwhile

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(take)
            for number in range(20):
                await handoff.send([bytes([number])])
            handoff.close_sending()

    assert taken == [[bytes([number])] for number in range(20)]


async def test_a_sender_waits_while_a_block_is_queued() -> None:
    handoff = Handoff()
    await handoff.send([b"first"])  # queued: nobody took it yet
    second_sent = anyio.Event()

    async def send_second() -> None:
        await handoff.send([b"second"])
        second_sent.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send_second)
            await anyio.sleep(0.01)
            assert not second_sent.is_set()  # one block queued, no more
            assert await handoff.__anext__() == [b"first"]
            assert await handoff.__anext__() == [b"second"]
    assert second_sent.is_set()


async def test_a_sender_woken_late_still_wakes_the_receiver_that_waits_again() -> None:
    # The receiver takes the queued block (waking the sender) and at once
    # waits for the next, before the woken sender ran: the sender must hand
    # its block to that new wait, not lose it.
    handoff = Handoff()
    await handoff.send([b"one"])
    taken: list[list[bytes]] = []

    async def take_two() -> None:
        taken.append(await handoff.__anext__())
        taken.append(await handoff.__anext__())

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(handoff.send, [b"two"])  # waits: "one" is queued
            await anyio.sleep(0.01)
            tasks.start_soon(take_two)

    assert taken == [[b"one"], [b"two"]]


async def test_a_sender_is_refused_once_the_receiver_closed() -> None:
    handoff = Handoff()
    await handoff.send([b"queued"])
    refused = anyio.Event()

    async def send_more() -> None:
        with pytest.raises(anyio.BrokenResourceError):
            await handoff.send([b"more"])
        refused.set()

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(send_more)
            await anyio.sleep(0.01)
            handoff.close_receiving()  # the writer stopped (a storage failure)
    assert refused.is_set()
    with pytest.raises(anyio.BrokenResourceError):
        await handoff.send([b"after"])


async def test_a_receiver_cancelled_while_waiting_leaves_the_hand_off_usable() -> None:
    handoff = Handoff()
    with anyio.move_on_after(0.01):
        await handoff.__anext__()  # nothing sent: cancelled while waiting
    await handoff.send([b"late"])
    assert await handoff.__anext__() == [b"late"]
    handoff.close_sending()
    with pytest.raises(StopAsyncIteration):
        await handoff.__anext__()
