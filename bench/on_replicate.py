"""Benchmark: a query over Replicate's API on loopback, cogql's method vs LMQL's traffic pattern.

The embedded model is built as a Cog project and served by the emulator with an injected
per-prediction latency (Replicate's queueing and network). Each query runs twice, side by side:
with cogql's extensions (ops packed into predictions, holes generated server-side with stop
strings, distribution options scored in the last hole's prediction) and with LMQL's pattern
(cogql's client with extensions off, one op per prediction, and predictions left running once
the answer is complete, as LMQL leaves them; a query's wall time includes waiting for them, as
the next query's predictions would queue behind them on the model's one instance). For each:
predictions made, tokens generated after the stop, wall time. Targets on the sentiment query:
<= 2 predictions (LMQL: 4 plus a lookup), 0 tokens after the stop, wall time <= 0.5x LMQL's
pattern.

A second query whose hole really ends at a stop phrase (the seed query's ANALYSIS ends at EOS
on this model) shows what a server-side stop saves; a third, with two holes and the
distribution in one prompt statement, what sending them ahead saves (one prediction).

Usage: python bench/on_replicate.py [--latency 0.5] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import cogql
from _common import ROOT, build_project
from cogql.engine.models import resolve_model_path
from cogql.lmtp.transports.replicate import forget_lookups
from cogql.replicate.emulator import ReplicateEmulator

SENTIMENT = (ROOT / "examples" / "sentiment.lmql").read_text()
STOPPING = """argmax
    "Colours:\\n1. Red\\n2. Blue\\n3.[THIRD]"
where STOPS_AT(THIRD, "\\n") and len(TOKENS(THIRD)) < 64
"""
STATEMENT = """argmax
    "Q: What is the capital of France?\\nA:[A]\\nQ: And of Italy?\\nA:[B]\\nQ: Both in Europe?\\nA:[C]"
where len(TOKENS(A)) < 12 and len(TOKENS(B)) < 12 and STOPS_AT(A, ".") and STOPS_AT(B, ".")
distribution C in [" yes", " no"]
"""
MODES = {"cogql": {}, "LMQL pattern": {"extensions": False, "max_ops": 1, "cancel": False}}


def run(source: str, options: dict) -> tuple[float, object]:
    model = cogql.model("bench/smollm2", endpoint="replicate:bench/smollm2",
                        tokenizer=str(resolve_model_path(None)), **options)  # fmt: skip
    start = time.perf_counter()
    result = cogql.run_sync(source, model=model)
    return time.perf_counter() - start, result


def measure(source: str, options: dict, repeats: int) -> tuple[int, float, object]:
    """(predictions of a first run in a new process, median warm wall time, a warm result)."""
    forget_lookups()
    _, first = run(source, options)
    runs = [run(source, options) for _ in range(repeats)]
    return len(first.cost.predictions), statistics.median(t for t, _ in runs), runs[-1][1]


def report(name: str, source: str, repeats: int) -> None:
    print(f"{name}")
    print(f"  {'mode':14}{'first run':>10}{'predictions':>12}{'ops per prediction':>20}"
          f"{'after stop':>11}{'wall s':>8}")  # fmt: skip
    walls = {}
    for mode, options in MODES.items():
        first, wall, result = measure(source, options, repeats)
        cost = result.cost
        ops = "+".join(str(len(p.ops)) for p in cost.predictions)
        walls[mode] = wall
        print(f"  {mode:14}{first:>10}{len(cost.predictions):>12}{ops:>20}"
              f"{cost.tokens_wasted:>11}{wall:8.2f}")  # fmt: skip
    ratio = walls["cogql"] / walls["LMQL pattern"]
    print(f"  cogql / LMQL pattern wall time: {ratio:.2f}")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    os.environ["COGQL_REPLICATE_CACHE"] = "off"
    with tempfile.TemporaryDirectory() as tmp:
        project = build_project(Path(tmp), "smollm2", resolve_model_path(None), "r8.im/bench")
        with ReplicateEmulator([project], latency=args.latency) as emu:
            os.environ.update(emu.env)
            print(f"Replicate's API on loopback, {args.latency}s injected per prediction; "
                  "'first run' counts the predictions of a new process (tokenizer= given, "
                  "as LMQL needs)")  # fmt: skip
            report("sentiment query (examples/sentiment.lmql)", SENTIMENT, args.repeats)
            report("a hole that ends at its stop phrase", STOPPING, args.repeats)
            report("two holes and the distribution in one statement", STATEMENT, args.repeats)
    print(
        "targets (sentiment): <= 2 predictions + lookup, 0 tokens after the stop, "
        "wall time <= 0.5x LMQL's pattern"
    )


if __name__ == "__main__":
    main()
