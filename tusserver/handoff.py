"""Blocks from a PATCH's receiver to its writer, one queued at a time.

What ``anyio.create_memory_object_stream(1)`` does for this one pair of
tasks, without the checkpoint it takes on every send and every receive:
each is a turn of the event loop (an ``epoll_wait`` and a pass over the
ready callbacks) even when the block is there, and a short PATCH took
three of its fourteen turns in them.

It waits on plain asyncio futures, which anyio's cancel scopes cancel as
they cancel anything else, and whose shield they respect.
"""

from __future__ import annotations

import asyncio

import anyio

from storage_backends.base import Block


class Handoff:
    """One sender, one receiver; a block queued beside the one being written."""

    def __init__(self) -> None:
        self._queued: Block | None = None
        self._sender_done = False
        self._receiver_done = False
        self._waiter: asyncio.Future[None] | None = None  # whoever waits for the other side

    async def send(self, block: Block) -> None:
        """Queue ``block``, waiting while another is queued.

        Raises ``anyio.BrokenResourceError`` once the receiver closed (it
        will take no block again).
        """
        while self._queued is not None and not self._receiver_done:
            await self._wait()
        if self._receiver_done:
            raise anyio.BrokenResourceError
        self._queued = block
        self._wake()

    def close_sending(self) -> None:
        """No block will follow: the receiver ends once it took the queued one."""
        self._sender_done = True
        self._wake()

    def close_receiving(self) -> None:
        """No block will be taken again: a waiting or later ``send`` raises."""
        self._receiver_done = True
        self._queued = None
        self._wake()

    def __aiter__(self) -> Handoff:
        return self

    async def __anext__(self) -> Block:
        while self._queued is None:
            if self._sender_done or self._receiver_done:
                raise StopAsyncIteration
            await self._wait()
        block, self._queued = self._queued, None
        self._wake()  # a sender waiting for the slot
        return block

    async def _wait(self) -> None:
        # One side waits at a time (the sender for a full slot, the receiver
        # for an empty one), and only the other side wakes it. Woken, a
        # sender may resume after the receiver began to wait again: it must
        # not forget that waiter.
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            if self._waiter is waiter:
                self._waiter = None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
