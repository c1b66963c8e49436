"""The LMTP websocket server (`cogql serve-model`) and the websocket client transport, on
loopback with real engines: LMQL's frame format byte for byte, per-stream errors for bad input
while other streams keep running, back-pressure under a flood, cancellation on disconnect,
model loading and load failure, the extensions, and the client's endpoint forms, shared
connection, reconnect and timeouts. Then the hardening: browser origins, the token, TLS, no
local paths, escaped log lines; the admission limits (stream cap with a queue, reply backlog
in bytes, connections, idle time, top_logprobs, max_tokens); strict numbers and JSON.

Servers run on their own thread and event loop (BackgroundServer), one per module and limit
set, sharing the process's engines; raw-protocol checks use websockets' synchronous client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import serve
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

import cogql
from cogql.engine.engine import Engine
from cogql.lmtp.client import LMTPClient, LMTPError
from cogql.lmtp.messages import Generate
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.lmtp.transports.websocket import (
    EndpointError,
    LMTPConnectionError,
    WebSocketTransport,
    close_connections,
    endpoint_url,
)
from cogql.replicate.cog.cogserver import free_port
from cogql.runtime.model import RemoteModelNotLoaded
from cogql.serve import AccessConfigError, AccessPolicy, BackgroundServer, Limits, tls_context
from cogql.serve.access import exposure_warning
from cogql.serve.command import ServeUsageError, prepare, resolve_args
from cogql.serve.logs import limit_repeats
from cogql.tokenizer import Tokenizer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
PROMPT = [1, 504, 3437, 28, 253]  # BOS + a few ordinary tokens
TOKEN_KEYS = ["token", "stream_id", "logprob", "finish_reason", "top_logprobs"]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def tiny_engine(tiny_model_path: Path) -> Engine:
    return local_engine(str(tiny_model_path))


@contextlib.asynccontextmanager
async def background(model: Any, **kwargs: Any) -> AsyncIterator[BackgroundServer]:
    """A server for an async test: started and stopped off the event loop, after this loop's
    client connections are closed (a server waits for its clients' closing handshakes)."""
    s = await asyncio.to_thread(BackgroundServer(model, **kwargs).start)
    try:
        yield s
    finally:
        await close_connections()
        await asyncio.to_thread(s.stop)


@pytest.fixture(scope="module")
async def server(tiny_engine: Engine) -> AsyncIterator[BackgroundServer]:
    async with background(tiny_engine) as s:
        yield s


@pytest.fixture(scope="module")
async def tight(tiny_engine: Engine) -> AsyncIterator[BackgroundServer]:
    """Small limits, so floods and oversized frames hit them quickly."""
    limits = Limits(
        max_frame_bytes=64 * 1024,
        max_streams_per_connection=4,
        max_queued_ops=16,
        max_batch_ops=8,
        max_backlog_bytes=2**20,
    )
    async with background(tiny_engine, limits=limits) as s:
        yield s


class Raw:
    """A raw LMTP websocket client: frames in, parsed (TYPE, item) pairs out."""

    def __init__(self, server: BackgroundServer) -> None:
        self._stack = contextlib.ExitStack()
        self.ws: ClientConnection = self._stack.enter_context(connect(server.url, max_size=None))

    def send(self, kind: str, payload: Any) -> None:
        self.ws.send(f"{kind} {json.dumps(payload)}")

    def recv(self, timeout: float = 30) -> tuple[str, dict[str, Any], str]:
        frame = self.ws.recv(timeout=timeout)
        assert isinstance(frame, str)
        kind, _, body = frame.partition(" ")
        items = json.loads(body)
        assert isinstance(items, list) and len(items) == 1, frame  # LMQL: one-element array
        return kind, items[0], frame

    def stream(self, timeout: float = 30) -> list[tuple[str, dict[str, Any]]]:
        """Messages up to the first terminal one (LMQL's rule)."""
        out = []
        while True:
            kind, item, _ = self.recv(timeout)
            out.append((kind, item))
            if kind == "MSG" or "error" in item or item.get("finish_reason") is not None:
                return out

    def close(self) -> None:
        self._stack.close()


@pytest.fixture
def raw(server: BackgroundServer) -> Iterator[Raw]:
    r = Raw(server)
    yield r
    r.close()


def generate(sid: Any, prompt: list[int] = PROMPT, max_tokens: int = 4, **kw: Any) -> dict:
    """A GENERATE payload in LMQL's key order."""
    return {"max_tokens": max_tokens, "temperature": 0.0, **kw, "top_logprobs": 1,
            "model": "tiny", "prompt": prompt, "stream_id": sid}  # fmt: skip


def handles_of(server: BackgroundServer) -> dict[Any, Any]:
    """The engine handles of the streams the server has in flight, by client stream id."""

    def read() -> dict[Any, Any]:
        sessions = server.server.stats.sessions
        return {st.wire_id: st.handle for s in sessions for st in s._streams.values()}

    return server.call(read)


def wait_for(predicate: Any, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --------------------------------------------------------------------------- wire format


def test_generate_replies_are_lmql_token_frames(raw: Raw, tiny_engine: Engine) -> None:
    raw.send("GENERATE", generate(1, max_tokens=5, logit_bias={"5": 100}))
    frames = [raw.recv() for _ in range(5)]
    for kind, item, frame in frames:
        assert kind == "TOKEN" and list(item) == TOKEN_KEYS
        assert frame == "TOKEN " + json.dumps([item])  # json.dumps spacing, array of one
        assert item["stream_id"] == 1 and item["token"] == 5  # the bias wins every step
        assert list(item["top_logprobs"]) == ["5"]  # keys are decimal strings
    assert [i["finish_reason"] for _, i, _ in frames] == [None] * 4 + ["length"]


async def test_generate_matches_the_in_process_engine(server: BackgroundServer, tiny_engine):
    op = Generate(None, "tiny", PROMPT, max_tokens=8, top_logprobs=3)
    local = LMTPClient(InProcessTransport(tiny_engine))
    remote = LMTPClient(WebSocketTransport(server.endpoint))
    expected = [e async for e in local.generate(dataclasses.replace(op))]
    got = [e async for e in remote.generate(op)]
    assert [e.token for e in got] == [e.token for e in expected]
    assert [e.finish_reason for e in got] == [e.finish_reason for e in expected]
    for g, e in zip(got, expected, strict=True):
        assert g.top_logprobs == pytest.approx(e.top_logprobs)


def test_score_replies_one_token_per_scored_id(raw: Raw) -> None:
    raw.send("SCORE", {"model": "tiny", "prompt": PROMPT, "scored": [11, 12, 13], "stream_id": 9})
    items = raw.stream()
    assert [k for k, _ in items] == ["TOKEN"] * 3
    assert [list(i) for _, i in items] == [TOKEN_KEYS[:4]] * 3  # no top_logprobs
    assert [i["token"] for _, i in items] == [11, 12, 13]
    assert [i["finish_reason"] for _, i in items] == [None, None, "stop"]
    assert all(i["logprob"] < 0 for _, i in items)


def test_model_info_is_lmql_shaped_and_advertises_extensions(raw: Raw) -> None:
    raw.send("MODEL_INFO", {"stream_id": 7, "model": "tiny", "data": {"model": "tiny"}})
    kind, item, _ = raw.recv()
    assert kind == "MSG" and list(item) == ["stream_id", "model_info"] and item["stream_id"] == 7
    info = item["model_info"]
    assert info["model_type"] == "transformers" and "constructor" in info
    assert {"stop", "grammar", "tokenizer", "batch", "cancel"} <= set(info["capabilities"])
    assert "tokenizer" not in info  # handed out only when asked for


def test_tokenizer_is_handed_out_on_request(raw: Raw, tokenizer: Tokenizer) -> None:
    raw.send("MODEL_INFO", {"stream_id": 1, "model": "", "data": {"tokenizer": True}})
    _, item, _ = raw.recv()
    handed = item["model_info"]["tokenizer"]
    remote = Tokenizer.from_json(handed["json"], bos_token_id=handed["bos_token_id"],
                                 eos_token_id=handed["eos_token_id"])  # fmt: skip
    text = "Review: We had a great stay. Ünïcödé ✓"
    assert remote.encode(text) == tokenizer.encode(text)
    assert (remote.bos_token_id, remote.eos_token_id) == (1, 2)


def test_stream_ids_are_echoed_as_sent_even_when_reused(raw: Raw) -> None:
    """Two streams with the same id, and ids of other JSON types, are all served."""
    for sid in ("a", "a", None, 2.5):
        raw.send("GENERATE", generate(sid, max_tokens=3))
    seen: dict[str, int] = {}
    while sum(seen.values()) < 12:
        _, item, _ = raw.recv()
        key = json.dumps(item["stream_id"])
        seen[key] = seen.get(key, 0) + 1
    assert seen == {'"a"': 6, "null": 3, "2.5": 3}


def test_batch_frame_submits_ops_together(raw: Raw) -> None:
    ops = [["SCORE", {"prompt": PROMPT, "scored": [t], "stream_id": t}] for t in (20, 21, 22)]
    raw.ws.send("BATCH " + json.dumps([*ops, ["MODEL_INFO", {"stream_id": 30}]]))
    replies = {}
    for _ in range(4):
        _, item, _ = raw.recv()
        replies[item["stream_id"]] = item
    assert sorted(replies) == [20, 21, 22, 30]
    assert all(replies[t]["token"] == t for t in (20, 21, 22))
    assert all(replies[t]["finish_reason"] == "stop" for t in (20, 21, 22))


def test_cancel_stops_a_stream_in_the_engine(server: BackgroundServer, raw: Raw) -> None:
    raw.send("GENERATE", generate("c5", max_tokens=100_000))
    raw.recv()
    handle = handles_of(server)["c5"]
    raw.send("CANCEL", {"stream_id": "c5"})
    wait_for(lambda: handle.cancelled)
    assert "c5" not in handles_of(server)
    raw.send("GENERATE", generate(6, max_tokens=2))  # the connection goes on
    mine = []
    while len(mine) < 2:
        item = raw.recv()[1]
        if item["stream_id"] == 6:
            mine.append(item)
        else:  # tokens c5 produced before the cancel was read; none with a finish_reason
            assert item["stream_id"] == "c5" and item["finish_reason"] is None
    assert mine[-1]["finish_reason"] == "length"


def test_plain_http_get_answers_status(server: BackgroundServer) -> None:
    import urllib.request

    with urllib.request.urlopen(f"http://{server.endpoint}/", timeout=10) as reply:
        assert reply.read().decode().startswith("cogql LMTP server: model ready")


# --------------------------------------------------------------------------- robustness

BAD_STREAM_OPS = [  # (frame, the error the stream gets)
    ("GENERATE " + json.dumps({"stream_id": 3, "model": "m"}), "missing field 'prompt'"),
    ("GENERATE " + json.dumps(generate(3, max_tokens="many")), "'max_tokens' has the wrong type"),
    ("GENERATE " + json.dumps(generate(3, prompt=[1, "x"])), "list of token ids"),
    ("GENERATE " + json.dumps(generate(3, prompt=[1, 10**6])), "outside the vocabulary"),
    ("GENERATE " + json.dumps(generate(3, logit_bias={"49152": 100})), "outside the vocabulary"),
    ("GENERATE " + json.dumps(generate(3, logit_bias={"x": 1})), "logit_bias keys"),
    ("GENERATE " + json.dumps(generate(3, prompt=[1] * 5000)), "exceed the model's context"),
    ("GENERATE " + json.dumps(generate(3, prompt=[])), "prompt is empty"),
    ("SCORE " + json.dumps({"prompt": PROMPT, "scored": [10**6], "stream_id": 3}), "vocabulary"),
    ("SCORE " + json.dumps({"prompt": PROMPT, "scored": [], "stream_id": 3}), "at least one"),
    ("SCORE " + json.dumps({"prompt": PROMPT, "stream_id": 3}), "missing field 'scored'"),
]
BAD_FRAMES = [  # frames that belong to no stream: a MSG with stream_id null
    ("GENERATE", "expected 'TYPE {json}'"),
    ("GENERATE {not json", "malformed JSON"),
    ("GENERATE [1, 2]", "must be a JSON object"),
    ("GENERATE " + json.dumps({"prompt": [1]}), "'stream_id'"),
    ("BATCH {}", "list of [TYPE, {...}] pairs"),
    ("BATCH " + json.dumps([["SCORE", {}]] * 257), "at most 256"),
    ("CANCEL []", "CANCEL needs a stream_id"),
    ('GENERATE {"stream_id": NaN, "prompt": [1]}', "NaN or Infinity"),  # it would be echoed
    ('BATCH [["SCORE", {"stream_id": [Infinity]}]]', "NaN or Infinity"),
    ("GENERATE " + "9" * 5000, "unreadable JSON"),  # json.loads raises ValueError, not its own
    ("GENERATE " + "[" * 100_000, "nested too deeply"),  # RecursionError
]


@pytest.fixture
def bystander(server: BackgroundServer) -> Iterator[Raw]:
    """Another client, with a GENERATE in flight while a test sends bad input."""
    r = Raw(server)
    r.send("GENERATE", generate("by", max_tokens=8))
    yield r
    assert len(r.stream()) == 8  # it ran to its end regardless
    r.close()


@pytest.mark.parametrize(("frame", "error"), BAD_STREAM_OPS)
def test_bad_ops_fail_their_stream_only(raw: Raw, bystander: Raw, frame: str, error: str):
    raw.send("GENERATE", generate(1, max_tokens=8))  # a neighbour on the same connection
    raw.ws.send(frame)
    replies: dict[Any, list[dict]] = {1: [], 3: []}
    while not replies[3] or not replies[1] or replies[1][-1]["finish_reason"] is None:
        kind, item, _ = raw.recv()
        replies[item["stream_id"]].append(item)
        if item["stream_id"] == 3:
            assert kind == "TOKEN"  # LMQL's client hangs on a MSG error for a stream
    assert replies[3] == [{"stream_id": 3, "error": replies[3][0]["error"]}]
    assert error in replies[3][0]["error"]
    assert len(replies[1]) == 8  # the neighbour ran to its end


@pytest.mark.parametrize(("frame", "error"), BAD_FRAMES)
def test_malformed_frames_get_an_error_and_keep_the_connection(raw: Raw, frame: str, error: str):
    raw.ws.send(frame)
    kind, item, _ = raw.recv()
    assert kind == "MSG" and item["stream_id"] is None and error in item["error"]
    raw.send("GENERATE", generate(2, max_tokens=2))
    assert [i["stream_id"] for _, i in raw.stream()] == [2, 2]


def test_unknown_message_type_is_lmqls_error(raw: Raw) -> None:
    raw.send("SUMMARIZE", {"stream_id": 4, "model": "m"})
    assert raw.recv()[2] == 'MSG [{"stream_id": 4, "error": "Unknown command: SUMMARIZE"}]'


def test_binary_frame_closes_only_that_connection(raw: Raw, bystander: Raw) -> None:
    raw.ws.send(b"\x00\xffGENERATE")
    with pytest.raises(ConnectionClosed) as closed:
        raw.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1003


def test_oversized_frame_closes_only_that_connection(tight: BackgroundServer) -> None:
    victim, bystander = Raw(tight), Raw(tight)
    bystander.send("GENERATE", generate(1, max_tokens=10))
    victim.send("GENERATE", generate(1, prompt=[1] * 40_000))  # ~120 KB > 64 KiB
    with pytest.raises(ConnectionClosed) as closed:
        victim.recv()
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009  # message too big
    assert len(bystander.stream()) == 10
    bystander.close()


def test_disconnect_mid_stream_cancels_its_streams(server: BackgroundServer) -> None:
    leaver, stayer = Raw(server), Raw(server)
    for sid in ("leave-1", "leave-2"):
        leaver.send("GENERATE", generate(sid, max_tokens=100_000))
    leaver.recv()
    stayer.send("GENERATE", generate("stay", max_tokens=20))
    stayer.recv()
    handles = handles_of(server)
    leaver.close()
    wait_for(lambda: handles["leave-1"].cancelled and handles["leave-2"].cancelled)
    assert not handles["stay"].cancelled
    assert len(stayer.stream()) == 19  # the other client's stream ran on to its end
    stayer.close()


def test_flood_is_served_with_bounded_streams_and_queue(tight: BackgroundServer) -> None:
    """120 GENERATEs sent at once, 4 may run per connection and 16 wait: the rest are refused
    with an error naming the limits, and every stream gets exactly one outcome."""
    flood = Raw(tight)
    n = 120
    sender = threading.Thread(
        target=lambda: [flood.send("GENERATE", generate(i, max_tokens=2)) for i in range(n)]
    )
    sender.start()
    tokens: dict[int, int] = {}
    refused: list[str] = []
    while len(refused) + sum(1 for c in tokens.values() if c == 2) < n:
        _, item, _ = flood.recv()
        if "error" in item:
            refused.append(item["error"])
            assert item["stream_id"] not in tokens
        else:
            tokens[item["stream_id"]] = tokens.get(item["stream_id"], 0) + 1
    sender.join()
    assert len(tokens) >= 20 and set(tokens.values()) == {2}  # 4 running + 16 queued at least
    assert all("server busy" in e and "4 running and 16 ops" in e for e in refused)
    stats = tight.server.stats
    assert stats.streams_high <= 4 and stats.queued_high <= 16
    flood.close()


# --------------------------------------------------------------------------- model loading


def test_model_info_is_unavailable_while_loading_and_streams_wait(tiny_engine: Engine) -> None:
    release = threading.Event()

    def slow_load() -> Engine:
        release.wait(30)
        return tiny_engine

    with BackgroundServer(slow_load, owns_engine=False) as s:
        r = Raw(s)
        r.send("MODEL_INFO", {"stream_id": 1, "model": "m"})
        assert r.recv()[1] == {"stream_id": 1, "model_info": "<unavailable>"}
        r.send("GENERATE", generate(2, max_tokens=3))
        with pytest.raises(TimeoutError):
            r.recv(timeout=0.3)  # parked until the model is there
        release.set()
        assert [i["stream_id"] for _, i in r.stream()] == [2, 2, 2]
        r.send("MODEL_INFO", {"stream_id": 3, "model": "m"})
        assert isinstance(r.recv()[1]["model_info"], dict)
        r.close()


def test_failed_load_is_an_error_for_every_op() -> None:
    def broken() -> Engine:
        raise FileNotFoundError("no weights in /nowhere")

    with BackgroundServer(broken) as s:
        r = Raw(s)
        r.send("GENERATE", generate(1))  # may arrive before or after the failure
        r.send("MODEL_INFO", {"stream_id": 2, "model": "m"})
        r.send("SCORE", {"prompt": PROMPT, "scored": [5], "stream_id": 3})
        replies = {item["stream_id"]: (kind, item) for kind, item, _ in (r.recv() for _ in "123")}
        assert {sid: kind for sid, (kind, _) in replies.items()} == {
            1: "TOKEN",
            2: "MSG",
            3: "TOKEN",
        }
        for _, item in replies.values():
            # the client learns what failed, not where on the server's disk
            assert item["error"] == "model failed to load: FileNotFoundError: no weights in nowhere"
        r.close()


def http_status(server: BackgroundServer) -> tuple[int, str]:
    """GET / (the health check): status code and body."""
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://{server.endpoint}/", timeout=10) as reply:
            return reply.status, reply.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def test_a_dead_engine_is_reported_and_every_op_gets_its_reason() -> None:
    """Should the engine's thread die, the server says so (GET / is 503, MODEL_INFO is an
    error) and answers every op with the reason at once, instead of 'ready' and silence."""
    from cogql.engine.models import load_model

    engine = Engine(lambda: load_model("random", seed=5))
    try:
        with BackgroundServer(engine) as s:
            r = Raw(s)
            r.send("GENERATE", generate(1, max_tokens=2))
            assert [i["stream_id"] for _, i in r.stream()] == [1, 1]

            def broken_loop() -> None:
                raise RuntimeError("injected: the loop broke")

            engine._turn = broken_loop  # type: ignore[method-assign] - a bug escaping the loop
            r.send("GENERATE", generate(2, max_tokens=2))
            [(_, died)] = r.stream()
            assert "injected: the loop broke" in died["error"]
            status, body = http_status(s)
            assert status == 503 and "failed" in body and "injected: the loop broke" in body
            r.send("MODEL_INFO", {"stream_id": 3, "model": "m"})
            r.send("SCORE", {"prompt": PROMPT, "scored": [5], "stream_id": 4, "model": "m"})
            replies = {i["stream_id"]: i for _, i, _ in (r.recv() for _ in "34")}
            assert all("injected: the loop broke" in i["error"] for i in replies.values())
            r.close()
    finally:
        engine.close()


def test_a_failed_load_is_unhealthy() -> None:
    def broken() -> Engine:
        raise FileNotFoundError("no weights in /nowhere")

    with BackgroundServer(broken) as s:
        for _ in range(200):  # bounded: the failure is reported by a helper thread
            status, body = http_status(s)
            if status != 200:
                break
            time.sleep(0.05)
        assert status == 503 and "no weights in nowhere" in body  # no local paths


# --------------------------------------------------------------------------- client transport


@pytest.mark.parametrize(
    ("endpoint", "url"),
    [
        ("localhost:8081", "ws://localhost:8081/"),
        ("ws://10.0.0.2:9000", "ws://10.0.0.2:9000/"),
        ("wss://example.org/lmtp", "wss://example.org:8080/lmtp"),
        ("lmtp://host:1234", "ws://host:1234/"),
        ("lmtp:host:1234", "ws://host:1234/"),
        ("http://host:1234", "ws://host:1234/"),  # LMQL's own form
        ("somehost", "ws://somehost:8080/"),
        ("[::1]:8080", "ws://[::1]:8080/"),
    ],
)
def test_endpoint_forms(endpoint: str, url: str) -> None:
    assert endpoint_url(endpoint) == url


@pytest.mark.parametrize("endpoint", ["ftp://h:1", "h:notaport", "ws://:80"])
def test_bad_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises(EndpointError):
        endpoint_url(endpoint)


async def test_dead_server_fails_fast_with_the_endpoint() -> None:
    port = free_port()
    with pytest.raises(LMTPConnectionError, match=rf"no LMTP server at ws://127.0.0.1:{port}/: "):
        await cogql.model("m", endpoint=f"127.0.0.1:{port}").connect()
    client = LMTPClient(WebSocketTransport(f"lmtp:127.0.0.1:{port}"))
    with pytest.raises(LMTPError, match="connection refused"):
        await client.model_info()


async def test_model_info_times_out_on_a_silent_server() -> None:
    async def silent(ws: Any) -> None:
        async for _ in ws:
            pass

    async with serve(silent, "127.0.0.1", 0) as quiet:
        port = quiet.sockets[0].getsockname()[1]
        client = LMTPClient(WebSocketTransport(f"127.0.0.1:{port}", info_timeout=0.3))
        with pytest.raises(LMTPError, match=r"did not answer MODEL_INFO within 0.3 s"):
            await client.model_info()


async def test_one_connection_is_shared_by_all_clients(tiny_engine: Engine) -> None:
    async with background(tiny_engine) as s:
        a = LMTPClient(WebSocketTransport(s.endpoint))
        b = LMTPClient(WebSocketTransport(f"ws://{s.endpoint}"))

        async def run(client: LMTPClient, n: int) -> list[int]:
            return [e.token async for e in client.generate(Generate(None, "", PROMPT, n))]

        # both clients number their streams from 1: the transport keeps them apart
        got = await asyncio.gather(run(a, 3), run(b, 5), run(a, 4), a.score(PROMPT, [[5], [6]]))
        assert [len(x) for x in got] == [3, 5, 4, 2]
        assert s.server.stats.connections == 1


async def test_dropped_connection_fails_streams_and_reconnects(tiny_engine: Engine) -> None:
    first = await asyncio.to_thread(BackgroundServer(tiny_engine).start)
    port = first.server.port
    client = LMTPClient(WebSocketTransport(f"127.0.0.1:{port}"))
    stream = client.generate(Generate(None, "", PROMPT, max_tokens=100_000))
    await anext(stream)
    await asyncio.to_thread(first.stop)
    with pytest.raises(LMTPError, match=rf"connection to LMTP server at ws://127.0.0.1:{port}/"):
        async for _ in stream:
            pass
    async with background(tiny_engine, port=port):
        tokens = [e async for e in client.generate(Generate(None, "", PROMPT, max_tokens=3))]
        assert len(tokens) == 3


async def test_client_uses_batch_and_cancel_once_advertised(server: BackgroundServer) -> None:
    frames = server.server.stats.frames
    client = LMTPClient(WebSocketTransport(server.endpoint))
    await client.score(PROMPT, [[5], [6]])  # capabilities not known yet: one frame per op
    before = frames["BATCH"]
    assert "batch" in await client.capabilities()
    assert await client.score(PROMPT, [[5], [6], [7]]) is not None
    assert frames["BATCH"] == before + 1
    stream = client.generate(Generate(None, "", PROMPT, max_tokens=100_000))
    await anext(stream)
    (handle,) = (await asyncio.to_thread(handles_of, server)).values()
    await stream.aclose()  # the caller stops reading: the server stops generating
    await asyncio.to_thread(wait_for, lambda: handle.cancelled)
    assert frames["CANCEL"] >= 1


async def test_remote_model_gets_the_servers_tokenizer(server: BackgroundServer, tokenizer):
    conn = await cogql.model("tiny", endpoint=server.endpoint).connect()
    assert {"stop", "grammar", "batch", "cancel"} <= conn.capabilities
    text = "Hiking in the mountains was fabulous"
    assert conn.tokenizer.encode(text) == tokenizer.encode(text)
    assert conn.bos_token_id == tokenizer.bos_token_id


async def test_a_client_naming_another_model_is_told_which_one_answers(
    server: BackgroundServer, tiny_model_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        await cogql.model(f"local:{tiny_model_path}", endpoint=server.endpoint).connect()
        assert not caplog.records  # the folder the server was started with: its name matches
        await cogql.model("gpt2", endpoint=server.endpoint).connect()
    served = tiny_model_path.name
    assert f"serves {served!r}, not 'gpt2' as named; the queries run on {served!r}" in caplog.text


async def test_the_wait_for_a_model_that_never_loads_is_bounded(tiny_engine: Engine) -> None:
    release = threading.Event()

    def never_loads() -> Engine:
        release.wait(30)
        return tiny_engine

    try:
        async with background(never_loads, owns_engine=False) as s:
            model = cogql.model("gpt2", endpoint=s.endpoint, load_timeout=0.5)
            with pytest.raises(RemoteModelNotLoaded) as failed:
                await model.connect()
    finally:
        release.set()
    message = str(failed.value)
    assert f"the LMTP server at ws://{s.endpoint}/ has not loaded 'gpt2' after" in message
    assert "An LMQL server (lmql serve-model) loads whatever model its client names" in message
    with pytest.raises(cogql.ModelError, match="load_timeout must be a positive number"):
        await cogql.model("gpt2", endpoint=s.endpoint, load_timeout=0).connect()


def test_sentiment_query_over_the_server_matches_in_process(engine: Engine) -> None:
    """cogql's client against cogql's server, extensions in use: the same query result."""
    source = (EXAMPLES / "sentiment.lmql").read_text(encoding="utf-8")
    local = cogql.run_sync(source)
    with BackgroundServer(engine) as s:
        remote = cogql.run_sync(source, model=cogql.model("embedded", endpoint=s.endpoint))
        frames = s.server.stats.frames
    # one message: ANALYSIS's GENERATE and the 3 options scored `after` it
    assert frames["BATCH"] == 1 and frames["GENERATE"] == frames["SCORE"] == 0
    assert remote.prompt == local.prompt
    assert remote["ANALYSIS"] == local["ANALYSIS"]
    assert remote["CLASSIFICATION"] == local["CLASSIFICATION"]
    # the engine's prefix cache makes the last digits depend on what ran before (not the wire)
    got = dict(remote.variables["P(CLASSIFICATION)"])
    assert got == pytest.approx(dict(local.variables["P(CLASSIFICATION)"]), abs=1e-3)


# --------------------------------------------------------------------------- command line


class Cli:
    """`python -m cogql serve-model ...` with its log in a file (a pipe nobody reads would
    fill up and block the server's logging)."""

    def __init__(self, tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.log = tmp_path / "serve.log"
        cmd = [sys.executable, "-m", "cogql", "serve-model", *args, "--port", str(self.port)]
        with self.log.open("w") as log:
            self.proc = subprocess.Popen(
                cmd, stderr=log, stdout=log, env={**os.environ, **(env or {})}
            )

    def connect(self, scheme: str = "ws", **kwargs: Any) -> ClientConnection:
        deadline = time.monotonic() + 60
        while True:
            assert self.proc.poll() is None, self.log.read_text()
            try:
                return connect(f"{scheme}://127.0.0.1:{self.port}", open_timeout=2, **kwargs)
            except OSError:
                assert time.monotonic() < deadline, self.log.read_text()
                time.sleep(0.1)

    def model_info(self, ws: ClientConnection) -> dict[str, Any]:
        """Poll MODEL_INFO until the model is no longer loading."""
        while True:
            ws.send('MODEL_INFO {"stream_id": 1, "model": "m"}')
            reply = json.loads(str(ws.recv(timeout=30)).partition(" ")[2])[0]
            if reply.get("model_info") != "<unavailable>":
                return reply
            time.sleep(0.1)

    def stop(self, sig: signal.Signals) -> str:
        self.proc.send_signal(sig)
        try:
            assert self.proc.wait(timeout=30) == 0, self.log.read_text()
        finally:
            self.proc.kill()
        return self.log.read_text()


def test_cli_serves_logs_each_request_and_stops_on_sigint(tiny_model_path: Path, tmp_path):
    cli = Cli(tmp_path, f"local:{tiny_model_path}", "--static", "--batch_size", "8")
    with cli.connect() as ws:
        assert isinstance(cli.model_info(ws)["model_info"], dict)
        ws.send("GENERATE " + json.dumps(generate(2, max_tokens=3)))
        assert '"finish_reason": "length"' in [ws.recv(timeout=30) for _ in range(3)][-1]
    log = cli.stop(signal.SIGINT)
    assert "ignoring LMQL options that do not apply to cogql: --static --batch_size" in log
    assert f"listening on ws://127.0.0.1:{cli.port}/" in log and " ready (" in log
    assert "GENERATE stream=2 prompt=5 tokens=3 " in log and "stopped" in log


@pytest.mark.slow  # a `cogql serve-model` subprocess
def test_cli_reports_a_failed_load_to_clients_and_stops_on_sigterm(tmp_path: Path) -> None:
    cli = Cli(tmp_path, str(tmp_path / "missing-model"), "--keep-serving-on-failure")
    with cli.connect() as ws:
        reply = cli.model_info(ws)
        assert reply["error"].startswith("model failed to load: ModelNotFound")
        ws.send("GENERATE " + json.dumps(generate(2)))
        assert "model failed to load" in json.loads(str(ws.recv(timeout=30))[6:])[0]["error"]
    log = cli.stop(signal.SIGTERM)
    assert "model failed to load" in log and "stopped" in log


def serve_model(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """`cogql serve-model ...` expected to exit on its own (it fails before or while loading)."""
    cmd = [sys.executable, "-m", "cogql", "serve-model", *args, "--port", str(free_port())]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


@pytest.mark.slow  # `cogql serve-model` subprocesses
def test_cli_exits_with_the_reason_when_the_model_cannot_be_had(tmp_path: Path) -> None:
    missing = serve_model(str(tmp_path / "missing-model"))
    assert missing.returncode == 4, missing.stderr
    assert "ModelNotFound" in missing.stderr and "missing-model" in missing.stderr
    assert "listening" not in missing.stderr  # refused before it listened
    cuda = serve_model("random", "--device", "cuda")
    assert cuda.returncode == 4, cuda.stderr
    assert "--device cuda: this machine has no CUDA device" in cuda.stderr


@pytest.mark.slow  # a `cogql serve-model` subprocess loading a broken model
def test_cli_exits_when_the_load_fails_after_listening(tmp_path: Path, embedded_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(embedded_path, broken)
    (broken / "model.safetensors").write_bytes(b"not safetensors")
    done = serve_model(str(broken))
    assert done.returncode == 4, done.stderr
    assert "listening" in done.stderr and "model failed to load" in done.stderr
    assert "--keep-serving-on-failure" in done.stderr and "stopped" in done.stderr


@pytest.mark.slow  # a `cogql serve-model` subprocess
def test_cli_rejects_a_mistyped_flag_with_a_suggestion() -> None:
    done = serve_model("random", "--hots", "0.0.0.0")
    assert done.returncode == 2
    assert "--hots is neither a serve-model option" in done.stderr
    assert "did you mean --host?" in done.stderr


def test_model_arguments_must_be_known_or_after_the_separator(tiny_model_path: Path) -> None:
    def prepared(model: str, extra: list[str], after: tuple[str, ...] = ()) -> dict[str, Any]:
        args = resolve_args(
            model, dtype="auto", device=None, cuda=False, extra=extra, passthrough=list(after)
        )
        prepare(args, ("--host", "--port"))
        return args.model_kwargs

    # from_pretrained's own names and the model's config.json keys pass
    got = prepared(str(tiny_model_path), ["--trust_remote_code", "True", "--rms_norm_eps", "1e-5"])
    assert got == {"trust_remote_code": True, "rms_norm_eps": 1e-5}
    assert prepared("random", ["--seed", "3"]) == {"seed": 3}
    with pytest.raises(ServeUsageError, match=r"--sede .*did you mean --seed\?"):
        prepared("random", ["--sede", "3"])
    with pytest.raises(ServeUsageError, match="from_pretrained's arguments or the model's config"):
        prepared(str(tiny_model_path), ["--trust-remote-cod", "True"])
    # after `--`: passed on as given
    assert prepared(str(tiny_model_path), [], ["--my_option", "1"]) == {"my_option": 1}


def test_quantized_dtypes_are_not_offered() -> None:
    from click.testing import CliRunner

    from cogql.cli import main

    done = CliRunner().invoke(main, ["serve-model", "random", "--dtype", "4bit"])
    assert done.exit_code == 2 and "'4bit' is not one of 'auto', 'float32'" in done.output


@pytest.mark.slow  # a `cogql serve-model` subprocess
def test_cli_serves_the_random_model_with_lmqls_flags(embedded_path: Path, tmp_path: Path) -> None:
    """`lmql serve-model random --seed 123` spelled for cogql, with a tokenizer folder: the
    tokens equal the in-process random model's, and MODEL_INFO names no local path."""
    cli = Cli(tmp_path, "random", "--seed", "123", "--tokenizer", str(embedded_path))
    with cli.connect() as ws:
        info = cli.model_info(ws)["model_info"]
        ws.send("GENERATE " + json.dumps(generate(2, max_tokens=5)))
        served = [json.loads(str(ws.recv(timeout=30))[6:])[0]["token"] for _ in range(5)]
    cli.stop(signal.SIGINT)
    assert (info["model"], info["seed"], info["tokenizer_name"]) == (
        "random",
        123,
        embedded_path.name,
    )
    assert str(embedded_path) not in json.dumps(info)
    engine = local_engine("random", seed=123, tokenizer=str(embedded_path))
    client = LMTPClient(InProcessTransport(engine), model="random")

    async def in_process() -> list[int]:
        return [e.token async for e in client.generate(Generate(None, "", PROMPT, 5))]

    assert served == asyncio.run(in_process())


# --------------------------------------------------------------------------- access

TOKEN = "s3cret-token-for-tests"


@pytest.fixture(scope="module")
async def guarded(tiny_engine: Engine) -> AsyncIterator[BackgroundServer]:
    """A server that needs a token and allows one browser origin."""
    access = AccessPolicy.build(TOKEN, ["https://allowed.example"])
    async with background(tiny_engine, access=access) as s:
        yield s


def refused_status(url: str, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as refused, connect(url, open_timeout=10, **kwargs):
        pass
    response = refused.value.response
    return response.status_code, bytes(response.body or b"").decode()


def test_browser_origins_are_refused_unless_allowed(server: BackgroundServer) -> None:
    """A web page the user visits may open a websocket to localhost: its Origin gives it away."""
    status, body = refused_status(server.url, origin="https://evil.example")
    assert status == 403 and "--allow-origin" in body
    with connect(server.url, open_timeout=10):  # no Origin: not a browser
        pass
    assert server.server.stats.refused[403] >= 1


def test_an_allowed_origin_with_the_token_connects(guarded: BackgroundServer) -> None:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with connect(guarded.url, origin="https://allowed.example", additional_headers=auth) as ws:
        ws.send("GENERATE " + json.dumps(generate(1, max_tokens=2)))
        assert '"finish_reason": "length"' in str([ws.recv(timeout=30) for _ in "12"][-1])
    assert (
        refused_status(guarded.url, origin="https://other.example", additional_headers=auth)[0]
        == 403
    )


@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", f"Bearer {TOKEN}x"])
def test_a_missing_or_wrong_token_gets_401(guarded: BackgroundServer, header: str | None) -> None:
    headers = {"Authorization": header} if header else None
    status, body = refused_status(guarded.url, additional_headers=headers)
    assert status == 401 and "Authorization: Bearer" in body
    assert TOKEN not in body


def test_the_status_page_needs_the_token_too(guarded: BackgroundServer) -> None:
    import urllib.error
    import urllib.request

    url = f"http://{guarded.endpoint}/"
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(url, timeout=10)
    assert refused.value.code == 401
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as reply:
        assert reply.read().decode().startswith("cogql LMTP server: model ready")


async def test_cogql_client_sends_the_token(
    guarded: BackgroundServer, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """token= or $COGQL_SERVE_TOKEN; the token never appears in a log line, even websockets'
    DEBUG lines that print every handshake header."""
    monkeypatch.delenv("COGQL_SERVE_TOKEN", raising=False)
    caplog.set_level(logging.DEBUG)
    with pytest.raises(LMTPConnectionError, match="refused the connection: HTTP 401: this LMTP"):
        await cogql.model("m", endpoint=guarded.endpoint).connect()
    model = cogql.model("m", endpoint=guarded.endpoint, token=TOKEN)
    assert TOKEN not in repr(model) and "token" not in model.configuration
    assert (await model.connect()).capabilities
    monkeypatch.setenv("COGQL_SERVE_TOKEN", TOKEN)
    client = LMTPClient(WebSocketTransport(guarded.endpoint))
    assert [e.token async for e in client.generate(Generate(None, "", PROMPT, 2))]
    assert any("Authorization" in r.getMessage() for r in caplog.records)  # headers were logged
    assert not [r for r in caplog.records if TOKEN in r.getMessage()]


def make_certificate(folder: Path) -> tuple[Path, Path]:
    """A self-signed certificate for localhost and 127.0.0.1, made with the openssl CLI."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is not installed (needed to make a test certificate)")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=localhost", "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return cert, key


async def test_tls_serves_wss_to_a_client_that_trusts_the_certificate(
    tiny_engine: Engine, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cert, key = make_certificate(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))  # the client's trust store: this cert
    async with background(tiny_engine, ssl_context=tls_context(cert, key)) as s:
        assert s.url.startswith("wss://")
        model = cogql.model("m", endpoint=f"wss://localhost:{s.server.port}")
        conn = await model.connect()
        assert [e.token async for e in conn.client.generate(Generate(None, "", PROMPT, 2))]
        with pytest.raises(LMTPConnectionError):  # plain ws:// to a TLS port
            await cogql.model("m", endpoint=f"ws://localhost:{s.server.port}").connect()
    monkeypatch.delenv("SSL_CERT_FILE")
    with pytest.raises(AccessConfigError, match="cannot use the certificate"):
        tls_context(key, None)  # a key is not a certificate


def test_tokens_are_printable_ascii() -> None:
    assert AccessPolicy.build("").token is None  # an empty COGQL_SERVE_TOKEN: no token
    for bad in ("two words", "t\u00f6ken", "line\nbreak"):
        with pytest.raises(AccessConfigError, match="printable ASCII"):
            AccessPolicy.build(bad)


def test_listening_beyond_loopback_is_warned_about() -> None:
    assert exposure_warning(["127.0.0.1", "::1"], token=False, tls=False) is None
    bare = exposure_warning(["0.0.0.0"], token=False, tls=False)
    assert bare is not None and "NO token" in bare and "anyone" in bare
    clear = exposure_warning(["::", "127.0.0.1"], token=True, tls=False)
    assert clear is not None and "clear text" in clear and "NO token" not in clear
    assert "NO token" not in str(exposure_warning(["10.1.2.3"], token=True, tls=True))


def test_model_info_names_the_model_not_its_path(raw: Raw, tiny_model_path: Path) -> None:
    raw.send("MODEL_INFO", {"stream_id": 1, "model": "m", "data": {"tokenizer": True}})
    info = raw.recv()[1]["model_info"]
    text = json.dumps(info)
    assert str(tiny_model_path) not in text and str(Path.home()) not in text
    assert info["model"] == tiny_model_path.name
    assert info["constructor"] == f"AutoModelForCausalLM.from_pretrained({tiny_model_path.name!r})"


def test_client_text_cannot_forge_log_lines(raw: Raw, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="cogql.serve")
    forged = "x\nINFO forged\u2028line"
    raw.send("GENERATE", generate(forged, max_tokens=1))
    raw.send("SCORE", {"prompt": PROMPT, "scored": [], "stream_id": forged})  # an error
    raw.ws.send("BAD\nTYPE {}")
    raw.send("GENERATE", generate(1, max_tokens="x\ny"))
    for _ in range(4):
        raw.recv()
    wait_for(lambda: sum("forged" in r.getMessage() for r in caplog.records) >= 2)
    lines = [r.getMessage() for r in caplog.records if r.name == "cogql.serve"]
    assert lines and all("\n" not in m and "\u2028" not in m for m in lines)
    assert any('stream="x\\nINFO forged\\u2028line"' in m for m in lines)


# --------------------------------------------------------------------------- admission


def test_pings_are_answered_while_streams_are_at_the_cap(tiny_engine: Engine) -> None:
    """A client that pipelines more GENERATEs than may run: the server keeps reading (pings
    answered, CANCEL read) and every queued stream is served once there is room."""
    limits = Limits(max_streams_per_connection=4, max_queued_ops=400)
    with BackgroundServer(tiny_engine, limits=limits) as s:
        r = Raw(s)
        for i in range(4):
            r.send("GENERATE", generate(f"long{i}", max_tokens=100_000))
        for i in range(300):
            r.send("GENERATE", generate(i, max_tokens=1))
        assert r.ws.ping().wait(30), "no pong while the connection is at its stream cap"
        for i in range(4):
            r.send("CANCEL", {"stream_id": f"long{i}"})
        done: set[int] = set()
        while len(done) < 300:
            _, item, _ = r.recv()
            assert "error" not in item, item
            if item["finish_reason"] is not None:
                done.add(item["stream_id"])
        assert s.server.stats.streams_high <= 4 and s.server.stats.queued_high <= 300
        r.close()


def test_cancel_reaches_queued_streams_and_their_followers(tiny_engine: Engine) -> None:
    limits = Limits(max_streams_per_connection=1)
    with BackgroundServer(tiny_engine, limits=limits) as s:
        r = Raw(s)
        r.send("GENERATE", generate("long", max_tokens=100_000))
        lead = ["GENERATE", generate("lead", max_tokens=2)]
        follow = ["SCORE", {"prompt": [], "scored": [5], "after": "lead", "stream_id": "f"}]
        r.ws.send("BATCH " + json.dumps([lead, follow]))
        r.send("GENERATE", generate("next", max_tokens=2))
        wait_for(lambda: s.call(lambda: sum(x.queued_ops for x in s.server.stats.sessions)) == 3)
        r.send("CANCEL", {"stream_id": "lead"})
        r.send("CANCEL", {"stream_id": "long"})
        got: dict[Any, list[dict]] = {}
        while not got.get("next") or got["next"][-1].get("finish_reason") is None:
            item = r.recv()[1]
            got.setdefault(item["stream_id"], []).append(item)
        assert "lead" not in got
        assert got["f"] == [{"stream_id": "f", "error": got["f"][0]["error"]}]
        assert "the GENERATE it follows was cancelled" in got["f"][0]["error"]
        r.close()


def test_a_client_that_does_not_read_is_closed_and_its_backlog_freed(
    tight: BackgroundServer,
) -> None:
    """MODEL_INFO with the tokenizer is a 2 MB reply to a 70-byte request: a client that asks
    for it again and again without reading is closed once 1 MB waits unsent."""
    stats = tight.server.stats
    before = stats.closed["backlog"]
    with connect(tight.url, max_size=None, max_queue=1) as ws:
        request = 'MODEL_INFO {"stream_id": 1, "model": "m", "data": {"tokenizer": true}}'
        with contextlib.suppress(ConnectionClosed):
            for _ in range(200):
                ws.send(request)
        wait_for(lambda: stats.closed["backlog"] == before + 1, timeout=60)  # before reading
        with pytest.raises(ConnectionClosed) as closed:
            for _ in range(400):
                ws.recv(timeout=30)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert "1 MB of replies unsent" in closed.value.rcvd.reason
    assert stats.backlog_high < 2**20 + 4 * 2**20  # the bound plus the reply that crossed it
    wait_for(lambda: tight.call(lambda: sum(s.out_bytes for s in stats.sessions)) == 0)


def test_top_logprobs_is_capped(raw: Raw) -> None:
    raw.send("GENERATE", {**generate(1, max_tokens=1), "top_logprobs": 10**9})
    error = raw.recv()[1]["error"]
    assert "top_logprobs is 1000000000" in error and "at most 20" in error
    raw.send("GENERATE", {**generate(2, max_tokens=1), "top_logprobs": 20})
    assert len(raw.recv()[1]["top_logprobs"]) >= 20


def test_connections_beyond_the_cap_get_503(tiny_engine: Engine) -> None:
    with BackgroundServer(tiny_engine, limits=Limits(max_connections=2)) as s:
        first, second = Raw(s), Raw(s)
        status, body = refused_status(s.url)
        assert status == 503 and "maximum of 2 connections" in body
        first.close()
        wait_for(lambda: len(s.call(lambda: list(s.server.stats.sessions))) < 2)
        third = Raw(s)
        third.send("GENERATE", generate(1, max_tokens=1))
        assert third.recv()[1]["finish_reason"] == "length"
        second.close()
        third.close()


def test_idle_connections_are_closed_but_busy_ones_are_not(tiny_engine: Engine) -> None:
    with BackgroundServer(tiny_engine, limits=Limits(idle_timeout=0.3)) as s:
        busy = Raw(s)
        busy.send("GENERATE", generate(1, max_tokens=20))
        tokens = 0
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                busy.recv()
                tokens += 1
        assert tokens == 20  # it ran to its end; the idle clock started after that
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1000
        assert "idle for 0.3 s" in closed.value.rcvd.reason
        assert s.server.stats.closed["idle"] == 1


def test_repeated_log_lines_are_limited_and_counted() -> None:
    logger = logging.getLogger("cogql.test.repeats")
    logger.propagate = False
    logger.setLevel(logging.INFO)
    seen: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: seen.append(record.getMessage())  # type: ignore[method-assign]
    logger.addHandler(handler)
    repeat = limit_repeats(logger)
    assert limit_repeats(logger) is repeat  # installed once
    repeat.window = 3600
    try:
        for i in range(100):
            logger.error("socket.accept() out of system resource %d", i)
            logger.info("request %d done", i)  # an ordinary line: never dropped
        assert sum("out of system" in m for m in seen) == repeat.burst
        assert sum("done" in m for m in seen) == 100
        repeat.window = 0  # the window has passed
        logger.error("socket.accept() out of system resource %d", 100)
        assert seen[-1].endswith(f"[{100 - repeat.burst} similar lines suppressed]")
    finally:
        logger.removeHandler(handler)


def test_oversized_frames_are_closed_with_the_limit_in_the_reason(
    tight: BackgroundServer,
) -> None:
    victim = Raw(tight)
    victim.send("GENERATE", generate(1, prompt=[1] * 40_000))
    with pytest.raises(ConnectionClosed) as closed:
        victim.recv()
    assert closed.value.rcvd is not None and "exceeds limit of 65536 bytes" in (
        closed.value.rcvd.reason
    )


# --------------------------------------------------------------------------- numbers


@pytest.mark.parametrize(
    ("field", "value", "error"),
    [
        ("temperature", float("nan"), "'temperature' must be a finite number >= 0"),
        ("temperature", float("inf"), "'temperature' must be a finite number >= 0"),
        ("temperature", -1.0, "'temperature' must be a finite number >= 0"),
        ("logit_bias", {"5": float("nan")}, "values finite numbers"),
        ("logit_bias", {"5": float("-inf")}, "values finite numbers"),
        ("max_tokens", 4.0, "'max_tokens' has the wrong type (expected an integer, got a number)"),
        ("top_k", "x", "'top_k' must be an integer >= 0, got 'x'"),
        ("top_p", float("nan"), "'top_p' must be a number in (0, 1]"),
        ("seed", 2**70, "'seed' must be between"),
    ],
)
def test_numeric_fields_are_checked(raw: Raw, field: str, value: Any, error: str) -> None:
    raw.ws.send("GENERATE " + json.dumps({**generate("n1", max_tokens=2), field: value}))
    _, item, _ = raw.recv()
    assert item == {"stream_id": "n1", "error": item["error"]}
    assert error in item["error"] and item["error"].startswith('GENERATE stream_id="n1": ')


def test_max_tokens_is_capped_at_the_remaining_context(raw: Raw, tiny_engine: Engine) -> None:
    context = tiny_engine.context_length
    assert context is not None
    raw.send("GENERATE", generate(1, prompt=[1] + [504] * (context - 4), max_tokens=2**70))
    items = raw.stream()
    assert len(items) == 3 and items[-1][1]["finish_reason"] == "length"


def test_a_model_without_a_context_size_is_capped_by_the_limit() -> None:
    engine = local_engine("random", seed=1)
    with BackgroundServer(engine, limits=Limits(max_tokens_without_context=5)) as s:
        r = Raw(s)
        r.send("GENERATE", generate(1, max_tokens=2**70))
        assert len(r.stream()) == 5
        r.close()


def test_no_infinity_reaches_the_wire(raw: Raw) -> None:
    """top_k sampling leaves all but k tokens at -inf: those are left out of top_logprobs
    (LMQL's server writes them as -Infinity, which strict JSON parsers refuse)."""
    op = {**generate(1, max_tokens=3, temperature=1.0, seed=3, top_k=2), "top_logprobs": 5}
    raw.send("GENERATE", op)

    def refuse(name: str) -> None:
        raise AssertionError(f"{name} on the wire")

    for _ in range(3):
        frame = raw.recv()[2]
        item = json.loads(frame.partition(" ")[2], parse_constant=refuse)[0]
        assert len(item["top_logprobs"]) == 2, frame


# --------------------------------------------------------------------------- error messages


def test_after_errors_name_the_clients_stream_ids(raw: Raw) -> None:
    ops = [
        ["GENERATE", generate("g1", max_tokens=2)],
        ["SCORE", {"prompt": [], "scored": [5], "after": "nope", "stream_id": "s1"}],
        ["GENERATE", {**generate("g2", max_tokens=1), "after": "s1"}],
        ["SCORE", {"prompt": [], "scored": [5], "after": "g2", "stream_id": "s2"}],
    ]
    raw.ws.send("BATCH " + json.dumps(ops))
    errors = {}
    while len(errors) < 3:
        item = raw.recv()[1]
        if "error" in item:
            errors[item["stream_id"]] = item["error"]
    assert errors["s1"] == (
        'SCORE stream_id="s1": after="nope" names no GENERATE sent before it in the same message'
    )
    assert errors["g2"].startswith('GENERATE stream_id="g2": after="s1" names no GENERATE')
    assert errors["s2"] == 'SCORE stream_id="s2": after="g2" follows a GENERATE that cannot run'


def test_a_missing_stream_id_says_so(raw: Raw) -> None:
    raw.send("GENERATE", {"prompt": [1], "model": "m"})
    item = raw.recv()[1]
    assert item["stream_id"] is None
    assert item["error"] == "GENERATE without a stream_id: every op needs one ('stream_id')"


@pytest.mark.slow  # a `cogql serve-model` subprocess
def test_cli_token_tls_and_limits(tmp_path: Path) -> None:
    """`--token` from the environment, `--certfile/--keyfile`, `--max-top-logprobs`: a wss://
    client with the token is served, one without gets 401, and the token is not in the log."""
    cert, key = make_certificate(tmp_path)
    flags = ["--certfile", str(cert), "--keyfile", str(key), "--max-top-logprobs", "3"]
    cli = Cli(tmp_path, "random", *flags, env={"COGQL_SERVE_TOKEN": TOKEN})
    trust = ssl.create_default_context(cafile=str(cert))
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with cli.connect("wss", ssl=trust, additional_headers=auth) as ws:
        cli.model_info(ws)
        ws.send("GENERATE " + json.dumps({**generate(1, max_tokens=1), "top_logprobs": 4}))
        assert "at most 3 per token (--max-top-logprobs)" in str(ws.recv(timeout=30))
    assert refused_status(f"wss://127.0.0.1:{cli.port}", ssl=trust)[0] == 401
    log = cli.stop(signal.SIGINT)
    assert f"listening on wss://127.0.0.1:{cli.port}/" in log and TOKEN not in log
    assert "reachable from other machines" not in log  # loopback: no warning


def test_cli_refuses_a_key_without_a_certificate(tmp_path: Path) -> None:
    key = tmp_path / "key.pem"
    key.write_text("not a key")
    cmd = [sys.executable, "-m", "cogql", "serve-model", "random", "--keyfile", str(key)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--keyfile needs --certfile" in done.stderr
