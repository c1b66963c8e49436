"""Request bodies: read with a size cap, parsed as one JSON object, every failure a 4xx.

A body is read chunk by chunk and refused (413) as soon as it passes the cap, or at once when
its Content-Length says it will, so an oversized body is never held in memory. A body that is
not JSON, not an object, nested deeper than MAX_DEPTH, or holds NaN, an infinite number or a lone
surrogate (which the answer could not echo back as JSON) is a 400. All are problem JSON, as Replicate answers.
"""

from __future__ import annotations

import json
import math
from typing import Any

from starlette.requests import ClientDisconnect, Request

from .errors import BadRequest, PayloadTooLarge

MAX_BODY_BYTES = 8 * 1024 * 1024
MAX_DEPTH = 64


def _too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"the request body is larger than {limit} bytes, this emulator's limit "
        f"(`cogql replicate serve --max-body-mb`); send less input per prediction"
    )


async def read_body(request: Request, limit: int = MAX_BODY_BYTES) -> bytes:
    """The whole body, or PayloadTooLarge as soon as it passes `limit` bytes."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        raise _too_large(limit)
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
    except ClientDisconnect:
        raise BadRequest("the client closed the connection before the body ended") from None
    return b"".join(chunks)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:20]} is too large for a 64-bit float")
    return value


def _problem(value: Any, limit: int) -> str | None:
    """What makes a parsed body unusable, walking it without recursion: containers nested
    deeper than `limit`, or strings with lone surrogates (`"\\ud800"`: no UTF-8 for them)."""
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str):
            try:
                item.encode()
            except UnicodeEncodeError:
                return f"the request body holds an unpaired surrogate escape in {item[:40]!r}"
            continue
        if depth > limit:
            return f"the request body is nested too deeply (the limit is {limit} levels)"
        if isinstance(item, dict):
            stack.extend((key, depth) for key in item)
        children = item.values() if isinstance(item, dict) else item
        stack.extend((c, depth + 1) for c in children if isinstance(c, str | dict | list))
    return None


def parse_object(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object ({} when empty); BadRequest (400) for anything else."""
    if not raw.strip():
        return {}
    try:
        body = json.loads(raw, parse_constant=_reject_constant, parse_float=_finite)
    except RecursionError:
        raise BadRequest(
            f"the request body is nested too deeply (the limit is {MAX_DEPTH} levels)"
        ) from None
    except ValueError as e:  # includes bad UTF-8 and integers of over 4300 digits
        raise BadRequest(f"the request body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    if (problem := _problem(body, MAX_DEPTH)) is not None:
        raise BadRequest(problem)
    return body
