"""What one engine turn computes: which prompt tokens are prefilled, and which rows share a
padded forward pass. Pure decisions over lengths, so they can be tested without a model.

Prefill is chunked: a turn computes at most `PREFILL_CHUNK` prompt tokens in all, shortest
remaining prompt first, and every turn also runs a decode step for the streams already
generating. A 3,500-token prompt therefore delays another client's first token by about one
chunk, not by its whole prefill. A prompt passed over for `STARVED_TURNS` turns goes first, so a
stream of short prompts cannot hold a long one back for ever.

Rows of a padded pass are padded to the longest one; grouping rows by length pads no row to
more than `MAX_PADDING` times its own length (rows no longer than `PADDING_FLOOR` always
share), so one long context does not multiply every short stream's memory and time.
"""

from __future__ import annotations

from collections.abc import Sequence

PREFILL_CHUNK = 512
STARVED_TURNS = 8
MAX_PADDING = 2.0
PADDING_FLOOR = 256


def plan_prefill(remaining: Sequence[int], starved: Sequence[bool], budget: int) -> list[int]:
    """How many of its remaining prompt tokens each job computes this turn, `budget` in all:
    starved jobs first, then the shortest; whole prompts while they fit, then one partial
    chunk of the next."""
    order = sorted(range(len(remaining)), key=lambda i: (not starved[i], remaining[i]))
    takes = [0] * len(remaining)
    left = budget
    for i in order:
        if left <= 0:
            break
        takes[i] = min(remaining[i], left)
        left -= takes[i]
    return takes


def length_groups(
    lengths: Sequence[int], *, max_padding: float = MAX_PADDING, floor: int = PADDING_FLOOR
) -> list[list[int]]:
    """Indices of rows that may share one padded pass: a row joins a group whose longest
    length is at most `max_padding` times its own (or at most `floor`), so no row is padded
    to more than that and a group's padded cache holds at most that many times its real
    positions. Longest groups first; within a group, indices in their given order (a decode
    batch keeps its cache while its rows stay the same, in the same order)."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    groups: list[list[int]] = []
    width = 0
    for i in order:
        if groups and (width <= floor or width <= max_padding * lengths[i]):
            groups[-1].append(i)
        else:
            groups.append([i])
            width = lengths[i]
    return [sorted(g) for g in groups]
