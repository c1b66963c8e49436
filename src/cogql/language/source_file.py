"""Reading a query file: UTF-8 text of bounded size, or a clear error saying which file and why.

The cap keeps a mistaken argument (a model checkpoint, a log) from being read whole into
memory and handed to the compiler; real queries are a few kilobytes.
"""

from __future__ import annotations

from typing import IO

from ..errors import QueryError

MAX_QUERY_BYTES = 1 << 20  # 1 MiB


class QueryFileError(QueryError, ValueError):
    """A query file that cannot be read as a query: unreadable, too large, or not UTF-8."""


def read_query_source(stream: IO[bytes], name: str, limit: int = MAX_QUERY_BYTES) -> str:
    """The text of the query in `stream` (named `name` in errors), at most `limit` bytes of
    UTF-8 (a leading byte-order mark is dropped)."""
    try:
        data = stream.read(limit + 1)
    except OSError as e:
        raise QueryFileError(f"cannot read {name}: {e.strerror or e}") from None
    if len(data) > limit:
        raise QueryFileError(
            f"{name} is larger than {limit:,} bytes, the limit for a query file; "
            "is it the query you meant to run?"
        )
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise QueryFileError(
            f"{name} is not UTF-8 text: byte 0x{data[e.start]:02x} at offset {e.start} "
            f"(line {line}) is not valid UTF-8; save the query as UTF-8"
        ) from None
