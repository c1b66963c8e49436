"""Running a query from a command line so that one Ctrl-C ends it.

`asyncio.run` answers the first SIGINT by cancelling the main task, which lands only at the
task's next `await`: a query busy in its own Python code (`while True: pass`) runs on until a
second Ctrl-C. Here SIGINT raises KeyboardInterrupt wherever the main thread is, as Python does
outside asyncio; `asyncio.run` then cancels the tasks left, whose model calls are cancelled as
their streams close, before it re-raises. A second Ctrl-C during that cleanup ends the process.
"""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Coroutine
from types import FrameType
from typing import Any, TypeVar

T = TypeVar("T")


def run_interruptible(coro: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(coro)`, raising KeyboardInterrupt on the first SIGINT. Where SIGINT is
    not Python's default (ignored, or handled by the caller) it is left as it is."""
    ours = (
        threading.current_thread() is threading.main_thread()
        and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    )
    if not ours:
        return asyncio.run(coro)
    signal.signal(signal.SIGINT, _interrupt)
    try:
        return asyncio.run(coro)
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)


def _interrupt(signum: int, frame: FrameType | None) -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)  # a second Ctrl-C: no more cleanup
    raise KeyboardInterrupt
