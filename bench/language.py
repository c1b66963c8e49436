"""Benchmark: five query forms, side by side in one run, same model and threads.

For each query in bench/queries/ (an `in` list, INT, REGEX, sample(n=2), a for-loop with three
holes) it prints cogql's warm time, the floor (plain transformers feeding the same prompt text
and generating the same number of tokens per hole, with the same fp32-prompt / fp16-decode
split as the engine), LMQL 0.7.3's warm time where the peer is installed, and cogql's model
calls. Targets: every query <= 1.2x the floor and faster than LMQL 0.7.3.

Usage: python bench/language.py [--repeats N] [--no-peer]
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from collections.abc import Callable
from typing import Any

import torch
from transformers import DynamicCache

import cogql
from _common import ROOT, peer_installed, peer_warm, side_by_side, step
from cogql.lmtp.transports.inprocess import local_engine
from cogql.runtime.events import ModelCall, TextAppended

QUERIES = ["in_list", "int", "regex", "sample2", "for_loop"]


Piece = tuple[str, int | None]  # text; for generated text, the tokens the model generated


def segments(source: str) -> tuple[list[list[Piece]], int]:
    """Per program run, its text in order as (text, generated tokens or None) pieces; and the
    model calls. The count is the model's (an INT's ending character or a STOPS_BEFORE phrase
    was generated but is not in the text)."""
    runs: dict[int, list[list[Any]]] = defaultdict(list)
    generated: dict[int, list[int]] = defaultdict(list)
    calls = 0

    def on_event(event: object) -> None:
        nonlocal calls
        if isinstance(event, TextAppended):
            pieces, is_hole = runs[event.run], event.variable is not None
            if pieces and pieces[-1][1] == is_hole:
                pieces[-1][0] += event.text
            else:
                pieces.append([event.text, is_hole])
        elif isinstance(event, ModelCall):
            calls += 1
            if event.kind == "GENERATE":
                generated[event.run].append(event.tokens)

    run_query(source, output=on_event)
    out = []
    for i in sorted(runs):
        counts = iter(generated[i])
        out.append([(text, next(counts) if hole else None) for text, hole in runs[i]])
    return out, calls


def run_query(source: str, **kwargs: object) -> object:
    """Seeded, so that sampled runs produce the tokens the floor replays."""
    if source.lstrip().startswith("sample"):
        kwargs["seed"] = 7
    return cogql.run_sync(source, **kwargs)


def cold(engine, source: str) -> object:
    """One run with an empty prefix cache: the floor recomputes everything too."""
    engine.call(engine.cache.clear).result()
    return run_query(source)


def floor_run(engine, runs: list[list[Piece]]) -> Callable[[], None]:
    """Plain transformers replaying the query: prompt pieces prefilled, then as many one-token
    steps per hole as the model generated, with the engine's fp32-prompt / fp16-decode split."""
    tok, prefill = engine.tokenizer, engine.loaded.model
    decode = engine.loaded.decode_model or prefill

    def one(pieces: list[Piece]) -> None:
        cache, pending = DynamicCache(config=prefill.config), [tok.bos_token_id]
        for text, generated in pieces:
            ids = tok.encode(text)
            if generated is None:
                pending += ids
                continue
            steps = ids + ids[-1:] * max(generated - len(ids), 0) if ids else [0] * generated
            step(prefill, cache, pending)
            for token in steps[: generated - 1]:
                step(decode, cache, [token])
            pending = steps[generated - 1 : generated] or pending[-1:]

    def run() -> None:
        with torch.inference_mode():
            for pieces in runs:
                one(pieces)

    return lambda: engine.call(run).result()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    engine = local_engine(None)
    with_peer = not args.no_peer and peer_installed()
    print(f"{'query':10}{'cogql s':>9}{'floor s':>9}{'x floor':>9}{'LMQL s':>9}"
          f"{'cogql/LMQL':>12}{'calls':>7}")  # fmt: skip
    for name in QUERIES:
        path = ROOT / "bench" / "queries" / f"{name}.lmql"
        source = path.read_text()
        runs, calls = segments(source)
        warm, fl = side_by_side(
            lambda src=source: cold(engine, src), floor_run(engine, runs), args.repeats
        )
        row = f"{name:10}{warm:9.3f}{fl:9.3f}{warm / fl:9.2f}"
        if with_peer:
            lmql = peer_warm(path, args.repeats)["warm"]
            row += f"{lmql:9.3f}{warm / lmql:12.2f}"
        else:
            row += f"{'-':>9}{'-':>12}"
        print(row + f"{calls:7}", flush=True)
    print("targets: every query <= 1.2x the floor, and faster than LMQL 0.7.3")


if __name__ == "__main__":
    main()
