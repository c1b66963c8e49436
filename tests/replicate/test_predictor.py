"""The Cog predictor behind the real Cog prediction server (coglet) on loopback.

One server (module scope) runs a project built from the tiny random llama; its answers are
checked line by line against the same ops run on an in-process engine of the same weights.
"""

from __future__ import annotations

import json
import queue
import shutil
from pathlib import Path
from typing import Any

import pytest

from cogql.engine.engine import Engine
from cogql.lmtp.messages import (
    ErrorEvent,
    Event,
    Generate,
    InfoEvent,
    Score,
    TokenEvent,
    op_from_wire,
    parse_server_message,
)
from cogql.lmtp.transports.inprocess import local_engine
from cogql.replicate.cog.cogserver import CogServer, CogServerError
from cogql.replicate.cog.predictor import (
    BatchError,
    EngineStopped,
    LMTPPredictor,
    PredictorSetupError,
    load_runner,
    parse_batch,
)
from cogql.replicate.deploy.build import build
from cogql.replicate.deploy.config import load_config


def build_project(tmp: Path, model_dir: Path, **keys: Any) -> Path:
    lines = ["[models.tiny]", f'local.path = "{model_dir}"', "gpu = false"]
    lines += [f"{k} = {json.dumps(v)}" for k, v in keys.items()]
    (tmp / "config.toml").write_text("\n".join(lines) + "\n")
    [result] = build(load_config(tmp / "config.toml"), tmp / "work", progress=False)
    return result.folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    return build_project(tmp_path_factory.mktemp("cog"), tiny_model_path)


@pytest.fixture(scope="module")
def server(project: Path) -> CogServer:
    with CogServer(project) as srv:
        srv.wait_ready(timeout=240)
        yield srv


@pytest.fixture(scope="module")
def reference(tiny_model_path: Path) -> Engine:
    """The same weights in this process: what the Cog path must reproduce."""
    return local_engine(f"local:{tiny_model_path}")


def run_ops(server: CogServer, ops: list[list[Any]]) -> list[str]:
    result = server.predict({"ops_batch_json": json.dumps(ops)})
    assert result["status"] == "succeeded", result
    return result["output"]


def events_of(lines: list[str]) -> list[Event]:
    for line in lines:
        assert line.endswith("\n") and line.count("\n") == 1, line  # one line per yield
    return [e for line in lines for e in parse_server_message(line)]


def in_process(engine: Engine, ops: list[list[Any]]) -> list[Event]:
    """Run wire ops on the reference engine, stream ids as given, until all streams end."""
    parsed = [op_from_wire(kind, {**payload}) for kind, payload in ops]
    events: queue.SimpleQueue[Event] = queue.SimpleQueue()
    engine.submit(parsed, events.put)
    open_ids, out = {op.stream_id for op in parsed}, []
    while open_ids:
        event = events.get(timeout=60)
        if event.stream_id in open_ids:
            out.append(event)
            if not isinstance(event, TokenEvent) or event.finish_reason:
                open_ids.discard(event.stream_id)
    return out


def by_stream(events: list[Event]) -> dict[Any, list[Event]]:
    grouped: dict[Any, list[Event]] = {}
    for e in events:
        grouped.setdefault(e.stream_id, []).append(e)
    return grouped


def gen(sid: Any, prompt: list[int], **kw: Any) -> list[Any]:
    return [
        "GENERATE",
        {
            "max_tokens": 4,
            "temperature": 0.0,
            **kw,
            "model": "m",
            "prompt": prompt,
            "stream_id": sid,
        },
    ]


PROMPT = [1, 504, 3102, 314, 253, 1789]


# ---- through the Cog server ------------------------------------------------------------------


def test_generate_matches_in_process_engine(server: CogServer, reference: Engine) -> None:
    ops = [gen(42, PROMPT, max_tokens=6)]
    lines = run_ops(server, ops)
    got = events_of(lines)
    want = in_process(reference, ops)
    assert [e.token for e in got] == [e.token for e in want]
    assert [e.finish_reason for e in got] == [None] * 5 + ["length"]
    assert all(e.stream_id == 42 for e in got)
    for g, w in zip(got, want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=2e-3)
    # LMQL's byte format: key order, bare object, Python json.dumps separators
    first = json.loads(lines[0].removeprefix("TOKEN "))
    assert list(first) == ["token", "stream_id", "logprob", "finish_reason", "top_logprobs"]
    assert lines[0].startswith('TOKEN {"token": ')


def test_batched_score_matches_in_process_engine(server: CogServer, reference: Engine) -> None:
    ops = [
        ["SCORE", {"model": "m", "prompt": PROMPT, "scored": scored, "stream_id": sid}]
        for sid, scored in (("a", [253]), ("b", [253, 1789, 30]), ("c", [42, 7]))
    ]
    got = by_stream(events_of(run_ops(server, ops)))
    want = by_stream(in_process(reference, ops))
    assert set(got) == {"a", "b", "c"}
    for sid, scored in (("a", [253]), ("b", [253, 1789, 30]), ("c", [42, 7])):
        assert [e.token for e in got[sid]] == scored
        assert [e.finish_reason for e in got[sid]] == [None] * (len(scored) - 1) + ["stop"]
        assert all(e.top_logprobs is None for e in got[sid])  # SCORE tokens have none
        for g, w in zip(got[sid], want[sid], strict=True):
            assert g.logprob == pytest.approx(w.logprob, abs=2e-3)


def test_a_score_after_a_generate_in_the_same_prediction(
    server: CogServer, reference: Engine
) -> None:
    """The `after` extension through the predictor's id remapping: the SCORE follows the
    GENERATE the client named, and answers under the client's id."""
    ops = [
        gen("g", PROMPT, max_tokens=3),
        [
            "SCORE",
            {"model": "m", "prompt": [42], "scored": [253, 7], "stream_id": "s", "after": "g"},
        ],
        ["SCORE", {"model": "m", "prompt": [], "scored": [7], "stream_id": "x", "after": "h"}],
    ]
    got = by_stream(events_of(run_ops(server, ops)))
    tokens = [e.token for e in got["g"]]
    assert len(tokens) == 3 and got["g"][-1].finish_reason == "length"
    plain = ["SCORE", {"model": "m", "prompt": PROMPT + tokens + [42], "scored": [253, 7],
                       "stream_id": "s"}]  # fmt: skip
    want = in_process(reference, [plain])
    assert [e.token for e in got["s"]] == [253, 7]
    for g, w in zip(got["s"], want, strict=True):
        assert g.logprob == pytest.approx(w.logprob, abs=5e-3)
    [error] = got["x"]  # "h" is no stream of this prediction
    assert isinstance(error, ErrorEvent) and "names no GENERATE" in error.error


def test_model_info_has_capabilities_and_the_vendored_cogql(server: CogServer) -> None:
    [line] = run_ops(server, [["MODEL_INFO", {"stream_id": "info", "model": "m", "data": {}}]])
    assert line.startswith('MSG {"stream_id": "info", "model_info": {')
    [event] = events_of([line])
    assert isinstance(event, InfoEvent)
    info = event.model_info
    assert {"stop", "grammar", "batch"} <= set(info["capabilities"])
    assert info["cogql"].count("+") == 1  # version+source hash of the copy in the project
    assert info["eos_token_id"] == 2 and info["vocab_size"] == 49152


def test_stream_ids_are_restored_even_when_missing(server: CogServer) -> None:
    ops = [gen(None, PROMPT, max_tokens=3), gen(7, PROMPT[:3], max_tokens=2)]
    ops.append(["GENERATE", {"max_tokens": 2, "model": "m", "prompt": PROMPT[:4]}])  # no id
    got = by_stream(events_of(run_ops(server, ops)))
    assert sorted(len(v) for v in got.values()) == [2, 5]  # the two id-less streams share null
    assert len(got[7]) == 2
    assert [e.finish_reason for e in got[7]] == [None, "length"]


def test_stop_extension_ends_the_stream_server_side(server: CogServer, reference: Engine) -> None:
    free = in_process(reference, [gen(1, PROMPT, max_tokens=8)])
    text = reference.tokenizer.decode([free[2].token])
    assert text.strip(), "pick a prompt whose third token has visible text"
    got = events_of(run_ops(server, [gen(1, PROMPT, max_tokens=8, stop=[text])]))
    assert [e.token for e in got] == [e.token for e in free[:3]]
    assert got[-1].finish_reason == "stop"


def test_grammar_extension_constrains_generation(server: CogServer, reference: Engine) -> None:
    got = events_of(run_ops(server, [gen(3, PROMPT, max_tokens=16, grammar='start: "yes" | "no"')]))
    assert reference.tokenizer.decode([e.token for e in got]) in ("yes", "no")
    assert got[-1].finish_reason == "stop"


def test_bad_ops_get_their_own_error_and_do_not_poison_others(server: CogServer) -> None:
    ops = [
        ["GENERATE", {"model": "m", "stream_id": 1}],  # no prompt
        ["FOO", {"stream_id": 2}],
        ["SCORE", {"model": "m", "prompt": PROMPT, "scored": [], "stream_id": 3}],
        gen(4, PROMPT, max_tokens=2),
        gen(5, [1, 10**6], max_tokens=2),
        gen(6, [1] * 9000, max_tokens=2),
    ]
    got = by_stream(events_of(run_ops(server, ops)))
    assert isinstance(got[1][0], ErrorEvent) and "prompt" in got[1][0].error
    assert got[2][0].error == "Unknown command: FOO"
    assert isinstance(got[3][0], ErrorEvent)
    assert [e.finish_reason for e in got[4]] == [None, "length"]
    # the engine names what is wrong, as the websocket server does
    assert "token ids outside the vocabulary (size 49152): [1000000]" in got[5][0].error
    assert "9000 tokens exceed the model's context" in got[6][0].error


def test_empty_batch_ends_at_once(server: CogServer) -> None:
    result = server.predict({"ops_batch_json": "[]"})
    assert result["status"] == "succeeded" and result["output"] == []
    assert result["metrics"]["predict_time"] < 1.0


@pytest.mark.parametrize(
    ("batch", "needle"),
    [
        ('[["GENERATE", {', "not valid JSON"),
        ('{"GENERATE": {}}', "JSON array"),
        ('[["GENERATE"]]', "ops_batch_json[0]"),
        ('[["SCORE", [1, 2]]]', "payload an object"),
    ],
)
def test_malformed_batch_fails_fast(server: CogServer, batch: str, needle: str) -> None:
    result = server.predict({"ops_batch_json": batch})
    assert result["status"] == "failed"
    assert needle in result["error"] and "BatchError" in result["error"]


def test_input_is_validated_by_the_schema(server: CogServer) -> None:
    result = server.predict({"prompt": "hi"})
    assert result["http_status"] == 422
    assert result["detail"][0]["loc"] == ["body", "input", "ops_batch_json"]


def test_server_sent_events_carry_one_line_per_output_event(server: CogServer) -> None:
    ops = [gen(5, PROMPT, max_tokens=5), ["MODEL_INFO", {"stream_id": 6, "model": "m"}]]
    events = list(server.stream({"ops_batch_json": json.dumps(ops)}))
    outputs = [data["chunk"] for kind, data in events if kind == "output"]
    assert events[0][0] == "start" and events[-1][0] == "completed"
    assert events[-1][1]["output"] == outputs
    assert len(outputs) == 6 and sum(o.startswith("TOKEN ") for o in outputs) == 5


def test_cancel_frees_the_predictor(server: CogServer) -> None:
    """Cog cancels a sync predictor by raising inside it; the predictor must stop its engine
    streams and return, or the one prediction slot stays busy (409 for everyone else)."""
    import time

    endless = json.dumps([gen(1, PROMPT, max_tokens=1_000_000)])
    assert server.start_async("long-one", {"ops_batch_json": endless}) == 202
    deadline = time.monotonic() + 30
    while server.health()["status"] != "BUSY":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    time.sleep(0.2)  # tokens are flowing
    assert server.cancel("long-one") == 200
    while server.health()["status"] != "READY":
        assert time.monotonic() < deadline, "the cancelled prediction still holds the slot"
        time.sleep(0.02)
    got = events_of(run_ops(server, [gen(2, PROMPT, max_tokens=2)]))
    assert [e.stream_id for e in got] == [2, 2]


# ---- setup and concurrency -------------------------------------------------------------------


def test_setup_failure_is_reported_with_its_cause(tmp_path: Path, tiny_model_path: Path) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model_path, broken)
    (broken / "model.safetensors").write_bytes(b"not a safetensors file")
    project = build_project(tmp_path, broken)
    with pytest.raises(PredictorSetupError, match="could not load the model"):
        load_runner(project)
    with CogServer(project) as srv, pytest.raises(CogServerError) as failed:
        srv.wait_ready(timeout=120)
    assert "SETUP_FAILED" in str(failed.value)
    assert "cogql could not load the model" in str(failed.value)


def test_async_predictor_serves_concurrent_predictions(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    import concurrent.futures

    project = build_project(tmp_path, tiny_model_path, max_concurrency=2)
    assert "async def run" in (project / "predict.py").read_text()
    with CogServer(project, max_concurrency=2) as srv:
        srv.wait_ready(timeout=240)
        with concurrent.futures.ThreadPoolExecutor(2) as pool:
            jobs = [
                pool.submit(
                    srv.predict, {"ops_batch_json": json.dumps([gen(i, PROMPT, max_tokens=24)])}
                )
                for i in range(2)
            ]
            results = [j.result() for j in jobs]
    for i, result in enumerate(results):
        assert result["status"] == "succeeded", result
        got = events_of(result["output"])
        assert len(got) == 24 and all(e.stream_id == i for e in got)


# ---- a dead engine ----------------------------------------------------------------------------

BREAK_THE_LOOP = """

# test fault: a prediction whose prompt is [9, 9, 9] breaks the engine's loop (a stand-in for
# a bug escaping it), so the engine's thread dies
import cogql.engine.engine as _engine  # noqa: E402

_take = _engine.Engine._take


def _take_or_break(self, item):
    if any(getattr(op, "prompt", None) == [9, 9, 9] for op in getattr(item, "ops", ())):
        raise RuntimeError("injected: the loop broke")
    _take(self, item)


_engine.Engine._take = _take_or_break
"""


def test_a_dead_engine_fails_the_health_check_and_every_prediction(project: Path) -> None:
    predictor = LMTPPredictor()
    predictor.project_dir = project
    predictor.setup()
    engine = predictor.runner.engine
    try:
        assert predictor.healthcheck() is True

        def broken_loop() -> None:
            raise RuntimeError("injected: the loop broke")

        engine._turn = broken_loop  # type: ignore[method-assign] - a bug escaping the loop
        for sid in (1, 2):  # pending when it dies, then sent to the dead engine
            [line] = list(predictor.stream(json.dumps([gen(sid, PROMPT)])))
            assert "error" in line and "injected: the loop broke" in line
        with pytest.raises(EngineStopped, match="injected: the loop broke"):
            predictor.healthcheck()
    finally:
        engine.close()


def test_cog_reports_a_dead_engine_as_unhealthy(tmp_path: Path, project: Path) -> None:
    import time

    broken = tmp_path / "project"
    shutil.copytree(project, broken)
    with (broken / "predict.py").open("a") as f:
        f.write(BREAK_THE_LOOP)
    with CogServer(broken) as srv:
        srv.wait_ready(timeout=240)
        assert events_of(run_ops(srv, [gen(1, PROMPT, max_tokens=2)]))[-1].finish_reason
        [died] = events_of(run_ops(srv, [gen(2, [9, 9, 9])]))
        assert "injected: the loop broke" in died.error  # type: ignore[union-attr]
        deadline = time.monotonic() + 60
        while (health := srv.health() or {}).get("status") != "UNHEALTHY":
            assert time.monotonic() < deadline, f"still {health.get('status')} with a dead engine"
            time.sleep(0.1)
        assert "injected: the loop broke" in json.dumps(health)


# ---- the batch parser, in process ------------------------------------------------------------


def test_parse_batch_accepts_lmql_batches() -> None:
    ops = [["GENERATE", {"prompt": [1]}], ["SCORE", {"prompt": [1], "scored": [2]}]]
    assert parse_batch(json.dumps(ops)) == [tuple(op) for op in ops]
    with pytest.raises(BatchError, match="line 1 column 2"):
        parse_batch("[x")
    assert Generate and Score  # the wire classes the parser feeds
