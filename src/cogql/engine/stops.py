"""When a stop string ends a GENERATE: the same rule for every engine (LMTP's `stop`)."""

from __future__ import annotations


def ends_at_stop(text: bytes | bytearray, new: int, stops: list[bytes]) -> bool:
    """Whether a stop string ends inside the last `new` bytes of `text` (the token just
    generated). One that ended earlier was generated while the stops were inactive (before
    min_tokens), so it does not count."""
    end = len(text) - new
    return any(x in text[max(end - len(x) + 1, 0) :] for x in stops)
