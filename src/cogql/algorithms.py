"""`lmql.algorithms`: LMQL's functional helpers over query functions, with a result cache.

`await map(q, items)` runs `q(item)` for every item (concurrently, `chunksize` at a time),
`await reduce(f, items)` folds them, and `await apply(q, *args)` is one call. `q` is a query
function, an LMQL prompt string (made into `F(q, where)`), or a plain (async) function. Query
results are cached by query source and arguments once `caching(True)` or `set_cache(path)`
turned the cache on (a pickle file, as LMQL's).

Where LMQL 0.7.3 fails, these work on purpose: a plain function passed to `apply`/`reduce`
is called (LMQL reads its `lmql_code` first and raises AttributeError), a query that returns an
LMQLResult gives it (LMQL calls `len()` on it and raises TypeError), and keyword arguments
such as `model=` reach the query (LMQL drops them).
"""

from __future__ import annotations

import asyncio
import inspect
import os
import pickle
import sys
import warnings
from collections.abc import Callable, Sequence
from typing import Any

from .runtime.functions import F
from .runtime.query import BoundQuery, QueryFunction
from .runtime.result import LMQLResult

__all__ = [
    "apply",
    "caching",
    "get_stats",
    "map",
    "persist_cache",
    "reduce",
    "set_cache",
    "stats",
]

DEFAULT_CACHE_FILE = ".lmql-algorithms-cache"

cache: dict[Any, Any] | None = None
cache_file: str | None = None
stats = {"total": 0, "cached": 0}


def set_cache(path: str) -> None:
    """Cache query results in the pickle file `path` (loaded now if it exists)."""
    global cache, cache_file
    cache_file = path
    cache = {}
    if os.path.exists(path):
        try:
            with open(path, "rb") as f:
                cache = pickle.load(f)
        except (OSError, pickle.UnpicklingError, EOFError) as e:
            warnings.warn(f"cannot load the cache file {path}: {e}", stacklevel=2)


def caching(state: bool) -> None:
    """Turn the result cache on (in `.lmql-algorithms-cache`) or off."""
    global cache, cache_file
    if state:
        set_cache(DEFAULT_CACHE_FILE)
    else:
        cache, cache_file = None, None


def persist_cache() -> None:
    if cache is not None and cache_file is not None:
        with open(cache_file, "wb") as f:
            pickle.dump(cache, f)


def get_stats() -> str:
    return (
        f"lmql.algorithms Stats: Total queries: {stats['total']}, Cached queries: {stats['cached']}"
    )


def _is_query(q: Any) -> bool:
    return isinstance(q, QueryFunction | BoundQuery)


def _key(code: str, args: tuple[Any, ...]) -> Any:
    """LMQL's cache key: the source and the arguments, dicts and lists made hashable."""
    parts = [tuple(sorted(a.items())) if isinstance(a, dict) else a for a in args]
    parts = [tuple(a) if isinstance(a, list) else a for a in parts]
    key = (code, *parts)
    try:
        hash(key)
    except TypeError:
        warnings.warn(
            f"cannot hash the query arguments {args!r}; caching them by their str", stacklevel=3
        )
        return code + str(args)
    return key


async def apply(q: Any, *args: Any, **kwargs: Any) -> Any:
    """One call of `q` with the algorithms' result shape: a single result is unwrapped from
    its list, and an LMQLResult with a RESULT variable gives that value, stripped."""
    if isinstance(q, str):
        q = F(q, kwargs.pop("where", None), is_async=True)
    if not _is_query(q):
        if not callable(q):
            raise TypeError(f"apply() takes a query, a prompt string or a function, got {q!r}")
        value = q(*args, **kwargs)
        return await value if inspect.isawaitable(value) else value
    stats["total"] += 1
    key = _key(q.lmql_code, args)
    if cache is not None and key in cache:
        stats["cached"] += 1
        return cache[key]
    result = await q.run(*args, **kwargs)
    if isinstance(result, list | str | tuple) and len(result) == 1:
        result = result[0]
    if isinstance(result, LMQLResult) and "RESULT" in result.variables:
        result = str(result.variables["RESULT"]).strip()
    if cache is not None:
        cache[key] = result
        persist_cache()
    return result


async def map(
    q: Any,
    items: Sequence[Any],
    chunksize: int | None = None,
    progress: bool = False,
    parameter: str | None = None,
    **kwargs: Any,
) -> list[Any]:
    """`apply(q, item)` for every item, `chunksize` at a time (all at once by default)."""
    del parameter  # accepted for LMQL's signature; it is unused there too
    items = list(items)
    size = chunksize or max(len(items), 1)
    chunks: Any = [items[i : i + size] for i in range(0, len(items), size)]
    if progress:
        import tqdm

        chunks = tqdm.tqdm(chunks, file=sys.stdout)
    results: list[Any] = []
    for chunk in chunks:
        results += await asyncio.gather(*(apply(q, x, **dict(kwargs)) for x in chunk))
    return results


async def reduce(f: Callable[..., Any] | Any, items: Sequence[Any], initial: Any = None) -> Any:
    """Fold `items` with `apply(f, acc, item)`, from `initial` or the first item."""
    items = list(items)
    if initial is None:
        if not items:
            raise TypeError("reduce() of an empty sequence with no initial value")
        acc, rest = items[0], items[1:]
    else:
        acc, rest = initial, items
    for item in rest:
        acc = await apply(f, acc, item)
    return acc
