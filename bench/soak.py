"""Soak: one `cogql serve-model` under mixed clients for a bounded time, loopback only.

Well-behaved clients (short streams, SCOREs, long prompts, a pipeliner that sends hundreds of
GENERATEs in one go) run beside clients that misbehave (never read, disconnect mid-stream,
send bad frames, cancel). The run passes when every well-behaved request completes with the
right number of tokens, none is lost, and the server's RSS comes back to within 10% of its
level after warm-up once the clients are gone.

Usage: python bench/soak.py [--seconds 300] [--model default|random] [--port 8791]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field

import psutil
from websockets.asyncio.client import ClientConnection, connect

from cogql.replicate.cog.cogserver import free_port

SHORT_TOKENS = 16
LONG_PROMPT = 1500
PIPELINED = 300
RSS_TOLERANCE = 0.10


@dataclass
class Tally:
    served: collections.Counter = field(default_factory=collections.Counter)
    failed: collections.Counter = field(default_factory=collections.Counter)
    errors: collections.Counter = field(default_factory=collections.Counter)
    ttft: dict[str, list[float]] = field(default_factory=lambda: collections.defaultdict(list))
    failures: list[str] = field(default_factory=list)

    def fail(self, kind: str, why: str) -> None:
        self.failed[kind] += 1
        if len(self.failures) < 20:
            self.failures.append(f"{kind}: {why}")


class Server:
    """`cogql serve-model` in its own process, and its RSS."""

    def __init__(self, model: str, port: int) -> None:
        argv = [sys.executable, "-m", "cogql", "serve-model", model, "--port", str(port)]
        if model == "random":
            argv += ["--seed", "1"]
        self.url = f"ws://127.0.0.1:{port}"
        fd, self.log = tempfile.mkstemp(prefix="cogql-soak-", suffix=".log")
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=fd)
        os.close(fd)
        self.ps = psutil.Process(self.proc.pid)
        self.peak = 0

    def rss(self) -> int:
        value = self.ps.memory_info().rss
        self.peak = max(self.peak, value)
        return value

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def frame(kind: str, payload: dict) -> str:
    return f"{kind} {json.dumps(payload)}"


def replies(text: str) -> list[dict]:
    kind, _, body = text.partition(" ")
    items = json.loads(body)
    items = items if isinstance(items, list) else [items]
    return [dict(item, _kind=kind) for item in items]


async def ready(url: str, timeout: float = 300) -> dict:
    """Waits for the model, then returns its info with the tokenizer's special ids."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            async with connect(url, max_size=None) as ws:
                await ws.send(frame("MODEL_INFO", {"stream_id": 0, "model": "m", "data": {}}))
                info = replies(await ws.recv())[0].get("model_info")
                if isinstance(info, dict):
                    return info
        except OSError:
            pass
        await asyncio.sleep(0.5)
    raise TimeoutError(f"no LMTP server came up at {url}")


class Soak:
    def __init__(self, url: str, seconds: float, tally: Tally) -> None:
        self.url = url
        self.deadline = time.monotonic() + seconds
        self.tally = tally
        self.ids = iter(range(1, 10**9))

    def running(self) -> bool:
        return time.monotonic() < self.deadline

    def prompt(self, n: int, salt: int) -> list[int]:
        return [1, *((salt * 7919 + i * 104729) % 20000 + 100 for i in range(n - 1))]

    async def collect(self, ws: ClientConnection, wanted: dict[int, int], kind: str) -> None:
        """Reads until every stream in `wanted` (id -> tokens expected) has ended; checks counts."""
        got: dict[int, int] = collections.Counter()
        started = time.monotonic()
        first: set[int] = set()
        open_ids = set(wanted)
        while open_ids:
            for item in replies(await asyncio.wait_for(ws.recv(), 120)):
                sid = item.get("stream_id")
                if sid not in open_ids:
                    continue
                if "error" in item:
                    self.tally.fail(kind, f"stream {sid}: {item['error']}")
                    open_ids.discard(sid)
                    continue
                got[sid] += 1
                if sid not in first:
                    first.add(sid)
                    self.tally.ttft[kind].append(time.monotonic() - started)
                if item.get("finish_reason"):
                    open_ids.discard(sid)
                    if got[sid] == wanted[sid]:
                        self.tally.served[kind] += 1
                    else:
                        self.tally.fail(
                            kind, f"stream {sid}: {got[sid]} tokens, {wanted[sid]} wanted"
                        )

    async def generate(self, ws: ClientConnection, prompt: list[int], n: int) -> int:
        sid = next(self.ids)
        op = {"stream_id": sid, "model": "m", "prompt": prompt, "max_tokens": n,
              "logit_bias": {str(t): -100.0 for t in self.eos}}  # fmt: skip
        await ws.send(frame("GENERATE", op))
        return sid

    async def well_behaved(self, kind: str, body) -> None:
        while self.running():
            try:
                async with connect(self.url, max_size=None) as ws:
                    while self.running():
                        await body(ws)
            except Exception as e:  # a dropped link loses a well-behaved request
                self.tally.fail(kind, f"connection: {type(e).__name__}: {e}")
                await asyncio.sleep(1)

    async def short(self, ws: ClientConnection) -> None:
        sid = await self.generate(ws, self.prompt(24, next(self.ids)), SHORT_TOKENS)
        await self.collect(ws, {sid: SHORT_TOKENS}, "short")

    async def long(self, ws: ClientConnection) -> None:
        sid = await self.generate(ws, self.prompt(LONG_PROMPT, next(self.ids)), 4)
        await self.collect(ws, {sid: 4}, "long")

    async def score(self, ws: ClientConnection) -> None:
        sid = next(self.ids)
        op = {"stream_id": sid, "model": "m", "prompt": self.prompt(40, sid),
              "scored": [300, 400, 500, 600]}  # fmt: skip
        await ws.send(frame("SCORE", op))
        await self.collect(ws, {sid: 4}, "score")

    async def pipeline(self, ws: ClientConnection) -> None:
        wanted = {}
        for _ in range(PIPELINED):
            wanted[await self.generate(ws, self.prompt(12, next(self.ids)), 4)] = 4
        await self.collect(ws, wanted, "pipelined")
        await asyncio.sleep(max(0.0, min(30.0, self.deadline - time.monotonic())))

    async def misbehaving(self, kind: str, body) -> None:
        while self.running():
            try:
                await body()
                self.tally.served[kind] += 1
            except Exception as e:
                self.tally.errors[f"{kind}: {type(e).__name__}"] += 1
            await asyncio.sleep(0.2)

    async def non_reader(self) -> None:
        async with connect(self.url, max_size=None, ping_timeout=None) as ws:
            for i in range(200):
                payload = {"stream_id": i, "model": "m", "data": {"tokenizer": True}}
                await ws.send(frame("MODEL_INFO", payload))
            await asyncio.sleep(5)

    async def disconnect(self) -> None:
        ws = await connect(self.url, max_size=None)
        await self.generate(ws, self.prompt(30, next(self.ids)), 200)
        await ws.recv()
        ws.transport.abort()

    async def canceller(self) -> None:
        async with connect(self.url, max_size=None) as ws:
            sid = await self.generate(ws, self.prompt(30, next(self.ids)), 200)
            await ws.recv()
            await ws.send(frame("CANCEL", {"stream_id": sid}))

    async def bad_frames(self) -> None:
        bad = [
            "GARBAGE {}",
            "GENERATE {not json",
            'GENERATE {"model": "m", "prompt": [1]}',
            'GENERATE {"stream_id": 1, "model": "m", "prompt": [1], "temperature": NaN}',
            'GENERATE {"stream_id": 2, "model": "m", "prompt": [1], "top_logprobs": 1000000000}',
            'GENERATE {"stream_id": 3, "model": "m", "prompt": [1], "max_tokens": 1180591620717411303424}',
            'GENERATE {"stream_id": 4, "model": "m", "prompt": [99999999]}',
            'SCORE {"stream_id": 5, "model": "m", "prompt": [1], "scored": "x"}',
            "BATCH [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]",
        ]  # fmt: skip
        async with connect(self.url, max_size=None) as ws:
            for text in bad:
                await ws.send(text)
            await ws.send(frame("MODEL_INFO", {"stream_id": 99, "model": "m"}))
            while True:
                for item in replies(await asyncio.wait_for(ws.recv(), 30)):
                    if "error" in item:
                        self.tally.errors[f"bad frame: {item['error'][:60]}"] += 1
                    if item.get("stream_id") == 99 and "model_info" in item:
                        return

    async def warm(self, eos: list[int]) -> None:
        """One of each well-behaved request, and batched decode steps of several sizes, so that
        what the server builds once on first use (the precision copies its decode batch tries)
        exists before the baseline is taken."""
        self.eos = eos
        async with connect(self.url, max_size=None) as ws:
            for body in (self.short, self.long, self.score):
                await body(ws)
            for rows in (2, 4, 8, 16):
                wanted = {}
                for _ in range(rows):
                    wanted[await self.generate(ws, self.prompt(24, next(self.ids)), 12)] = 12
                await self.collect(ws, wanted, "warm")

    async def run(self, eos: list[int]) -> None:
        self.eos = eos
        tasks = [self.well_behaved("short", self.short) for _ in range(8)]
        tasks += [self.well_behaved("long", self.long), self.well_behaved("score", self.score)]
        tasks += [self.well_behaved("pipelined", self.pipeline)]
        tasks += [self.misbehaving(k, f) for k, f in [
            ("non-reader", self.non_reader), ("disconnect", self.disconnect),
            ("cancel", self.canceller), ("bad frames", self.bad_frames)]]  # fmt: skip
        await asyncio.gather(*tasks)


async def watch_rss(server: Server, stop: asyncio.Event) -> None:
    while not stop.is_set():
        server.rss()
        await asyncio.sleep(0.5)


async def settle(server: Server, seconds: float = 30) -> int:
    """The RSS once it stops falling (connections gone, the server idle), within `seconds`;
    the first look is after the server's idle delay."""
    await asyncio.sleep(5)
    last = server.rss()
    for _ in range(int(seconds)):
        await asyncio.sleep(1)
        now = server.rss()
        if now >= last:
            return now
        last = now
    return last


async def soak(args: argparse.Namespace) -> bool:
    server = Server(args.model, args.port)
    tally = Tally()
    try:
        info = await ready(server.url)
        eos = info.get("eos_token_ids") or [info.get("eos_token_id", 2)]
        await asyncio.wait_for(Soak(server.url, 60, Tally()).warm(eos), 120)
        start = await settle(server)
        stop = asyncio.Event()
        watcher = asyncio.create_task(watch_rss(server, stop))
        await Soak(server.url, args.seconds, tally).run(eos)
        stop.set()
        await watcher
        final = await settle(server)
    finally:
        server.stop()
    return report(tally, server, start, final, args)


def report(tally: Tally, server: Server, start: int, final: int, args: argparse.Namespace) -> bool:
    mb = 2**20
    print(f"soak: {args.seconds:.0f} s against serve-model {args.model}")
    print("served:", dict(tally.served))
    print("failed (well-behaved):", dict(tally.failed))
    print("errors by kind:", dict(tally.errors.most_common()))
    for kind in ("short", "long"):
        if len(tally.ttft[kind]) > 1:
            p = statistics.quantiles(tally.ttft[kind], n=100, method="inclusive")
            print(f"time to first token ({kind}): p50 {p[49] * 1000:.0f} ms, "
                  f"p99 {p[98] * 1000:.0f} ms, max {max(tally.ttft[kind]) * 1000:.0f} ms")  # fmt: skip
    print(f"RSS: start {start / mb:.0f} MB, peak {server.peak / mb:.0f} MB, final {final / mb:.0f} MB "
          f"({final / start:.3f}x start)")  # fmt: skip
    print(f"server log: {server.log}")
    for line in tally.failures:
        print("  ", line)
    ok = not tally.failed and final <= start * (1 + RSS_TOLERANCE)
    print("PASS" if ok else "FAIL")
    return ok


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=300)
    parser.add_argument("--model", default="default")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args()
    args.port = args.port or free_port()
    sys.exit(0 if asyncio.run(soak(args)) else 1)


if __name__ == "__main__":
    main()
