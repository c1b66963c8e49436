"""Benchmark: the LMTP server, side by side in one run, same model, same machine.

  (a) aggregate tokens/s of 1, 4 and 16 concurrent GENERATE streams against `cogql serve-model`
      (target: 16 streams >= 4x one stream),
  (b) examples/sentiment.lmql through the server vs in-process (target <= 1.1x),
  (c) the same streams against `lmql serve-model` when the LMQL peer is installed
      (target: cogql >= 2x LMQL's aggregate throughput at 16 streams),
  (d) the latency of a SCORE sent while a 200-token GENERATE runs (target: it does not wait).

Every request is plain LMTP (EOS banned with logit_bias so that streams run their full
length), which both servers understand.

Usage: python bench/serve.py [--tokens 48] [--no-peer] [--streams 1,4,16]
                             [--engine cogql|vllm] [--device cpu|cuda] [--model FOLDER]
"""

from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import time
from contextlib import contextmanager

import cogql
from _common import PEER_MODEL, PEER_PY, ROOT, median_time, peer_installed
from cogql.engine.models import resolve_model_path
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.messages import Generate
from cogql.lmtp.transports.websocket import WebSocketTransport
from cogql.replicate.cog.cogserver import free_port

QUERY = ROOT / "examples" / "sentiment.lmql"
TOPICS = ["the sea", "a city", "winter", "music", "a garden", "trains", "the moon", "bread"]


@contextmanager
def server(argv: list[str], port: int, model: str):
    """A server process; `model` is the name clients ask for (LMQL loads whatever is asked)."""
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        asyncio.run(wait_ready(f"127.0.0.1:{port}", model))
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(30)


async def wait_ready(endpoint: str, model: str, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            client = LMTPClient(WebSocketTransport(endpoint, connect_timeout=2), model)
            info = await client.model_info()
            if info.get("model_info") != "<unavailable>":
                await warm(client)
                return
        except Exception:
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no LMTP server came up at {endpoint}")


async def warm(client: LMTPClient) -> None:
    await stream(client, prompt(client, 0), 4)


def prompt(client: LMTPClient, i: int) -> list[int]:
    tok = client.tokenizer
    text = f"Write a short story about {TOPICS[i % len(TOPICS)]} (number {i}):"
    return [1, *tok.encode(text)] if tok else [1, 7843, 253, 1345, 2849, 563, i + 100]


async def stream(client: LMTPClient, ids: list[int], n: int) -> int:
    op = Generate(None, client.model, ids, max_tokens=n, logit_bias={2: -100.0})
    return sum([1 async for _ in client.generate(op)])


async def throughput(endpoint: str, model: str, streams: int, tokens: int, tokenizer) -> float:
    client = LMTPClient(WebSocketTransport(endpoint), model=model, tokenizer=tokenizer)
    start = time.perf_counter()
    counts = await asyncio.gather(
        *(stream(client, prompt(client, i), tokens) for i in range(streams))
    )
    return sum(counts) / (time.perf_counter() - start)


async def score_while_generating(endpoint: str, model: str, tokenizer) -> tuple[float, float]:
    """(SCORE latency, GENERATE duration) with the SCORE sent 0.5 s into the GENERATE."""
    client = LMTPClient(WebSocketTransport(endpoint), model=model, tokenizer=tokenizer)
    start = time.perf_counter()
    gen = asyncio.create_task(stream(client, prompt(client, 1), 200))
    await asyncio.sleep(0.5)
    sent = time.perf_counter()
    await client.score(prompt(client, 2), [tokenizer.encode(" positive")])
    latency = time.perf_counter() - sent
    await gen
    return latency, time.perf_counter() - start


def query_time(model, repeats: int) -> float:
    source = QUERY.read_text()
    cogql.run_sync(source, model=model)
    return median_time(lambda: cogql.run_sync(source, model=model), repeats)[0]


def measure(
    endpoint: str, model: str, tokens: int, tokenizer, streams: list[int]
) -> dict[int, float]:
    return {n: asyncio.run(throughput(endpoint, model, n, tokens, tokenizer)) for n in streams}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=48)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--no-peer", action="store_true")
    ap.add_argument("--streams", default="1,4,16", help="concurrent streams to measure")
    ap.add_argument("--engine", default="cogql", choices=["cogql", "vllm"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda (LMQL then gets --cuda)")
    ap.add_argument("--model", default=None, help="a folder (default: the embedded SmolLM2)")
    args = ap.parse_args()
    streams = [int(n) for n in args.streams.split(",")]
    from cogql.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(resolve_model_path(args.model))
    port = free_port()
    cogql_argv = [sys.executable, "-m", "cogql", "serve-model", args.model or "default",
                  "--port", str(port), "--engine", args.engine, "--device", args.device]  # fmt: skip
    with server(cogql_argv, port, "default") as endpoint:
        ours = measure(endpoint, "default", args.tokens, tokenizer, streams)
        latency, gen_time = asyncio.run(score_while_generating(endpoint, "default", tokenizer))
        remote = cogql.model("SmolLM2", endpoint=endpoint)
        served = query_time(remote, args.repeats)
    local = cogql.model(f"local:{args.model or 'default'}", engine=args.engine, device=args.device)
    inproc = query_time(local, args.repeats)

    theirs, their_latency = None, None
    if not args.no_peer and peer_installed():
        port = free_port()
        served_model = args.model or str(PEER_MODEL)
        lmql_argv = [str(PEER_PY.parent / "lmql"), "serve-model", served_model,
                     "--port", str(port)] + (["--cuda"] if args.device == "cuda" else [])  # fmt: skip
        with server(lmql_argv, port, served_model) as endpoint:
            theirs = measure(endpoint, served_model, args.tokens, tokenizer, streams)
            their_latency = asyncio.run(score_while_generating(endpoint, served_model, tokenizer))

    print(f"(a) aggregate tokens/s, {args.tokens} tokens per stream ({args.engine} engine)")
    print(
        f"{'streams':>8}{'cogql':>10}{'x first':>10}"
        + (f"{'LMQL':>10}{'cogql/LMQL':>12}" if theirs else "")
    )
    for n, tps in ours.items():
        row = f"{n:>8}{tps:10.1f}{tps / ours[streams[0]]:10.2f}"
        if theirs:
            row += f"{theirs[n]:10.1f}{tps / theirs[n]:12.2f}"
        print(row)
    print("    targets: 16 streams >= 4x single; cogql >= 2x LMQL at 16 streams")
    print(f"(b) sentiment query: server {served:.3f}s, in-process {inproc:.3f}s, "
          f"ratio {served / inproc:.2f} (target <= 1.1)")  # fmt: skip
    print(f"(d) SCORE during a 200-token GENERATE: {latency * 1000:.0f} ms "
          f"(the GENERATE took {gen_time:.2f}s; target: the SCORE does not wait for it)")  # fmt: skip
    if their_latency:
        print(
            f"    LMQL: {their_latency[0] * 1000:.0f} ms (its GENERATE took {their_latency[1]:.2f}s)"
        )
    if theirs is None:
        print("(c) LMQL peer not installed (make peer): skipped")


if __name__ == "__main__":
    main()
