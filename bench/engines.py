"""Benchmark: cogql's engine and vLLM side by side, in one process, same model and machine.

  (a) start-up: from nothing to an engine that has answered its first op,
  (b) examples/sentiment.lmql warm (median, runs alternating between the engines),
  (c) aggregate tokens/s of 1, 4 and 16 concurrent GENERATE streams (EOS banned, so every
      stream runs its full length), alternating between the engines,
  (d) three SCOREs after a new 400-token prompt, then three more after the same prompt (what
      a `distribution` clause costs once the prompt is in the engine's prefix cache).

Prints each figure and the ratio vLLM / cogql. Each engine runs at its default precision for
the device unless --dtype says otherwise; vLLM with cogql's defaults for it (on a CPU: eager
mode, both cores, a 2 GiB KV cache).

Usage: python bench/engines.py [--model M] [--device cpu|cuda] [--dtype auto|float32|...]
                               [--tokens 48] [--repeats 3] [--streams 1,4,16]
"""

from __future__ import annotations

import argparse
import queue
import statistics
import time
from collections.abc import Callable

import cogql
from _common import ROOT
from cogql.engine.protocol import LMTPEngine
from cogql.lmtp.messages import Event, Generate
from cogql.lmtp.transports.inprocess import close_local_engine, local_engine
from cogql.tokenizer import Tokenizer

QUERY = ROOT / "examples" / "sentiment.lmql"
TOPICS = ["the sea", "a city", "winter", "music", "a garden", "trains", "the moon", "bread"]


def start(model: str | None, engine: str, device: str, dtype: str) -> tuple[LMTPEngine, float]:
    """The process's in-process engine (the one queries then run on) and its start-up time,
    including the first op."""
    began = time.perf_counter()
    opened = local_engine(model, engine=engine, dtype=dtype, device=device)
    run_streams(opened, 1, 2)
    return opened, time.perf_counter() - began


def run_streams(engine: LMTPEngine, streams: int, tokens: int) -> int:
    """`streams` GENERATEs submitted together; the tokens they produced."""
    tok = engine.tokenizer
    eos = tok.eos_token_id if tok.eos_token_id is not None else 0
    ops = [
        Generate(i, "m", _story(tok, i), max_tokens=tokens, logit_bias={eos: -100.0})
        for i in range(streams)
    ]
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    engine.submit(ops, events.put)
    left, produced = set(range(streams)), 0
    while left:
        event = events.get(timeout=600)
        if not hasattr(event, "token"):
            raise RuntimeError(f"stream failed: {event}")
        produced += 1
        if event.finish_reason is not None:
            left.discard(event.stream_id)
    return produced


def _story(tok: Tokenizer, i: int) -> list[int]:
    return tok.encode(f"Write a short story about {TOPICS[i % len(TOPICS)]} ({i}):")


def score_after(engine: LMTPEngine, prompt: list[int], options: list[list[int]]) -> float:
    """Seconds to SCORE `options` (together) after `prompt`."""
    from cogql.lmtp.messages import Score

    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    began = time.perf_counter()
    engine.submit([Score(i, "m", prompt, o) for i, o in enumerate(options)], events.put)
    left = set(range(len(options)))
    while left:
        event = events.get(timeout=600)
        if not hasattr(event, "token"):
            raise RuntimeError(f"score failed: {event}")
        if event.finish_reason is not None:
            left.discard(event.stream_id)
    return time.perf_counter() - began


def scoring(engine: LMTPEngine, round_: list[int]) -> tuple[float, float]:
    """(cold, warm): three options (of several tokens: a single token's log-prob can come from
    the logits a prefix cache keeps) after a new 400-token prompt, then three others."""
    tok = engine.tokenizer
    round_[0] += 1
    text = f"Review {round_[0]}: " + "The plot was slow but the acting was fine. " * 40
    prompt = tok.encode(text)[:400] + tok.encode(" Verdict:")
    first = [tok.encode(w) for w in (" good on the whole", " bad in every way", " mixed")]
    second = [tok.encode(w) for w in (" great fun to watch", " awful and long", " fine")]
    return score_after(engine, prompt, first), score_after(engine, prompt, second)


def alternate(fns: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median of `repeats` alternating runs of each (after one warm-up each)."""
    for fn in fns.values():
        fn()
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            samples[name].append(fn())
    return {name: statistics.median(values) for name, values in samples.items()}


def timed(fn: Callable[[], object]) -> Callable[[], float]:
    def run() -> float:
        began = time.perf_counter()
        fn()
        return time.perf_counter() - began

    return run


def throughput(engine: LMTPEngine, streams: int, tokens: int) -> Callable[[], float]:
    def run() -> float:
        began = time.perf_counter()
        produced = run_streams(engine, streams, tokens)
        return produced / (time.perf_counter() - began)

    return run


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="a folder, hub id or .gguf (default: SmolLM2)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--streams", default="1,4,16")
    ap.add_argument("--engines", default="cogql,vllm", help="which to run (bench/gpu.sh: "
                    "cogql alone where vLLM is not installed)")  # fmt: skip
    args = ap.parse_args()
    names = tuple(args.engines.split(","))
    engines: dict[str, LMTPEngine] = {}
    startup: dict[str, float] = {}
    for name in names:
        engines[name], startup[name] = start(args.model, name, args.device, args.dtype)
        print(f"{name}: {engines[name].describe()}, started in {startup[name]:.1f} s", flush=True)

    source = QUERY.read_text(encoding="utf-8")
    local = f"local:{args.model or 'default'}"
    models = {n: cogql.model(local, engine=n, dtype=args.dtype, device=args.device) for n in names}
    query = alternate(
        {n: timed(lambda n=n: cogql.run_sync(source, model=models[n])) for n in names},
        args.repeats,
    )
    classes = {cogql.run_sync(source, model=models[n])["CLASSIFICATION"] for n in names}

    streams = [int(s) for s in args.streams.split(",")]
    tps = {
        n: alternate({e: throughput(engines[e], n, args.tokens) for e in names}, args.repeats)
        for n in streams
    }
    rounds = [0]
    cold_warm = {e: [scoring(engines[e], rounds) for _ in range(args.repeats)] for e in names}
    cold = {e: statistics.median(c for c, _ in cw) for e, cw in cold_warm.items()}
    warm = {e: statistics.median(w for _, w in cw) for e, cw in cold_warm.items()}
    for engine in engines.values():
        close_local_engine(engine)

    print(f"\n{'figure':<46}" + "".join(f"{n:>10}" for n in names) + f"{'vllm/cogql':>12}")
    print(_row("(a) start-up, s", startup))
    print(_row("(b) sentiment query warm, s", query))
    for n in streams:
        print(_row(f"(c) tokens/s, {n} stream(s)", tps[n]))
    print(_row("(d) 3 SCOREs after a new 400-token prompt, s", cold))
    print(_row("    3 more after the same prompt, s", warm))
    print(f"    same CLASSIFICATION on every engine: {len(classes) == 1}; "
          f"{args.tokens} tokens per stream")  # fmt: skip


def _row(label: str, figures: dict[str, float]) -> str:
    ratio = figures["vllm"] / figures["cogql"] if len(figures) == 2 else None
    return (
        f"{label:<46}"
        + "".join(f"{v:10.2f}" for v in figures.values())
        + (f"{ratio:12.2f}" if ratio is not None else "")
    )


if __name__ == "__main__":
    main()
