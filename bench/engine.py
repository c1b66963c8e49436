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
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

import cogql
from cogql.engine.masks import GrammarCompiler
from cogql.lmtp.transports.inprocess import local_engine

ROOT = Path(__file__).resolve().parent.parent
QUERY = ROOT / "examples" / "sentiment.lmql"
PEER_PY = Path.home() / ".cache/lmql-peer/venv/bin/python"
PEER_MODEL = Path.home() / ".cache/lmql-peer/smollm2-hf"
OPTIONS = [" positive", " negative", " neutral"]


def median_time(fn, repeats: int) -> tuple[float, object]:
    out, times = None, []
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), out


def cogql_warm(model, repeats: int):
    source = QUERY.read_text()
    cogql.run_sync(source, model=model)
    return median_time(lambda: cogql.run_sync(source, model=model), repeats)


def floor(engine, result, repeats: int) -> float:
    """Plain transformers: generate the same tokens greedily, then score the options once."""
    tok, hf = engine.tokenizer, engine.loaded.model
    first_a = result.prompt.index("\nA:") + 3
    prompt_ids = [tok.bos_token_id, *tok.encode(result.prompt[:first_a])]
    analysis = tok.encode(result.variables["ANALYSIS"])
    end = first_a + len(result.variables["ANALYSIS"])
    rest = result.prompt[end : -len(result.variables["CLASSIFICATION"])]
    full = prompt_ids + analysis + tok.encode(rest)
    opts = [tok.encode(o) for o in OPTIONS]

    decode = engine.loaded.decode_model

    def generate_same_tokens() -> None:
        n = len(analysis) + 1
        ids = torch.tensor([prompt_ids])
        if decode is None:
            hf.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
            return
        # the same precision split as cogql's engine, written with plain transformers calls
        out = hf(input_ids=ids, use_cache=True)
        cache = out.past_key_values
        for layer in cache.layers:
            layer.keys, layer.values = layer.keys.half(), layer.values.half()
        nxt = out.logits[:, -1:].argmax(-1)
        for _ in range(n - 1):
            out = decode(input_ids=nxt, cache=cache, use_cache=True)
            nxt = out.logits[:, -1:].argmax(-1)

    def run() -> None:
        with torch.inference_mode():
            generate_same_tokens()
            width = max(len(o) for o in opts)
            rows = torch.tensor([full + o + [0] * (width - len(o)) for o in opts])
            hf(rows)

    run()
    return median_time(run, repeats)[0]


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
            m.mask_logits(row)
            total += time.perf_counter() - start
            n += 1
    return total / n * 1e6


def fresh_cogql() -> float:
    exe = Path(sys.executable).parent / "cogql"
    start = time.perf_counter()
    subprocess.run([str(exe), "run", str(QUERY), "--json"], check=True, capture_output=True)
    return time.perf_counter() - start


def peer(repeats: int) -> dict | None:
    if not (PEER_PY.exists() and PEER_MODEL.exists()):
        return None
    script = str(ROOT / "bench" / "_peer.py")
    out = subprocess.run([str(PEER_PY), script, str(QUERY), str(PEER_MODEL), str(repeats + 1)],
                         check=True, capture_output=True, text=True)  # fmt: skip
    data = json.loads(out.stdout.strip().splitlines()[-1])
    start = time.perf_counter()
    subprocess.run([str(PEER_PY), script, str(QUERY), str(PEER_MODEL), "1"], check=True,
                   capture_output=True)  # fmt: skip
    data["fresh"] = time.perf_counter() - start
    data["warm"] = statistics.median(data["times"][1:])
    return data


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--dtype", default="auto")
    ap.add_argument("--no-peer", action="store_true")
    args = ap.parse_args()
    model = cogql.model(None, dtype=args.dtype)
    engine = local_engine(None, dtype=args.dtype)
    print(f"torch threads={torch.get_num_threads()} dtype={engine.loaded.dtype} "
          f"cpu cores={os.cpu_count()}")  # fmt: skip
    warm, result = cogql_warm(model, args.repeats)
    fl = floor(engine, result, args.repeats)
    mask_us = mask_cost(engine)
    fresh = fresh_cogql()
    lmql = None if args.no_peer else peer(args.repeats)
    print(f"{'':28}{'seconds':>10}{'ratio':>10}")
    print(f"{'floor (transformers)':28}{fl:10.3f}{1.0:10.2f}")
    print(f"{'cogql warm':28}{warm:10.3f}{warm / fl:10.2f}   (target <= 1.15x floor)")
    if lmql:
        print(f"{'LMQL 0.7.3 warm':28}{lmql['warm']:10.3f}{lmql['warm'] / fl:10.2f}")
        print(f"{'cogql / LMQL warm':28}{'':10}{warm / lmql['warm']:10.2f}   (target <= 0.5)")
        print(f"{'cogql fresh process':28}{fresh:10.3f}")
        print(f"{'LMQL fresh process':28}{lmql['fresh']:10.3f}")
        print(f"{'cogql / LMQL fresh':28}{'':10}{fresh / lmql['fresh']:10.2f}   (target <= 0.7)")
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
