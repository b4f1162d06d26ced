"""``RenderReader`` on a real shared-memory ring: routing, dropping, the per-render bound, cancel.

The producer side is driven the way the render worker drives it (push, then a ``Segment``); the
reader runs on a thread as in the web actor, and each render's blocks are taken on an asyncio loop.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Iterator

import numpy as np
import pytest

from actors import wire
from actors.web.renders import RenderEnd, RenderReader, RenderStream
from shm import PcmRing

RATE = 8000


@pytest.fixture
def rings() -> Iterator[tuple[PcmRing, PcmRing]]:
    name = f"skald-test-{os.getpid()}-render"
    owner = PcmRing.create(name, 8 * RATE, RATE, 4.0)
    producer, consumer = PcmRing.attach(name, "producer"), PcmRing.attach(name, "consumer")
    try:
        yield producer, consumer
    finally:
        for ring in (producer, consumer, owner):
            ring.close()
        owner.unlink()


def push(producer: PcmRing, request_id: str, audio: np.ndarray, last: bool = False) -> wire.Segment:
    start = producer.write_index
    assert producer.push(audio) == len(audio)
    return wire.Segment(request_id=request_id, index=0, start=start, end=start + len(audio), last=last)


async def drain(stream: RenderStream) -> tuple[np.ndarray, RenderEnd]:
    blocks: list[np.ndarray] = []
    while True:
        item = await stream.next_item()
        if isinstance(item, RenderEnd):
            return (np.concatenate(blocks) if blocks else np.zeros(0, np.float32)), item
        blocks.append(item)


def test_segments_reach_their_own_render_and_the_rest_is_released(rings: tuple[PcmRing, PcmRing]) -> None:
    producer, consumer = rings
    reader = RenderReader(consumer, bound_s=10.0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        a, b = reader.open("a", loop), reader.open("b", loop)
        tone_a = np.linspace(-0.5, 0.5, 1000, dtype=np.float32)
        tone_b = np.full(700, 0.25, dtype=np.float32)
        orphan = np.ones(300, dtype=np.float32)
        # Interleaved as the round-robin render worker pushes them, with a request nobody waits for.
        segments = [
            push(producer, "a", tone_a[:600]),
            push(producer, "b", tone_b),
            push(producer, "gone", orphan),
            push(producer, "a", tone_a[600:], last=True),
            push(producer, "b", tone_b[:0], last=True),
        ]
        for seg in segments:
            reader.handle(seg)
        got_a, end_a = await drain(a)
        got_b, end_b = await drain(b)
        np.testing.assert_array_equal(got_a, tone_a)
        np.testing.assert_array_equal(got_b, tone_b)
        assert end_a.status == end_b.status == "done"

    asyncio.run(main())
    assert consumer.read_index == producer.write_index == 2000, "every frame released, read or not"
    assert reader.frames_dropped == 300


def test_frames_never_announced_are_skipped(rings: tuple[PcmRing, PcmRing]) -> None:
    producer, consumer = rings
    reader = RenderReader(consumer, bound_s=10.0)
    producer.push(np.ones(500, dtype=np.float32))  # a worker pushed, then died before its Segment

    async def main() -> None:
        stream = reader.open("r", asyncio.get_running_loop())
        reader.handle(push(producer, "r", np.full(100, 0.5, dtype=np.float32), last=True))
        audio, end = await drain(stream)
        assert end.status == "done" and len(audio) == 100 and np.all(audio == 0.5)

    asyncio.run(main())
    assert consumer.read_index == 600


def test_a_slow_client_holds_the_ring_at_its_bound_and_a_cancel_lets_go(rings: tuple[PcmRing, PcmRing]) -> None:
    """The bound is what keeps a slow client's memory finite: past it the reader stops releasing
    the ring (so the render worker waits on it), and the client taking audio or a cancel frees it."""
    producer, consumer = rings
    reader = RenderReader(consumer, bound_s=0.25)  # 2000 frames

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stream = reader.open("slow", loop)
        segments = [push(producer, "slow", np.full(1500, i / 10, dtype=np.float32)) for i in range(3)]
        handled = threading.Event()

        def read_all() -> None:
            for seg in segments:
                reader.handle(seg)
            handled.set()

        thread = threading.Thread(target=read_all)
        thread.start()
        # Two blocks (3000 frames) pass the 2000-frame bound: the third waits for the client.
        while consumer.read_index < 3000:
            await asyncio.sleep(0.01)
        assert not handled.is_set() and consumer.read_index == 3000
        first = await stream.next_item()
        assert isinstance(first, np.ndarray) and first[0] == 0.0
        await asyncio.to_thread(handled.wait, 10.0)  # the client took one: the reader goes on
        assert handled.is_set() and consumer.read_index == 4500
        # A new segment past the bound again, then a cancel: the waiting reader is released.
        thread = threading.Thread(target=reader.handle, args=(push(producer, "slow", np.zeros(3000, np.float32)),))
        thread.start()
        reader.on_cancel(wire.Cancel(request_id="slow"))
        await asyncio.to_thread(thread.join, 10.0)
        assert not thread.is_alive()
        items = [await stream.next_item() for _ in range(3)]
        assert isinstance(items[-1], RenderEnd) and items[-1].status == "cancelled"

    asyncio.run(main())
    assert consumer.read_index == producer.write_index == 7500
    reader.forget("slow")
    assert reader.active() == 0
