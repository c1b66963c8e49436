"""LoopSink: the engine's events reach an event loop in order, with one wake-up per burst."""

from __future__ import annotations

import asyncio
import threading

from cogql.engine.sink import LoopSink
from cogql.lmtp.messages import Event, TokenEvent


def test_a_burst_arrives_in_order_with_one_wake_up() -> None:
    loop = asyncio.new_event_loop()
    got: list[Event] = []
    sink = LoopSink(loop, got.append)
    wakes = 0
    real = loop.call_soon_threadsafe

    def counted(*args: object) -> object:
        nonlocal wakes
        wakes += 1
        return real(*args)  # type: ignore[arg-type]

    loop.call_soon_threadsafe = counted  # type: ignore[method-assign]
    sent = [TokenEvent(i % 4, i, -0.5) for i in range(100)]
    engine = threading.Thread(target=lambda: [sink(e) for e in sent])
    engine.start()
    engine.join()  # the loop is not running yet: the whole burst waits for one drain
    loop.run_until_complete(asyncio.sleep(0))
    assert got == sent and wakes == 1
    sink(TokenEvent(0, 7, 0.0, "stop"))  # the next burst wakes the loop again
    loop.run_until_complete(asyncio.sleep(0))
    assert got[-1].token == 7 and wakes == 2  # type: ignore[union-attr]
    loop.close()
    sink(TokenEvent(0, 8, 0.0))  # a closed loop: dropped, no error on the engine's thread
    assert len(got) == 101
