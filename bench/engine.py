"""Benchmark: examples/sentiment.lmql in-process, side by side in one run.

Prints, for the same model, threads and machine:
  - cogql warm wall time (median of several runs),
  - the floor: plain transformers greedy generation of the same ANALYSIS tokens plus one
    batched scoring pass of the three options over the full prompt,
  - LMQL 0.7.3 warm wall time (when the peer from ../shared/tools/lmql-peer is installed),
  - fresh-process time of `cogql run` vs a fresh LMQL process on the same query,
  - the mean cost of a grammar mask per token.

Usage: python bench/engine.py [--repeats N] [--dtype auto|float32|float16] [--no-peer]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import DynamicCache

import cogql
from _common import PEER_MODEL, PEER_PY, ROOT, peer_installed, peer_warm, side_by_side, step
from cogql.engine.masks import mask_logits
from cogql.grammar import GrammarCompiler
from cogql.lmtp.transports.inprocess import local_engine

QUERY = ROOT / "examples" / "sentiment.lmql"
OPTIONS = [" positive", " negative", " neutral"]


def cogql_run(model, engine) -> Callable[[], object]:
    """Warm process, empty prefix cache each run: the floor and LMQL recompute everything too."""
    source = QUERY.read_text()

    def run() -> object:
        engine.call(engine.cache.clear).result()
        return cogql.run_sync(source, model=model)

    return run


def floor_run(engine, result) -> Callable[[], None]:
    """Plain transformers, the cheapest way to the same answer: greedy generation of the same
    ANALYSIS tokens (with the same fp32-prompt / fp16-decode split as cogql's engine when it
    uses one), the rest of the prompt fed onto the same KV cache, and one batched pass that
    scores the three options over a copy of that cache per option."""
    tok = engine.tokenizer
    first_a = result.prompt.index("\nA:") + 3
    prompt_ids = [tok.bos_token_id, *tok.encode(result.prompt[:first_a])]
    analysis = tok.encode(result.variables["ANALYSIS"])
    end = first_a + len(result.variables["ANALYSIS"])
    rest = tok.encode(result.prompt[end : -len(result.variables["CLASSIFICATION"])])
    opts = [tok.encode(o) for o in OPTIONS]
    prefill = engine.loaded.model
    decode = engine.loaded.decode_model or prefill

    def run() -> None:
        with torch.inference_mode():
            cache = DynamicCache(config=prefill.config)
            nxt = int(step(prefill, cache, prompt_ids).argmax())
            for _ in range(len(analysis)):
                nxt = int(step(decode, cache, [nxt]).argmax())
            step(prefill, cache, rest)
            n, width = len(opts), max(len(o) for o in opts) - 1
            if width == 0:  # one-token options: the last logits already score them
                return
            rows = torch.tensor([o[:-1] + [0] * (width - len(o) + 1) for o in opts])
            kv = [(x.keys.expand(n, -1, -1, -1), x.values.expand(n, -1, -1, -1))
                  for x in cache.layers]  # fmt: skip
            batch = DynamicCache(ddp_cache_data=kv, config=prefill.config)
            torch.log_softmax(prefill(input_ids=rows, cache=batch, use_cache=True).logits, -1)

    # on the engine's thread: a second thread running torch would slow both (see engine.py)
    return lambda: engine.call(run).result()


def mask_cost(engine) -> float:
    """Mean microseconds to compute and apply one grammar mask (INT, options, regex)."""
    compiler = GrammarCompiler(engine.tokenizer)
    grammars = [
        "start: VALUE\nVALUE: / ?[0-9]+/",
        "start: VALUE\nVALUE: /( positive| negative| neutral)/",
        "start: VALUE\nVALUE: /[0-9]{4}-[0-9]{2}-[0-9]{2}/",
    ]
    logits = torch.zeros(engine.tokenizer.vocab_size)
    n, total = 0, 0.0
    for g in grammars:
        m = compiler.matcher(g)
        for _ in range(50):
            row = logits.clone()
            start = time.perf_counter()
            mask_logits(m, row)
            total += time.perf_counter() - start
            n += 1
    return total / n * 1e6


def timed_process(argv: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - start


def fresh_processes(repeats: int, with_peer: bool) -> tuple[float, float | None]:
    """Median wall time of fresh `cogql run` and (alternating with it) fresh LMQL processes."""
    cogql_argv = [str(Path(sys.executable).parent / "cogql"), "run", str(QUERY), "--json"]
    peer_argv = [str(PEER_PY), str(ROOT / "bench" / "_peer.py"), str(QUERY), str(PEER_MODEL), "1"]
    ours, theirs = [], []
    for _ in range(repeats):
        ours.append(timed_process(cogql_argv))
        if with_peer:
            theirs.append(timed_process(peer_argv))
    return statistics.median(ours), statistics.median(theirs) if theirs else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    model = cogql.model(None, dtype=args.dtype)
    engine = local_engine(None, dtype=args.dtype)
    print(f"torch threads={torch.get_num_threads()} dtype={engine.loaded.dtype} "
          f"cpu cores={os.cpu_count()}")  # fmt: skip
    ours = cogql_run(model, engine)
    result = ours()
    warm, fl = side_by_side(ours, floor_run(engine, result), args.repeats)
    mask_us = mask_cost(engine)
    with_peer = not args.no_peer and peer_installed()
    lmql = peer_warm(QUERY, args.repeats) if with_peer else None
    fresh, lmql_fresh = fresh_processes(3, with_peer)
    print(f"{'':28}{'seconds':>10}{'ratio':>10}")
    print(f"{'floor (transformers)':28}{fl:10.3f}{1.0:10.2f}")
    print(f"{'cogql warm':28}{warm:10.3f}{warm / fl:10.2f}   (target <= 1.15x floor)")
    if lmql:
        print(f"{'LMQL 0.7.3 warm':28}{lmql['warm']:10.3f}{lmql['warm'] / fl:10.2f}")
        print(f"{'cogql / LMQL warm':28}{'':10}{warm / lmql['warm']:10.2f}   (target <= 0.5)")
        print(f"{'cogql fresh process':28}{fresh:10.3f}")
        print(f"{'LMQL fresh process':28}{lmql_fresh:10.3f}")
        print(f"{'cogql / LMQL fresh':28}{'':10}{fresh / lmql_fresh:10.2f}   (target <= 0.7)")
        same = lmql["variables"].get("CLASSIFICATION") == result.variables["CLASSIFICATION"]
        print(f"same CLASSIFICATION as LMQL: {same}")
    else:
        print(f"{'cogql fresh process':28}{fresh:10.3f}")
        print("LMQL peer not installed (make peer): LMQL columns skipped")
    print(f"mask cost per token: {mask_us:.1f} us (grammar mask computed and applied)")
    print(f"CLASSIFICATION={result.variables['CLASSIFICATION']!r} "
          f"P={[round(p, 3) for _, p in result.variables['P(CLASSIFICATION)']]}")  # fmt: skip


if __name__ == "__main__":
    main()
