"""Benchmark: the Cog predictor behind the real Cog prediction server vs the same ops in-process.

Builds a project (default: the embedded SmolLM2 model; any folder with --model), starts
`python -m cog.server.http` on it, and prints side by side, in one run:
  - server start → READY (setup loads the model and warms it up),
  - per workload, the latency of each of N predictions through the server (HTTP, sync) and of
    the same ops through the same predictor code in this process; the difference is what the
    Cog server and its worker add per prediction (target: ≤ 50 ms),
  - the first and the tenth prediction (setup warmed up, so they should match),
  - time to the first streamed line over server-sent events.

Workloads: MODEL_INFO (pure per-prediction overhead), 64 MODEL_INFOs in one batch (64 output
lines and no model work: the cost of each streamed line), GENERATE of 16 tokens, and one batch
of 3 SCOREs.
Each iteration extends the prompt by one token, so every run does the same small amount of
prompt work on both sides (the prefix cache would otherwise make repeats free).

Usage: python bench/predictor.py [--model PATH] [--repeats N] [--threads N]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from _common import build_project
from cogql.engine.models import resolve_model_path
from cogql.replicate.cog.cogserver import CogServer
from cogql.replicate.cog.predictor import load_runner
from cogql.tokenizer import load_tokenizer

TEXT = "Review: We had a great stay at the hotel. The staff were friendly.\nQ: Sentiment?\nA:"


def workloads(prompt: list[int]) -> dict[str, Callable[[int], list[list[Any]]]]:
    def info(i: int) -> list[list[Any]]:
        return [["MODEL_INFO", {"stream_id": 1, "model": "m", "data": {}}]]

    def generate(i: int) -> list[list[Any]]:
        p = [*prompt, 28 + i]
        return [
            [
                "GENERATE",
                {"max_tokens": 16, "temperature": 0.0, "model": "m", "prompt": p, "stream_id": 1},
            ]
        ]

    def score(i: int) -> list[list[Any]]:
        p = [*prompt, 28 + i]
        return [
            ["SCORE", {"model": "m", "prompt": p, "scored": s, "stream_id": k}]
            for k, s in enumerate(([3806], [4353], [9089, 3]))
        ]

    def many_lines(i: int) -> list[list[Any]]:  # 64 lines, no model work: per-line cost
        return [["MODEL_INFO", {"stream_id": k, "model": "m"}] for k in range(64)]

    return {
        "MODEL_INFO": info,
        "MODEL_INFO x64": many_lines,
        "GENERATE 16 tokens": generate,
        "SCORE x3 (batched)": score,
    }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model folder (default: the embedded SmolLM2)")
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument(
        "--threads",
        type=int,
        help="torch threads on both sides (1 keeps a busy machine from stalling OpenMP)",
    )
    args = parser.parse_args()
    if args.threads:
        os.environ["OMP_NUM_THREADS"] = str(args.threads)  # the server inherits it
        import torch

        torch.set_num_threads(args.threads)
    model = Path(args.model) if args.model else resolve_model_path(None)
    prompt = [1, *load_tokenizer(model).encode(TEXT)]

    with tempfile.TemporaryDirectory(prefix="cogql-bench-") as tmp:
        started = time.perf_counter()
        project = build_project(Path(tmp), "bench", model)
        build_s = time.perf_counter() - started

        server = CogServer(project)
        server.start()
        try:
            ready_s = server.wait_ready(timeout=600)
            runner = load_runner(project)  # the same predictor code, in this process
            rows = []
            for name, make in workloads(prompt).items():
                http, local = [], []
                for i in range(args.repeats):  # alternate, so drift hits both sides alike
                    ops = json.dumps(make(i))
                    t, result = timed(lambda o=ops: server.predict({"ops_batch_json": o}))
                    assert result["status"] == "succeeded", result
                    http.append(t)
                    t, lines = timed(lambda o=ops: list(runner.stream(o)))
                    assert len(lines) == len(result["output"]), (lines, result["output"])
                    local.append(t)
                rows.append((name, http, local))
            ops = json.dumps(workloads(prompt)["GENERATE 16 tokens"](99))
            start = time.perf_counter()
            first_line = total = None
            for kind, _data in server.stream({"ops_batch_json": ops}):
                if kind == "output" and first_line is None:
                    first_line = time.perf_counter() - start
            total = time.perf_counter() - start
        finally:
            server.stop()

    threads = os.environ.get("OMP_NUM_THREADS", "default")
    print(
        f"model: {model}  ({os.cpu_count()} CPUs, torch threads {threads}, Python {sys.version.split()[0]})"
    )
    print(f"build: {build_s:.2f} s   server start → READY: {ready_s:.2f} s (model load + warm-up)")
    print()
    print(
        f"{'workload':<20}{'server':>9}{'in-proc':>9}{'overhead':>10}"
        f"{'best srv':>10}{'best in':>9}{'best ovh':>10}{'1st':>8}{'10th':>8}   (ms)"
    )
    for name, http, local in rows:
        med_h, med_l = statistics.median(http), statistics.median(local)
        tenth = http[9] if len(http) >= 10 else http[-1]
        print(
            f"{name:<20}{ms(med_h):>9}{ms(med_l):>9}{ms(med_h - med_l):>10}"
            f"{ms(min(http)):>10}{ms(min(local)):>9}{ms(min(http) - min(local)):>10}"
            f"{ms(http[0]):>8}{ms(tenth):>8}"
        )
    load = os.getloadavg()[0]
    print(f"(medians and minimums of {len(rows[0][1])} runs; load average {load:.2f} at the end)")
    print()
    print(
        f"server-sent events, GENERATE 16 tokens: first line after {first_line * 1000:.1f} ms, "
        f"done after {total * 1000:.1f} ms"
    )


if __name__ == "__main__":
    main()
