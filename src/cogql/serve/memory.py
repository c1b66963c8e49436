"""Hand freed heap back to the operating system once a server is idle.

glibc keeps what a process frees in its arenas for reuse. After a burst of large frames
(tokenizer hand-outs, long prompts, a reply backlog that was cut off) an idle server would
keep that memory for good: bench/soak.py measured 25% more RSS after every client had gone.
`malloc_trim` returns it, and a fixed mmap threshold keeps large buffers out of the arenas in
the first place (glibc raises its threshold each time such a buffer is freed, so later large
frames land in the heap and stay). Where the C library has neither call this does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from collections.abc import Callable

M_MMAP_THRESHOLD = -3  # mallopt's parameter number in glibc's malloc.h
LARGE_BUFFER_BYTES = 1 << 20


def _libc_call(name: str) -> Callable[..., int] | None:
    try:
        return getattr(ctypes.CDLL(ctypes.util.find_library("c")), name)
    except (OSError, AttributeError, TypeError):  # not glibc
        return None


_TRIM = _libc_call("malloc_trim")
_MALLOPT = _libc_call("mallopt")


def map_large_buffers() -> None:
    """Buffers of a MiB and more get their own mapping, returned to the system when freed."""
    if _MALLOPT is not None:
        _MALLOPT(M_MMAP_THRESHOLD, LARGE_BUFFER_BYTES)


def release_free_memory() -> bool:
    """Returns whether any memory went back (False where the C library cannot say)."""
    return bool(_TRIM(0)) if _TRIM is not None else False
