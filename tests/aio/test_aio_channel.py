"""The asyncio client's data-path socket (cauldron_zmq.aio.link.Channel) on real sockets:
messages handed over from the loop's reader, sends that find no room wait in order,
and a withdrawn send never goes out."""
from __future__ import annotations

import asyncio
from typing import List

import pytest
import zmq
import zmq.asyncio

from cauldron_zmq.aio.link import Channel
from cauldron_zmq.testing import free_port

from aio_support import eventually

pytestmark = [pytest.mark.asyncio, pytest.mark.timeout(30)]


async def test_queued_sends_go_out_in_order_and_withdrawn_ones_never() -> None:
    ctx = zmq.asyncio.Context()
    port = free_port()
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    got: List[List[bytes]] = []
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    channel = Channel(asyncio.get_running_loop(), dealer, 0, got.append)
    try:
        # Not connected yet: a DEALER has no pipe, so every send finds no room.
        first = channel.send([b"first"])
        withdrawn = channel.send([b"withdrawn"])
        last = channel.send([b"last"])
        assert first is not None and withdrawn is not None and last is not None
        withdrawn[1] = False                      # what a cancelled request does
        router.bind(f"tcp://127.0.0.1:{port}")
        dealer.connect(f"tcp://127.0.0.1:{port}")  # room now: the reader flushes
        received = []
        for _ in range(2):
            frames = await asyncio.wait_for(router.recv_multipart(), 5)
            received.append(frames[1])
            await router.send_multipart([frames[0], b"re:" + frames[1]])
        assert received == [b"first", b"last"]
        await eventually(lambda: len(got) == 2, 5, "both replies")
        assert got == [[b"re:first"], [b"re:last"]]
        assert not channel.outbox
        assert channel.send([b"now"]) is None      # room: sent at once, nothing queued
        assert (await asyncio.wait_for(router.recv_multipart(), 5))[1] == b"now"
    finally:
        channel.close()
        router.close()
        ctx.term()
