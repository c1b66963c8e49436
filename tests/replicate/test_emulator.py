"""Replicate's API on loopback, checked with the official `replicate` client (1.0.x) and raw HTTP.

One project (the tiny random llama, dest_prefix r8.im/acme/) and one emulator in front of its
real Cog server are shared by the module; the tests that kill a Cog server or run the CLI use a
second project (no dest_prefix: the model is local/tiny), one at a time. Predictions are short
(a few tokens) so the module stays quick on a loaded machine; waits and queues are made slow
with the emulator's injected latency, which does not depend on the machine's speed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from replicate.exceptions import ModelError, ReplicateError

from cogql.lmtp.messages import TokenEvent, parse_server_message
from cogql.replicate.cog.cogserver import can_isolate, free_port
from cogql.replicate.deploy.build import build
from cogql.replicate.deploy.config import load_config
from cogql.replicate.emulator import (
    EmulatorError,
    PortInUseError,
    ReplicateEmulator,
    body,
    catalog,
    sse,
    store,
)
from cogql.replicate.emulator.backend import BACKOFF_FIRST_S, BACKOFF_MAX_S, Backoff
from cogql.replicate.emulator.errors import InvalidInput
from cogql.replicate.emulator.routes import prefer_wait
from cogql.replicate.emulator.validate import validate_input

MODEL = "acme/tiny"


def build_project(folder: Path, model_dir: Path, dest_prefix: str | None) -> Path:
    lines = [f'dest_prefix = "{dest_prefix}"'] if dest_prefix else []
    lines += ["[models.tiny]", f'local.path = "{model_dir}"', "gpu = false"]
    (folder / "config.toml").write_text("\n".join(lines) + "\n")
    [result] = build(load_config(folder / "config.toml"), folder / "work", progress=False)
    return result.folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    return build_project(tmp_path_factory.mktemp("emu"), tiny_model_path, "r8.im/acme/")


@pytest.fixture(scope="module")
def other_project(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    return build_project(tmp_path_factory.mktemp("emu-other"), tiny_model_path, None)


@pytest.fixture(scope="module")
def emu(project: Path) -> Iterator[ReplicateEmulator]:
    with ReplicateEmulator([project], heartbeat_s=0.3, ready_timeout=300) as emulator:
        yield emulator


@pytest.fixture
def client(emu: ReplicateEmulator) -> replicate.Client:
    emu.latency = 0.0
    emu.faults.clear()
    c = replicate.Client(api_token=emu.token, base_url=emu.base_url)
    c.poll_interval = 0.05
    return c


@contextlib.contextmanager
def latency(emu: ReplicateEmulator, seconds: float) -> Iterator[None]:
    emu.latency = seconds
    try:
        yield
    finally:
        emu.latency = 0.0


def ops(max_tokens: int = 3, stream_id: Any = 7) -> dict[str, str]:
    op = {"stream_id": stream_id, "model": "m", "prompt": [1, 504, 3102], "max_tokens": max_tokens}
    return {"ops_batch_json": json.dumps([["GENERATE", op]])}


def tokens(lines: list[str]) -> list[TokenEvent]:
    events = [e for line in lines for e in parse_server_message(line)]
    assert all(isinstance(e, TokenEvent) for e in events), events
    return events  # type: ignore[return-value]


def raw(emu: ReplicateEmulator, token: str | None = None) -> httpx.Client:
    auth = {"Authorization": f"Bearer {token or emu.token}"}
    return httpx.Client(base_url=emu.base_url, headers=auth, timeout=30)


# ---- models, versions, deployments -----------------------------------------------------------


def test_model_version_and_deployment(
    emu: ReplicateEmulator, client: replicate.Client, project: Path
):
    assert emu.models == [MODEL]
    version_id, _ = catalog.content_hash(project)
    assert emu.version(MODEL) == version_id and len(version_id) == 64
    model = client.models.get(MODEL)
    assert (model.owner, model.name, model.visibility) == ("acme", "tiny", "private")
    assert model.latest_version.id == version_id
    version = model.versions.get(version_id)
    output = version.openapi_schema["components"]["schemas"]["Output"]
    assert output["x-cog-array-type"] == "iterator"
    assert [v.id for v in model.versions.list()] == [version_id]
    deployment = client.deployments.get(MODEL)
    assert deployment.current_release.version == version_id
    assert deployment.current_release.model == MODEL


def test_version_id_is_a_content_hash(project: Path) -> None:
    same, _ = catalog.content_hash(project)
    assert catalog.content_hash(project)[0] == same  # stable
    (project / "predict.py").touch()  # a new mtime alone is not new content
    assert catalog.content_hash(project)[0] == same


# ---- predictions through the official client --------------------------------------------------


def test_run_pinned_version_returns_the_predictors_lines(
    emu: ReplicateEmulator, client: replicate.Client
):
    output = client.run(f"{MODEL}:{emu.version(MODEL)}", input=ops(3))
    assert not isinstance(output, list)  # the iterator schema makes run() return a generator
    lines = list(output)
    got = tokens(lines)
    assert [e.finish_reason for e in got] == [None, None, "length"]
    assert all(line.endswith("\n") and line.startswith("TOKEN {") for line in lines)
    assert all(e.stream_id == 7 for e in got)


def test_run_model_endpoint_and_no_wait(emu: ReplicateEmulator, client: replicate.Client) -> None:
    blocking = client.run(MODEL, input=ops(3))
    assert isinstance(blocking, list) and len(blocking) == 3
    polled = client.run(MODEL, input=ops(3), wait=False)
    assert polled == blocking  # greedy decoding: the same lines


def test_stream_is_the_same_lines_byte_for_byte(
    emu: ReplicateEmulator, client: replicate.Client
) -> None:
    lines = client.run(MODEL, input=ops(4))
    events = list(client.stream(f"{MODEL}:{emu.version(MODEL)}", input=ops(4)))
    kinds = [e.event.value for e in events]
    assert kinds == ["output"] * 4 + ["done"]
    assert [e.data for e in events[:-1]] == lines
    seqs = [int(e.id.rpartition(":")[2]) for e in events]
    assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
    assert [e.data for e in client.stream(MODEL, input=ops(4))][:-1] == lines


def test_predictions_create_with_stream_then_wait(emu: ReplicateEmulator, client: replicate.Client):
    prediction = client.predictions.create(version=emu.version(MODEL), input=ops(2), stream=True)
    assert prediction.status == "starting" and prediction.urls["stream"].startswith("http://")
    chunks = [str(e) for e in prediction.stream()]
    prediction.wait()
    assert prediction.status == "succeeded"
    assert "".join(chunks) == "".join(prediction.output)
    assert prediction.metrics["predict_time"] > 0 and prediction.metrics["total_time"] > 0
    assert client.predictions.get(prediction.id).output == prediction.output


def test_deployment_predictions(emu: ReplicateEmulator, client: replicate.Client) -> None:
    prediction = client.deployments.predictions.create(MODEL, input=ops(2))
    prediction.wait()
    assert prediction.status == "succeeded" and len(prediction.output) == 2
    body = raw(emu).get(f"/v1/predictions/{prediction.id}").json()
    assert body["deployment"] == MODEL and body["version"] == emu.version(MODEL)


async def test_async_variants(emu: ReplicateEmulator) -> None:
    client = replicate.Client(api_token=emu.token, base_url=emu.base_url)
    client.poll_interval = 0.05
    ran = await client.async_run(f"{MODEL}:{emu.version(MODEL)}", input=ops(3))
    lines = [line async for line in ran]
    streamed = [e async for e in await client.async_stream(MODEL, input=ops(3))]
    assert [e.data for e in streamed if e.event.value == "output"] == lines
    prediction = await client.deployments.predictions.async_create(MODEL, input=ops(3))
    await prediction.async_wait()
    assert prediction.output == lines
    created = await client.predictions.async_create(model=MODEL, input=ops(3), stream=True)
    assert [str(e) async for e in created.async_stream()][:-1] == lines


def test_concurrent_predictions_queue_for_the_one_slot(emu: ReplicateEmulator) -> None:
    """The sync predictor has one slot: extra predictions wait (Cog's 409s never show)."""

    async def many() -> list[Any]:
        c = replicate.Client(api_token=emu.token, base_url=emu.base_url)
        return await asyncio.gather(*(c.async_run(MODEL, input=ops(2)) for _ in range(4)))

    results = asyncio.run(many())
    assert all(len(r) == 2 for r in results) and all(r == results[0] for r in results)


def test_list_predictions_newest_first_with_pages(
    emu: ReplicateEmulator, client: replicate.Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    made = [client.predictions.create(model=MODEL, input=ops(1)).id for _ in range(3)]
    monkeypatch.setattr(store, "PAGE_SIZE", 2)
    first = client.predictions.list()
    assert [p.id for p in first.results] == made[::-1][:2]
    assert first.next is not None and first.next.startswith(emu.base_url)
    second = client.predictions.list(first.next)
    assert second.results[0].id == made[0]


# ---- Prefer: wait, latency, cancel ------------------------------------------------------------


def test_prefer_wait_times_out_with_the_prediction_still_running(emu: ReplicateEmulator) -> None:
    with latency(emu, 2.0), raw(emu) as http:
        started = time.monotonic()
        answer = http.post(
            f"/v1/models/{MODEL}/predictions", json={"input": ops(2)}, headers={"Prefer": "wait=1"}
        )
        waited = time.monotonic() - started
        assert answer.status_code == 201 and 0.9 < waited < 1.9
        body = answer.json()
        assert body["status"] == "starting" and body["output"] is None
        assert answer.headers["Preference-Applied"] == "wait=1"
        assert answer.headers["Location"] == body["urls"]["get"]
        deadline = time.monotonic() + 60
        while (body := http.get(body["urls"]["get"]).json())["status"] != "succeeded":
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert len(body["output"]) == 2


def test_prefer_wait_returns_the_finished_prediction(emu: ReplicateEmulator) -> None:
    with raw(emu) as http:
        answer = http.post(
            f"/v1/models/{MODEL}/predictions", json={"input": ops(2)}, headers={"Prefer": "wait"}
        )
    body = answer.json()
    assert answer.status_code == 201 and body["status"] == "succeeded"
    assert body["completed_at"].endswith("Z") and len(body["output"]) == 2


def test_run_with_a_short_wait_polls_to_the_end(emu: ReplicateEmulator, client: replicate.Client):
    with latency(emu, 1.5):
        output = client.run(f"{MODEL}:{emu.version(MODEL)}", input=ops(2), wait=1)
        assert len(list(output)) == 2
    # a wait that runs out while the model is generating: no chunk is lost to the polling
    output = client.run(f"{MODEL}:{emu.version(MODEL)}", input=ops(60), wait=1)
    assert [e.finish_reason for e in tokens(list(output))] == [None] * 59 + ["length"]


def test_cancel_reaches_the_cog_server(emu: ReplicateEmulator, client: replicate.Client) -> None:
    prediction = client.predictions.create(model=MODEL, input=ops(1500), stream=True)
    events = prediction.stream()
    next(events)  # the model is generating
    started = time.monotonic()
    canceled = client.predictions.cancel(prediction.id)
    assert canceled.status == "canceled"
    assert time.monotonic() - started < 4.5  # Cog confirmed; the emulator did not time out
    final = client.predictions.get(prediction.id)
    assert final.status == "canceled" and 1 <= len(final.output) < 1500
    assert [e.data for e in events][-1] == '{"reason": "canceled"}'  # the stream ended too
    # the Cog slot is free again: the next prediction runs at once
    assert len(client.run(MODEL, input=ops(2))) == 2


def test_cancel_before_the_prediction_reaches_cog(emu: ReplicateEmulator, client: replicate.Client):
    with latency(emu, 30.0):
        prediction = client.predictions.create(model=MODEL, input=ops(2))
        started = time.monotonic()
        assert client.predictions.cancel(prediction.id).status == "canceled"
        assert time.monotonic() - started < 2
    with raw(emu) as http, http.stream("GET", prediction.urls["stream"]) as answer:
        [event] = [b for b in answer.read().decode().split("\n\n") if b.startswith("event:")]
    assert event.splitlines()[0] == "event: done"
    assert event.splitlines()[2] == 'data: {"reason": "canceled"}'
    # cancelling a finished prediction changes nothing
    assert client.predictions.cancel(prediction.id).status == "canceled"


# ---- the SSE stream ----------------------------------------------------------------------------


def test_sse_heartbeats_ids_and_replay(emu: ReplicateEmulator) -> None:
    with latency(emu, 1.0), raw(emu) as http:
        body = http.post(f"/v1/models/{MODEL}/predictions", json={"input": ops(3)}).json()
        with http.stream("GET", body["urls"]["stream"]) as answer:
            assert answer.headers["content-type"].startswith("text/event-stream")
            text = answer.read().decode()
    assert text.startswith(": keep-alive\n\n")  # sent while the prediction was starting
    events = [block for block in text.split("\n\n") if block.startswith("event:")]
    assert [e.splitlines()[0] for e in events] == ["event: output"] * 3 + ["event: done"]
    assert all(e.splitlines()[1].startswith("id: ") for e in events)
    # each LMTP line is one data line plus an empty one: the client's join restores the "\n"
    assert events[0].splitlines()[2].startswith("data: TOKEN {")
    assert events[0].splitlines()[3] == "data: "
    second_id = events[1].splitlines()[1].removeprefix("id: ")
    with (
        raw(emu) as http,
        http.stream("GET", body["urls"]["stream"], headers={"Last-Event-ID": second_id}) as answer,
    ):
        replayed = [b for b in answer.read().decode().split("\n\n") if b.startswith("event:")]
    assert replayed == events[2:]


def sse_blocks(
    http: httpx.Client, url: str, headers: dict[str, str] | None = None, most: int = 40
) -> list[str]:
    """A 200 stream's blocks (events and comments), at most `most`: a stream that never ends
    fails the test (`len == most`) instead of hanging it."""
    blocks: list[str] = []
    with http.stream("GET", url, headers=headers or {}) as answer:
        assert answer.status_code == 200, answer.read()
        for block in answer.iter_text():
            blocks += [b for b in block.split("\n\n") if b]
            if len(blocks) >= most:
                break
    return blocks


def test_sse_last_event_id_must_name_an_event_this_stream_sent(emu: ReplicateEmulator) -> None:
    with raw(emu) as http:
        made = http.post(
            f"/v1/models/{MODEL}/predictions", json={"input": ops(2)}, headers={"Prefer": "wait"}
        ).json()
        assert made["status"] == "succeeded"
        url = made["urls"]["stream"]
        events = sse_blocks(http, url)
        assert [e.splitlines()[0] for e in events] == ["event: output"] * 2 + ["event: done"]
        ids = [e.splitlines()[1].removeprefix("id: ") for e in events]
        stamp, last = ids[0].rpartition(":")[0], len(ids) - 1
        for bad, reason in [
            ("garbage", "not an event of this stream"),
            (f"{int(stamp) + 1}:0", "not an event of this stream"),
            (f"{stamp}:x", "not an event of this stream"),
            (f"{stamp}:-1", "negative sequence number"),  # used to skip outputs silently
            (f"{stamp}:{last + 1}", "past the last event sent"),  # used to heartbeat forever
        ]:
            with http.stream("GET", url, headers={"Last-Event-ID": bad}) as answer:
                assert answer.status_code == 400, bad
                assert answer.headers["content-type"] == "application/problem+json"
                problem = json.loads(answer.read())
            assert (
                reason in problem["detail"] and f"{stamp}:0 to {stamp}:{last}" in problem["detail"]
            )
        # resuming after an output replays the rest; after `done`, `done` again, then the end
        assert sse_blocks(http, url, {"Last-Event-ID": ids[0]}) == events[1:]
        assert sse_blocks(http, url, {"Last-Event-ID": ids[-1]}) == events[-1:]


def test_sse_format_keeps_leading_spaces_and_line_breaks() -> None:
    event = store.StreamEvent(3, "9:3", "output", " two\nlines\r\n")
    assert sse.format_event(event) == b"event: output\nid: 9:3\ndata:  two\ndata: lines\ndata: \n\n"


def test_a_failing_prediction(emu: ReplicateEmulator, client: replicate.Client) -> None:
    bad = {"ops_batch_json": "not json"}
    with pytest.raises(ModelError) as failed:
        client.run(MODEL, input=bad)
    assert "not valid JSON" in str(failed.value)
    assert failed.value.prediction.status == "failed"
    with pytest.raises(RuntimeError, match="not valid JSON"):
        list(client.stream(MODEL, input=bad))


# ---- errors -----------------------------------------------------------------------------------


def test_wrong_or_missing_token_is_401(
    emu: ReplicateEmulator, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = replicate.Client(api_token="r8_wrong", base_url=emu.base_url)
    with pytest.raises(ReplicateError) as e:
        wrong.run(MODEL, input=ops(1))
    assert e.value.status == 401 and e.value.title == "Unauthenticated"
    assert e.value.detail == "You did not pass a valid authentication token"
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    with pytest.raises(ReplicateError) as e:
        replicate.Client(base_url=emu.base_url).models.get(MODEL)
    assert e.value.status == 401
    # LMQL's client sends the legacy `Token` scheme: accepted
    legacy = httpx.get(
        f"{emu.base_url}/v1/models/{MODEL}", headers={"Authorization": f"Token {emu.token}"}
    )
    assert legacy.status_code == 200
    # the stream URL is guarded too
    assert httpx.get(f"{emu.base_url}/v1/predictions/x/stream").status_code == 401


def test_not_found_is_404_problem_json(emu: ReplicateEmulator, client: replicate.Client) -> None:
    for call in (
        lambda: client.models.get("acme/nope"),
        lambda: client.predictions.get("nope"),
        lambda: client.predictions.cancel("nope"),
        lambda: client.deployments.predictions.create("acme/nope", input=ops(1)),
        lambda: client.models.get(MODEL).versions.get("0" * 64),
    ):
        with pytest.raises(ReplicateError) as e:
            call()
        assert e.value.status == 404 and e.value.detail
    answer = raw(emu).get("/v1/no/such/route")
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


def test_invalid_input_is_422_before_any_prediction(
    emu: ReplicateEmulator, client: replicate.Client
):
    before = len(emu.predictions())
    cases = [
        ({"ops_batch_json": 5}, "input.ops_batch_json: Invalid type. Expected: string"),
        ({}, "input: ops_batch_json is required"),
    ]
    for inputs, detail in cases:
        with pytest.raises(ReplicateError) as e:
            client.run(MODEL, input=inputs)
        assert e.value.status == 422 and e.value.detail.startswith(detail)
        assert e.value.title == "Input validation failed"
    with pytest.raises(ReplicateError) as e:
        client.predictions.create(version="f" * 64, input=ops(1))
    assert e.value.status == 422 and "Invalid version" in e.value.detail
    assert len(emu.predictions()) == before
    # unknown keys are dropped, as Cog drops them
    prediction = client.predictions.create(model=MODEL, input={**ops(1), "extra": 1})
    assert prediction.input == ops(1)


MALFORMED = [
    (b"[" * 100_000, "nested too deeply"),
    (b'{"input": ' + b"[" * 200 + b"]" * 200 + b"}", "nested too deeply"),
    (b'{"input": {"ops_batch_json": NaN}}', "NaN is not a JSON number"),
    (b'{"input": {"ops_batch_json": 1e999}}', "too large for a 64-bit float"),
    (b'{"input": ' + b"9" * 5000 + b"}", "not valid JSON"),
    (b'{"input": {"ops_batch_json": "\\ud800"}}', "unpaired surrogate"),
    (b'{"input": ', "not valid JSON"),
    (b"\xff\xfe\x00", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
]


@pytest.mark.parametrize(("payload", "reason"), MALFORMED)
def test_malformed_bodies_are_400_problem_json(emu: ReplicateEmulator, payload: bytes, reason: str):
    before = len(emu.predictions())
    with raw(emu) as http:
        for url in (f"/v1/models/{MODEL}/predictions", "/v1/predictions"):
            answer = http.post(url, content=payload, headers={"Content-Type": "application/json"})
            assert answer.status_code == 400, answer.text
            assert answer.headers["content-type"] == "application/problem+json"
            problem = answer.json()
            assert problem["status"] == 400 and problem["title"] == "Bad request"
            assert reason in problem["detail"]
    assert len(emu.predictions()) == before


def test_oversized_bodies_are_413_without_reading_them_whole(emu: ReplicateEmulator) -> None:
    limit = body.MAX_BODY_BYTES
    with raw(emu) as http:
        answer = http.post(
            f"/v1/models/{MODEL}/predictions",
            content=b" " * (limit + 1),
            headers={"Content-Type": "application/json"},
        )
    assert answer.status_code == 413
    assert answer.headers["content-type"] == "application/problem+json"
    problem = answer.json()
    assert problem["status"] == 413 and f"larger than {limit} bytes" in problem["detail"]
    # a chunked body (no length) is refused once past the limit, before it even ends
    request = (
        f"POST /v1/models/{MODEL}/predictions HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {emu.token}\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n"
    ).encode()
    chunk = b" " * 65536
    with socket.create_connection(("127.0.0.1", emu.port), timeout=30) as conn:
        conn.sendall(request)
        for _ in range(limit // len(chunk) + 2):
            conn.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
        head = b""
        while b"\r\n\r\n" not in head:
            head += conn.recv(4096)  # the old emulator waited for the end: a timeout here
    assert head.startswith(b"HTTP/1.1 413")
    # and it goes on serving
    assert (
        len(replicate.Client(api_token=emu.token, base_url=emu.base_url).run(MODEL, input=ops(1)))
        == 1
    )


def test_store_forgets_finished_predictions_past_its_limits(project: Path) -> None:
    entry = catalog.load_entry(project)
    kept = store.Store(max_kept=2, keep_s=3600)
    finished = [kept.add(entry, {"n": i}, None) for i in range(3)]
    running = kept.add(entry, {}, None)
    for prediction in finished:
        prediction.finish("succeeded", output=["x" * 1000])
    newest = kept.add(entry, {}, None)  # each create drops what is past the limits
    assert [p.id for p in kept.all()] == [finished[1].id, finished[2].id, running.id, newest.id]
    assert kept.get(finished[0].id) is None
    expiring = store.Store(max_kept=10, keep_s=0)
    done = expiring.add(entry, {}, None)
    done.finish("failed", error="x")
    later = expiring.add(entry, {}, None)
    assert expiring.all() == [later]


def test_throttled_creates_are_429_with_retry_after(
    emu: ReplicateEmulator, client: replicate.Client
):
    emu.faults.throttle_creates(2, retry_after=3)
    for _ in range(2):
        with pytest.raises(ReplicateError) as e:
            client.predictions.create(model=MODEL, input=ops(1))
        assert e.value.status == 429 and "throttled" in e.value.detail
    answer = raw(emu).post(f"/v1/models/{MODEL}/predictions", json={"input": ops(1)})
    assert answer.status_code == 201
    emu.faults.throttle_creates(1, retry_after=3)
    answer = raw(emu).post(f"/v1/models/{MODEL}/predictions", json={"input": ops(1)})
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "3"


def test_failed_creates_before_and_after_the_prediction_was_made(
    emu: ReplicateEmulator, client: replicate.Client
) -> None:
    before = len(emu.predictions())
    emu.faults.fail_creates(1, 503)
    with pytest.raises(ReplicateError) as e:
        client.predictions.create(model=MODEL, input=ops(1))
    assert e.value.status == 503 and len(emu.predictions()) == before
    emu.faults.fail_creates(1, 502, after_create=True)
    with pytest.raises(ReplicateError) as e:
        client.predictions.create(model=MODEL, input=ops(1, stream_id="lost"))
    assert e.value.status == 502
    [made] = client.predictions.list().results[:1]  # it exists and runs all the same
    assert made.input == ops(1, stream_id="lost")
    made.wait()
    assert made.status == "succeeded"


def test_dropped_stream_ends_without_done(emu: ReplicateEmulator, client: replicate.Client) -> None:
    emu.faults.drop_streams(after_events=1)
    events = list(client.stream(MODEL, input=ops(3)))
    assert [e.event.value for e in events] == ["output"]
    # the prediction itself goes on; a new stream replays it whole
    prediction = client.predictions.list().results[0]
    again = client.predictions.get(prediction.id)
    again.wait()
    assert [e.event.value for e in again.stream()] == ["output"] * 3 + ["done"]


# ---- a Cog server that dies; the CLI -----------------------------------------------------------


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, parents first (from /proc)."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
                parents.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        children = parents.get(todo.pop(0), [])
        found += children
        todo += children
    return found


def cog_worker(emu: ReplicateEmulator, ref: str) -> int:
    """The pid of the Cog server's worker: the process that runs the predictor."""
    server = emu.cog_server(ref)
    for pid in descendants(server.process.pid):  # type: ignore[union-attr]
        if "_run_worker" in Path(f"/proc/{pid}/cmdline").read_text():
            return pid
    raise AssertionError(f"no Cog worker under {server.process}")


def settle(client: replicate.Client, prediction_id: str, seconds: float = 240) -> Any:
    """The prediction once it has ended; fails (never hangs) if it has not within `seconds`."""
    deadline = time.monotonic() + seconds
    while (prediction := client.predictions.get(prediction_id)).status not in store.TERMINAL:
        assert time.monotonic() < deadline, f"{prediction_id} still {prediction.status}"
        time.sleep(0.1)
    return prediction


def test_a_killed_worker_fails_its_prediction_and_the_server_restarts(other_project: Path):
    with ReplicateEmulator([other_project], ready_timeout=300, max_kept=1) as emu:
        client = replicate.Client(api_token=emu.token, base_url=emu.base_url)
        killed = client.predictions.create(model="local/tiny", input=ops(1500), stream=True)
        next(iter(killed.stream()))  # generating
        os.kill(cog_worker(emu, "local/tiny"), signal.SIGKILL)
        # made while the server is down: one waits for the restart, one is cancelled meanwhile
        waiting = client.predictions.create(model="local/tiny", input=ops(2))
        canceled = client.predictions.create(model="local/tiny", input=ops(2))
        assert client.predictions.cancel(canceled.id).status == "canceled"
        assert settle(client, waiting.id).status == "succeeded"  # it used to stay `starting`
        assert settle(client, canceled.id).status == "canceled"
        failed = settle(client, killed.id)
        assert failed.status == "failed"
        assert "the Cog server of local/tiny lost its worker during the prediction" in failed.error
        assert "restarted" in failed.error
        assert str(emu.cog_server("local/tiny").log_path) in failed.error
        log = emu.cog_server("local/tiny").logs()
        assert log.count("---- cogql: restarting the Cog server") == 1
        # max_kept=1: the finished predictions but the newest are forgotten at the next create
        assert len(client.run("local/tiny", input=ops(2))) == 2  # the restarted server serves
        with pytest.raises(ReplicateError) as gone:
            client.predictions.get(killed.id)
        assert gone.value.status == 404


def test_a_cog_server_that_cannot_restart_fails_every_prediction_clearly(
    other_project: Path, tmp_path: Path
) -> None:
    project = shutil.copytree(other_project, tmp_path / "tiny")
    with ReplicateEmulator([project], ready_timeout=300) as emu:
        assert emu.models == ["local/tiny"]
        client = replicate.Client(api_token=emu.token, base_url=emu.base_url)
        client.poll_interval = 0.05
        prediction = client.predictions.create(model="local/tiny", input=ops(1500), stream=True)
        next(iter(prediction.stream()))  # generating
        (project / "checkpoints").rename(project / "gone")  # the restart's setup will fail
        server = emu.cog_server("local/tiny")
        os.killpg(server.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        prediction.wait()
        assert prediction.status == "failed"
        assert "the Cog server of local/tiny exited with code -9 during the prediction" in (
            prediction.error
        )
        assert str(server.log_path) in prediction.error
        for _ in range(2):  # every later one fails at once, saying why
            with pytest.raises(ModelError, match="restarting it failed") as failed:
                client.run("local/tiny", input=ops(1))
            assert "SETUP_FAILED" in str(failed.value) or "exited" in str(failed.value)


def connect_as(uid: int, path: Path) -> str:
    """Try to open the Unix socket `path` as user `uid`, in a forked child (root only)."""
    pid = os.fork()
    if pid == 0:  # the child: no Python-level cleanup, just the exit status
        code = 2
        try:
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(str(path))
            code = 0
        except PermissionError:
            code = 13
        finally:
            os._exit(code)
    code = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    return {0: "connected", 13: "refused"}.get(code, f"failed ({code})")


def test_the_cog_server_is_reachable_only_through_the_emulator(emu: ReplicateEmulator) -> None:
    if not can_isolate():
        pytest.skip("this machine does not let users make network namespaces (unshare)")
    server = emu.cog_server(MODEL)
    assert emu.isolate and server.socket_path is not None
    # its TCP port exists in its own network namespace only: nothing listens on it here
    port = re.search(r"Starting coglet server on 127\.0\.0\.1:(\d+)", server.logs())
    assert port is not None
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port.group(1)}/health-check")
    cog_net = os.readlink(f"/proc/{server.process.pid}/ns/net")  # type: ignore[union-attr]
    assert cog_net != os.readlink("/proc/self/ns/net")
    # the way in is a socket file only this user can open
    folder = server.socket_path.parent
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700 and folder.stat().st_uid == os.getuid()
    assert stat.S_IMODE(server.socket_path.stat().st_mode) == 0o600
    if os.geteuid() == 0:  # root can be someone else: another user cannot connect
        assert connect_as(65534, server.socket_path) == "refused"
    # the emulator itself gets through
    assert (
        len(replicate.Client(api_token=emu.token, base_url=emu.base_url).run(MODEL, input=ops(1)))
        == 1
    )


def test_backoff_doubles_up_to_its_cap() -> None:
    backoff = Backoff()
    delays = [backoff.delay() for _ in range(12)]
    assert delays[0] == BACKOFF_FIRST_S and delays[1] == 2 * BACKOFF_FIRST_S
    assert max(delays) == BACKOFF_MAX_S == delays[-1]
    backoff.reset()
    assert backoff.delay() == BACKOFF_FIRST_S


def test_missing_project_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(EmulatorError, match="not a Cog project"):
        ReplicateEmulator([tmp_path]).start()


def test_cli_serve_prints_the_environment_and_stops_on_sigterm(other_project: Path) -> None:
    port = free_port()
    command = f"-m cogql replicate serve {other_project} --port {port} --token r8_cli --latency 0.1"
    process = subprocess.Popen(
        [sys.executable, *command.split()],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        lines = [process.stdout.readline().strip() for _ in range(2)]
        assert lines == [
            "export REPLICATE_API_TOKEN=r8_cli",
            f"export REPLICATE_BASE_URL=http://127.0.0.1:{port}",
        ]
        answer = httpx.get(
            f"http://127.0.0.1:{port}/v1/models/local/tiny",
            headers={"Authorization": "Bearer r8_cli"},
        )
        assert answer.status_code == 200 and answer.json()["name"] == "tiny"
        created = httpx.post(
            f"http://127.0.0.1:{port}/v1/models/local/tiny/predictions",
            headers={"Authorization": "Bearer r8_cli", "Prefer": "wait=1"},
            json={"input": {"ops_batch_json": "[]"}},
            timeout=30,
        )
        assert created.status_code == 201
        prediction = created.json()["id"]
        got = httpx.get(
            f"http://127.0.0.1:{port}/v1/predictions/{prediction}",
            headers={"Authorization": "Bearer r8_cli"},
        )
        assert got.status_code == 200
        refused = httpx.get(f"http://127.0.0.1:{port}/v1/predictions")  # no token
        assert refused.status_code == 401
        forged = httpx.get(f"http://127.0.0.1:{port}/v1/x%0AINFO%20forged")
        assert forged.status_code == 404
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    err = process.stderr.read()  # type: ignore[union-attr]
    assert "stopping" in err
    # one INFO line per request: method, path, status, milliseconds, the prediction's id
    logged = re.findall(r"INFO cogql\.replicate\.emulator: (.*)", err)
    expected = [
        r"GET /v1/models/local/tiny 200 \d+ ms",
        rf"POST /v1/models/local/tiny/predictions 201 \d+ ms prediction={prediction}",
        rf"GET /v1/predictions/{prediction} 200 \d+ ms prediction={prediction}",
        r"GET /v1/predictions 401 \d+ ms",
        r"GET /v1/x\\nINFO forged 404 \d+ ms",  # a client's line break stays escaped
    ]
    assert len(logged) == len(expected), err
    for line, pattern in zip(logged, expected, strict=True):
        assert re.fullmatch(pattern, line), (line, pattern)


def test_a_port_in_use_is_a_clear_error_before_any_cog_server_starts(other_project: Path) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        message = (
            f"port {port} on 127.0.0.1 is in use; pass --port N or stop the process that holds it"
        )
        emulator = ReplicateEmulator([other_project], port=port)
        with pytest.raises(PortInUseError, match=re.escape(message)):
            emulator.start()
        assert emulator.servers == {} and emulator._booting == []  # nothing was started
        done = subprocess.run(
            [sys.executable, "-m", "cogql", "replicate", "serve", str(other_project), "--port",
             str(port)],
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
    assert done.returncode == 1
    assert done.stderr.strip() == f"error: {message}"
    assert done.stdout == ""  # no export lines for a server that is not there


# ---- pieces -----------------------------------------------------------------------------------


def test_validate_input_checks_cog_schema_keywords() -> None:
    schema = {
        "components": {
            "schemas": {
                "Input": {
                    "required": ["n"],
                    "properties": {
                        "n": {"type": "integer", "minimum": 1, "maximum": 10},
                        "s": {"type": "string", "pattern": "^a", "maxLength": 3},
                        "c": {"allOf": [{"$ref": "#/components/schemas/c"}]},
                        "x": {"type": "number"},
                    },
                },
                "c": {"type": "string", "enum": ["red", "blue"]},
            }
        }
    }
    assert validate_input({"n": 3, "s": "ab", "c": "red", "zz": 1}, schema) == {
        "n": 3,
        "s": "ab",
        "c": "red",
    }
    for bad, reason in [
        ({"n": 0}, "input.n: Must be greater than or equal to 1"),
        ({"n": 11}, "input.n: Must be less than or equal to 10"),
        ({"n": True}, "input.n: Invalid type. Expected: integer, given: boolean"),
        ({"n": 1, "s": "b"}, "input.s: Does not match pattern"),
        ({"n": 1, "s": "abcd"}, "input.s: String length must be at most 3"),
        ({"n": 1, "c": "green"}, "input.c: must be one of the following: 'red', 'blue'"),
        ({"n": 1, "x": "1"}, "input.x: Invalid type. Expected: number, given: string"),
        ([1], "input: Invalid type. Expected: object, given: array"),
    ]:
        with pytest.raises(InvalidInput) as e:
            validate_input(bad, schema)
        assert e.value.detail.startswith(reason)


def test_prefer_header() -> None:
    assert prefer_wait(None) is None
    assert prefer_wait("wait") == 60
    assert prefer_wait("respond-async, wait=5") == 5
    with pytest.raises(Exception, match="1 to 60"):
        prefer_wait("wait=61")


def test_projects_and_names(tmp_path: Path, project: Path) -> None:
    assert catalog.find_projects([project.parent]) == [project]
    (tmp_path / "cog.yaml").write_text("run: predict.py:Predictor\n")
    (tmp_path / ".cogql-manifest.json").write_text(
        json.dumps({"format": 1, "info": {"model": "mine", "image": None}, "files": {}})
    )
    assert catalog._model_name(tmp_path) == ("local", "mine")
    with pytest.raises(catalog.ProjectError, match="schema"):
        catalog.load_entry(tmp_path)
    entry = catalog.load_entry(project)
    with pytest.raises(catalog.ProjectError, match="both the model acme/tiny"):
        catalog.check_unique([entry, entry])
