"""Decoders (LMQL §5): which hypotheses a query explores and which results it returns.

`argmax` and `sample` run `n` independent programs; each of their holes is one GENERATE.
`beam` (`beam_search`), `beam_sample` and `best_k` search over whole program hypotheses
(runtime/hypotheses.py), rank them by total log-probability as LMQL does, and always return a
list sorted best first.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from ..errors import QueryError, RunError
from ..language.compiler import CompiledQuery
from .events import OnEvent
from .hypotheses import Explorer, Hypothesis
from .interpreter import Decoding, QueryRun
from .model import ConnectedModel

log = logging.getLogger("cogql.runtime")


class DecoderError(QueryError, ValueError):
    """An unknown decoder, or a decoder argument it does not take or cannot use."""


class NoResultError(RunError, RuntimeError):
    """A search in which no hypothesis reached the end of the program."""


# LMQL accepts these with every decoder (PromptInterpreter.EXTRA_DECODER_ARGS); cogql uses
# max_len, top_k, top_p (sampling decoders) and step_budget, and ignores the others, which
# tune LMQL's own chunking, caching and output. `seed` is cogql's: reproducible sampling.
EXTRA_DECODER_ARGS = frozenset(
    {"max_len", "max_length", "seed", "chunksize", "openai_chunksize", "chunk_timeout",
     "cache", "show_speculative", "step_budget", "verbose", "certificate", "top_k", "top_p",
     "repetition_penalty", "frequency_penalty", "presence_penalty", "alpha", "output_writer",
     "stats", "performance_stats", "distribution_batch_size", "openai_nonstop",
     "chatty_openai"}
)  # fmt: skip


@dataclass(frozen=True)
class DecoderSpec:
    params: frozenset[str]  # its own arguments, besides EXTRA_DECODER_ARGS
    always_list: bool  # LMQL §3.4: search decoders return a list even for n=1


_BEAM = DecoderSpec(frozenset({"n", "num_beams"}), always_list=True)
DECODERS = {
    "argmax": DecoderSpec(frozenset({"n"}), always_list=False),
    "sample": DecoderSpec(frozenset({"n", "temperature"}), always_list=False),
    "beam": _BEAM,
    "beam_search": _BEAM,
    "beam_sample": DecoderSpec(frozenset({"n", "num_beams", "temperature"}), always_list=True),
    "best_k": DecoderSpec(frozenset({"n", "k", "budget"}), always_list=True),
}
DECODER_ARGS = EXTRA_DECODER_ARGS.union(*(d.params for d in DECODERS.values()))


def check_decoder(name: str, args: dict[str, Any]) -> None:
    """Reject decoders cogql lacks and arguments the decoder does not take, as LMQL does."""
    if name not in DECODERS:
        names = ", ".join(DECODERS)
        raise DecoderError(f"decoder {name!r} is not supported (use one of {names})")
    unknown = set(args) - DECODERS[name].params - EXTRA_DECODER_ARGS
    if name == "argmax" and args.get("temperature") == 0:
        unknown.discard("temperature")  # greedy already; only a real temperature conflicts
    if unknown:
        names = ", ".join(sorted(unknown))
        raise DecoderError(f"Unknown decoder argument: {names} (not an argument of {name})")
    for key in ("n", "k", "num_beams", "budget", "max_len", "max_length", "step_budget"):
        if key in args:
            _positive_int(name, key, args[key])
    if "temperature" in args and not _non_negative(args["temperature"]):
        raise DecoderError(
            f"decoder argument temperature for {name} must be a number >= 0, "
            f"got {args['temperature']!r}"
        )


def _positive_int(decoder: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise DecoderError(
            f"decoder argument {key} for {decoder} must be a positive integer, got {value!r}"
        )
    return value


def _non_negative(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and value >= 0


def decoding_of(name: str, args: dict[str, Any]) -> Decoding:
    default_temperature = 1.0 if name in ("sample", "beam_sample") else 0.0
    return Decoding(
        temperature=float(args.get("temperature", default_temperature)),
        seed=args.get("seed"),
        max_len=int(args.get("max_len", args.get("max_length", 2048))),
        top_k=args.get("top_k"),
        top_p=args.get("top_p"),
    )


async def decode(
    name: str,
    args: dict[str, Any],
    query: CompiledQuery,
    conn: ConnectedModel,
    scope: dict[str, Any],
    on_event: OnEvent | None = None,
) -> Any:
    """Run `query` with decoder `name`; the result shape follows LMQL §3.4."""
    check_decoder(name, args)
    decoding = decoding_of(name, args)
    if not DECODERS[name].always_list:
        runs = [QueryRun(query, conn, scope, decoding, on_event, index=i) for i in range(_n(args))]
        results = await asyncio.gather(*(r.execute() for r in runs))
        if len(results) == 1 or not any(r.state.holes_filled for r in runs):
            return results[0]  # a program that reaches no hole gives one result
        return list(results)
    explorer = Explorer(query, conn, scope, decoding, on_event)
    root = await explorer.start()
    if root.complete and not root.run.state.holes_filled:
        return await explorer.result(root, 0)  # a program that reaches no hole: one result
    found = [root] if root.complete else await _SEARCHES[name](explorer, root, args)
    if not found:
        raise NoResultError(
            f"{name}: no hypothesis reached the end of the query (every continuation broke a "
            "constraint checked in Python, or step_budget ran out)"
        )
    explorer.kept(-1, [], found, final=True)
    return list(await asyncio.gather(*(explorer.result(h, i) for i, h in enumerate(found))))


def _n(args: dict[str, Any], default: int = 1) -> int:
    return int(args.get("n", args.get("num_beams", args.get("k", default))))


def _step_budget(args: dict[str, Any]) -> int:
    max_len = int(args.get("max_len", args.get("max_length", 2048)))
    return int(args.get("step_budget", max(1024, max_len)))


# ---- searches -------------------------------------------------------------------------------

Search = Callable[[Explorer, Hypothesis, dict[str, Any]], Awaitable[list[Hypothesis]]]


def _best(hs: list[Hypothesis], n: int) -> list[Hypothesis]:
    """The n highest-scoring hypotheses, best first (stable on ties)."""
    return sorted(hs, key=lambda h: -h.logprob)[:n]


async def _expand_all(
    x: Explorer, hs: list[Hypothesis], width: int, sampling: Decoding | None, step: int
) -> tuple[list[Hypothesis], list[Hypothesis]]:
    """Every hypothesis' children, all ops of the step sent at once; (finished, open)."""
    groups = await asyncio.gather(
        *(x.expand(h, width, sampling, (step, i)) for i, h in enumerate(hs))
    )
    children = [c for g in groups for c in g]
    return [c for c in children if c.complete], [c for c in children if not c.complete]


async def _beam_loop(
    x: Explorer, root: Hypothesis, n: int, sampling: Decoding | None, budget: int
) -> list[Hypothesis]:
    """Each step grows every open hypothesis by its `n` best (or `n` sampled) next tokens and
    keeps the `n` best open and the `n` best finished ones; an open hypothesis that can no
    longer beat the n-th finished one is dropped (log-probs only fall as tokens are added)."""
    active: list[Hypothesis] = [root]
    done: list[Hypothesis] = []
    for step in range(budget):
        finished, open_ = await _expand_all(x, active, n, sampling, step)
        done = _best(done + finished, n)
        active = _best(open_, n)
        if len(done) == n:
            active = [h for h in active if h.logprob > done[-1].logprob]
        x.kept(step, active, done)
        if not active:
            return done
    _warn_budget(budget)
    return done


async def _beam_search(x: Explorer, root: Hypothesis, args: dict[str, Any]) -> list[Hypothesis]:
    return await _beam_loop(x, root, _n(args, 4), None, _step_budget(args))


async def _beam_sample(x: Explorer, root: Hypothesis, args: dict[str, Any]) -> list[Hypothesis]:
    """Beam search whose children are `n` draws per hypothesis at `temperature`."""
    return await _beam_loop(
        x, root, _n(args, 4), decoding_of("beam_sample", args), _step_budget(args)
    )


async def _best_k(x: Explorer, root: Hypothesis, args: dict[str, Any]) -> list[Hypothesis]:
    """Best-first search: each round grows the `k` best open hypotheses of any length by their
    `k` best next tokens. It ends when no open hypothesis can beat the k-th finished one, so
    the results are the k most likely sequences under the constraints; after `budget` rounds
    the best open hypotheses are finished greedily instead."""
    k = _n(args, 4)
    budget = int(args.get("budget", 30))
    frontier: list[Hypothesis] = [root]
    done: list[Hypothesis] = []
    for step in range(budget):
        if len(done) == k:
            frontier = [h for h in frontier if h.logprob > done[-1].logprob]
        if not frontier:
            return done
        frontier = _best(frontier, len(frontier))
        finished, open_ = await _expand_all(x, frontier[:k], k, None, step)
        done = _best(done + finished, k)
        frontier = frontier[k:] + open_
        x.kept(step, frontier, done)
    if len(done) == k:
        frontier = [h for h in frontier if h.logprob > done[-1].logprob]
    rest = await _greedy(x, _best(frontier, k - len(done)), _step_budget(args))
    return _best(done + rest, k)


async def _greedy(x: Explorer, hs: list[Hypothesis], budget: int) -> list[Hypothesis]:
    """Finish every hypothesis by always taking its best next token."""
    done: list[Hypothesis] = []
    for step in range(budget):
        if not hs:
            return done
        finished, hs = await _expand_all(x, hs, 1, None, step)
        done += finished
    _warn_budget(budget)
    return done


def _warn_budget(budget: int) -> None:
    log.warning(
        "the decoder stopped after step_budget=%d steps; unfinished hypotheses are dropped",
        budget,
    )


_SEARCHES: dict[str, Search] = {
    "beam": _beam_search,
    "beam_search": _beam_search,
    "beam_sample": _beam_sample,
    "best_k": _best_k,
}
