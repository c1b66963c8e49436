"""The LMTP wire schema (cogql.lmtp.messages): ops and events round-trip through their wire
form, frames are byte-identical to LMQL 0.7's (websocket frames wrap payloads in a one-element
array, Replicate lines are bare objects ending in a newline, key order and `json.dumps`
spacing as LMQL's), cogql's extensions appear only when set, and malformed messages raise
ProtocolError naming the stream when they can."""

from __future__ import annotations

import math
from typing import Any

import pytest

from cogql.lmtp.messages import (
    ENGINE_CAPABILITIES,
    ErrorEvent,
    Event,
    Generate,
    InfoEvent,
    ModelInfo,
    Op,
    ProtocolError,
    Score,
    TokenEvent,
    advertise,
    advertised,
    event_from_wire,
    event_to_wire,
    finite_event,
    is_terminal,
    misplaced_after,
    op_from_wire,
    op_to_wire,
    parse_server_message,
    renumbered,
    replicate_line,
    request_frame,
    show_id,
    split_message,
    ws_frame,
)
from cogql.replicate.deploy.schema import OPS_BATCH_DESCRIPTION

# --------------------------------------------------------------------------- round trips

OPS: list[Op] = [
    Generate(1, "gpt2", [50256, 464]),
    Generate(
        2,
        "m",
        [1, 2, 3],
        max_tokens=7,
        temperature=0.7,
        logit_bias={5: 100.0, 9: -100.0},
        top_logprobs=3,
        extra={"top_k": 40, "top_p": 0.9},
        grammar="start: VALUE\nVALUE: /[0-9]+/",
        stop=["\n", "###"],
        seed=42,
        min_tokens=2,
    ),
    Score("s-1", "m", [1, 2], [3, 4]),
    Score("s-2", "m", [], [3], after=2),
    Generate(3, "m", [5], max_tokens=4, after=2),
    ModelInfo(9, "m", {"model": "m"}),
]

EVENTS: list[Event] = [
    TokenEvent(1, 450, -0.53125, None, {450: -0.53125, 12: -1.5}),
    TokenEvent(3, 6374, -2.0869140625, "stop"),
    InfoEvent(7, {"model": "m", "capabilities": ["stop"]}),
    InfoEvent(7, "<unavailable>"),
    ErrorEvent(4, "failed to generate tokens 'boom'", as_msg=False),
    ErrorEvent(None, "'stream_id'"),
]


@pytest.mark.parametrize("op", OPS, ids=lambda op: type(op).__name__)
def test_op_round_trip(op: Op) -> None:
    kind, payload = op_to_wire(op)
    assert op_from_wire(kind, payload) == op
    # and through the text of a websocket request frame
    parsed_kind, parsed = split_message(request_frame(kind, payload))
    assert op_from_wire(parsed_kind, parsed) == op


@pytest.mark.parametrize("event", EVENTS, ids=repr)
def test_event_round_trip(event: Event) -> None:
    kind, payload = event_to_wire(event)
    assert event_from_wire(kind, payload) == event
    assert parse_server_message(ws_frame(kind, payload)) == [event]
    assert parse_server_message(replicate_line(kind, payload)) == [event]


# --------------------------------------------------------------------------- LMQL's exact bytes


def test_generate_frame_matches_lmql() -> None:
    plain = Generate(1, "meta-llama/Llama-2-13b-chat-hf", [1, 13957, 29901, 1334], max_tokens=199)
    masked = Generate(2, "gpt2", [50256, 464], max_tokens=16, logit_bias={8178: 100, 6374: 100})
    assert request_frame(*op_to_wire(plain)) == (
        'GENERATE {"max_tokens": 199, "temperature": 0.0, "top_logprobs": 1, '
        '"model": "meta-llama/Llama-2-13b-chat-hf", "prompt": [1, 13957, 29901, 1334], '
        '"stream_id": 1}'
    )
    assert request_frame(*op_to_wire(masked)) == (
        'GENERATE {"max_tokens": 16, "temperature": 0.0, "logit_bias": {"6374": 100, '
        '"8178": 100}, "top_logprobs": 1, "model": "gpt2", "prompt": [50256, 464], '
        '"stream_id": 2}'
    )


def test_extensions_are_written_only_when_set() -> None:
    _, plain = op_to_wire(Generate(1, "m", [1]))
    assert list(plain) == [
        "max_tokens", "temperature", "top_logprobs", "model", "prompt", "stream_id",
    ]  # fmt: skip
    _, extended = op_to_wire(OPS[1])
    assert list(extended) == [
        "max_tokens", "temperature", "logit_bias", "top_logprobs", "top_k", "top_p",
        "grammar", "stop", "seed", "min_tokens", "model", "prompt", "stream_id",
    ]  # fmt: skip


def test_a_score_after_is_written_only_when_set() -> None:
    assert list(op_to_wire(OPS[2])[1]) == ["model", "prompt", "scored", "stream_id"]
    assert list(op_to_wire(OPS[3])[1]) == ["model", "prompt", "scored", "after", "stream_id"]
    assert list(op_to_wire(OPS[4])[1]) == [
        "max_tokens", "temperature", "top_logprobs", "after", "model", "prompt", "stream_id",
    ]  # fmt: skip


def test_renumbered_streams_keep_what_follows_what() -> None:
    ops: list[Op] = [
        Generate("g", "m", [1]),
        Score("a", "m", [], [3], after="g"),
        Score("b", "m", [], [3], after="elsewhere"),
        ModelInfo("i", "m"),
        Generate("h", "m", [2], after="g"),
    ]
    counter = iter(range(10, 20))
    out = renumbered(ops, counter.__next__)
    assert [op.stream_id for op in out] == [10, 11, 12, 13, 14]
    afters = [op.after for op in out if not isinstance(op, ModelInfo)]
    assert afters == [None, 10, 15, 10]  # 15: nobody's id
    assert [op.stream_id for op in ops] == ["g", "a", "b", "i", "h"]  # the originals stay


def test_model_info_frame() -> None:
    assert request_frame(*op_to_wire(ModelInfo(5, "gpt2", {"model": "gpt2"}))) == (
        'MODEL_INFO {"stream_id": 5, "model": "gpt2", "data": {"model": "gpt2"}}'
    )


def test_websocket_frames_are_one_element_arrays() -> None:
    token = TokenEvent(1, 450, -0.53125, None, {450: -0.53125})
    assert ws_frame(*event_to_wire(token)) == (
        'TOKEN [{"token": 450, "stream_id": 1, "logprob": -0.53125, "finish_reason": null, '
        '"top_logprobs": {"450": -0.53125}}]'
    )
    assert ws_frame(*event_to_wire(InfoEvent(7, "<unavailable>"))) == (
        'MSG [{"stream_id": 7, "model_info": "<unavailable>"}]'
    )


def test_replicate_lines_are_bare_objects_with_a_newline() -> None:
    score_token = TokenEvent(3, 6374, -2.0869140625, "stop")
    assert replicate_line(*event_to_wire(score_token)) == (
        'TOKEN {"token": 6374, "stream_id": 3, "logprob": -2.0869140625, "finish_reason": "stop"}\n'
    )
    error = ErrorEvent(4, "failed to generate tokens 'CUDA out of memory'", as_msg=False)
    assert replicate_line(*event_to_wire(error)) == (
        'TOKEN {"stream_id": 4, "error": "failed to generate tokens \'CUDA out of memory\'"}\n'
    )
    assert replicate_line(*event_to_wire(ErrorEvent(4, "x"))).startswith("MSG ")


def test_server_messages_with_several_items_and_non_finite_numbers() -> None:
    text = (
        'TOKEN [{"token": 1, "stream_id": 1, "logprob": -Infinity, "finish_reason": null, '
        '"top_logprobs": {"1": -Infinity, "2": NaN}}, '
        '{"token": 2, "stream_id": 1, "logprob": -0.5, "finish_reason": "length"}]'
    )
    first, second = parse_server_message(text)
    assert isinstance(first, TokenEvent) and first.logprob == -math.inf
    assert first.top_logprobs is not None and math.isnan(first.top_logprobs[2])
    assert second == TokenEvent(1, 2, -0.5, "length")


def test_terminal_events() -> None:
    assert not is_terminal(TokenEvent(1, 5, -0.1))
    assert is_terminal(TokenEvent(1, 5, -0.1, "length"))
    assert is_terminal(InfoEvent(1, {}))
    assert is_terminal(ErrorEvent(1, "boom", as_msg=False))


# --------------------------------------------------------------------------- protocol errors


def generate(**fields: Any) -> dict[str, Any]:
    return {"max_tokens": 4, "model": "m", "prompt": [1, 2], "stream_id": 3, **fields}


@pytest.mark.parametrize(
    ("kind", "payload", "message", "stream_id"),
    [
        ("GENERATE", [1, 2], "payload must be a JSON object", None),
        ("FOO", {"stream_id": 3}, "Unknown command: FOO", 3),
        ("GENERATE", {"model": "m", "prompt": [1]}, "GENERATE without a stream_id", None),
        ("GENERATE", {"model": "m", "stream_id": 3}, "missing field 'prompt'", 3),
        ("GENERATE", generate(prompt="1 2"), "field 'prompt' has the wrong type", 3),
        ("GENERATE", generate(prompt=[1, -2]), "list of token ids", 3),
        ("GENERATE", generate(prompt=[1, True]), "list of token ids", 3),
        ("GENERATE", generate(model=5), "field 'model' has the wrong type", 3),
        ("GENERATE", generate(max_tokens="4"), "field 'max_tokens' has the wrong type", 3),
        ("GENERATE", generate(max_tokens=True), "field 'max_tokens' has the wrong type", 3),
        ("GENERATE", generate(max_tokens=-1), "must not be negative", 3),
        ("GENERATE", generate(temperature="hot"), "field 'temperature' has the wrong type", 3),
        ("GENERATE", generate(logit_bias=[1]), "'logit_bias' must be an object", 3),
        ("GENERATE", generate(logit_bias={"x": 1}), "logit_bias keys must be token ids", 3),
        ("GENERATE", generate(stop=["\n", ""]), "non-empty strings", 3),
        ("GENERATE", generate(stop="\n"), "field 'stop' has the wrong type", 3),
        ("GENERATE", generate(seed=1.5), "field 'seed' has the wrong type", 3),
        ("SCORE", {"stream_id": 3, "model": "m", "prompt": [1]}, "missing field 'scored'", 3),
        ("SCORE", {"stream_id": 3, "prompt": [1], "scored": ["a"]}, "list of token ids", 3),
        ("SCORE", {"stream_id": 3, "prompt": [], "scored": [1], "after": [2]}, "'after'", 3),
        ("GENERATE", generate(temperature=math.nan), "'temperature' must be a finite", 3),
        ("GENERATE", generate(temperature=-math.inf), "'temperature' must be a finite", 3),
        ("GENERATE", generate(temperature=-0.5), r"'temperature' must be a finite number >= 0", 3),
        ("GENERATE", generate(logit_bias={"5": math.nan}), "values finite numbers", 3),
        ("GENERATE", generate(logit_bias={"5": True}), "values finite numbers", 3),
        ("GENERATE", generate(logit_bias={"-5": 1}), r"keys must be token ids \(>= 0\)", 3),
        ("GENERATE", generate(max_tokens=4.0), r"\(expected an integer, got a number\)", 3),
        ("GENERATE", generate(top_logprobs=-1), "'top_logprobs' must not be negative", 3),
        ("GENERATE", generate(min_tokens=-1), "'min_tokens' must not be negative", 3),
        ("GENERATE", generate(seed=-(2**63) - 1), "'seed' must be between", 3),
        ("GENERATE", generate(top_k="x"), "'top_k' must be an integer >= 0, got 'x'", 3),
        ("GENERATE", generate(top_k=-1), "'top_k' must be an integer >= 0", 3),
        ("GENERATE", generate(top_p=1.5), r"'top_p' must be a number in \(0, 1\]", 3),
        ("GENERATE", generate(top_p=math.inf), r"'top_p' must be a number in \(0, 1\]", 3),
    ],
)
def test_bad_ops(kind: str, payload: Any, message: str, stream_id: Any) -> None:
    with pytest.raises(ProtocolError, match=message) as err:
        op_from_wire(kind, payload)
    assert err.value.stream_id == stream_id
    if stream_id is not None and not str(err.value).startswith("Unknown command"):
        assert str(err.value).startswith(f"{kind} stream_id={stream_id}: ")  # the client's id


def test_sampling_extras_that_are_valid_pass() -> None:
    op = op_from_wire("GENERATE", generate(top_k=0, top_p=1, seed=2**64 - 1, temperature=1e9))
    assert isinstance(op, Generate) and op.extra == {"top_k": 0, "top_p": 1}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("GENERATE " + "1" * 5000, "unreadable JSON in GENERATE message: Exceeds the limit"),
        ("GENERATE " + "[" * 100_000, "unreadable JSON in GENERATE message: nested too deeply"),
    ],
)
def test_json_python_cannot_read_is_a_protocol_error(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        split_message(text)


def test_stream_ids_in_messages_are_escaped_and_short() -> None:
    assert show_id("a\nb\u2028") == '"a\\nb\\u2028"'
    assert show_id("x" * 100) == '"' + "x" * 36 + "..."
    assert show_id(7) == "7" and show_id(None) == "null"


def test_server_frames_never_carry_nan_or_infinity() -> None:
    event = TokenEvent(1, 5, -0.25, None, {5: -0.25, 6: -math.inf, 7: math.nan})
    clean = finite_event(event)
    assert clean == TokenEvent(1, 5, -0.25, None, {5: -0.25})
    assert finite_event(clean) is clean
    broken = finite_event(TokenEvent(1, 5, math.nan, None))
    assert isinstance(broken, ErrorEvent) and "not a finite number" in broken.error
    assert not broken.as_msg  # a stream's error goes out as TOKEN
    with pytest.raises(ValueError):
        ws_frame(*event_to_wire(event))


def test_misplaced_after_names_the_clients_ids() -> None:
    ops: list[Op] = [
        Generate("g", "m", [1]),
        Score("s", "m", [], [1], after="g"),
        Score("t", "m", [], [1], after="h"),
        Generate("x", "m", [1], after="r"),
        Score("y", "m", [], [1], after="x"),
    ]
    assert misplaced_after(ops, {"r"}) == {
        2: 'SCORE stream_id="t": after="h" names no GENERATE sent before it in the same message',
        3: 'GENERATE stream_id="x": after="r" follows a GENERATE that cannot run',
        4: 'SCORE stream_id="y": after="x" follows a GENERATE that cannot run',
    }


def test_unknown_generate_keys_pass_through_and_extension_defaults() -> None:
    op = op_from_wire("GENERATE", generate(repetition_penalty=1.2, temperature=None))
    assert isinstance(op, Generate)
    assert op.extra == {"repetition_penalty": 1.2}
    assert (op.temperature, op.top_logprobs, op.seed) == (0.0, 1, None)
    assert op.grammar is None and op.stop == [] and op.min_tokens == 0


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("TOKEN", "expected 'TYPE {json}'"),
        ('{"stream_id":1}', "expected 'TYPE {json}'"),
        ("TOKEN {not json", "malformed JSON in TOKEN message"),
        ("TOKEN [1]", "without a stream_id"),
        ('FOO {"stream_id": 1, "token": 1}', "unknown message type FOO"),
        ('TOKEN {"stream_id": 1, "logprob": 0.0}', "missing field 'token'"),
        ('TOKEN {"stream_id": 1, "token": "7", "logprob": 0.0}', "field 'token' has the wrong"),
        ('TOKEN {"stream_id": 1, "token": 7}', "missing field 'logprob'"),
        ('TOKEN {"stream_id": 1, "token": 7, "logprob": "x"}', "field 'logprob' has the wrong"),
        ('TOKEN {"stream_id": 1, "token": 7, "logprob": 0, "top_logprobs": [1]}', "wrong type"),
        ('TOKEN {"stream_id": 1, "token": 7, "logprob": 0, "top_logprobs": {"a": 1}}', "token ids"),
        ('TOKEN {"stream_id": 1, "token": 7, "logprob": 0, "finish_reason": 1}', "wrong type"),
    ],
)
def test_bad_server_messages(text: str, message: str) -> None:
    with pytest.raises(ProtocolError, match=message):
        parse_server_message(text)


def test_error_items_become_error_events() -> None:
    (msg,) = parse_server_message('MSG [{"stream_id": 2, "error": "Unknown command: X"}]')
    (tok,) = parse_server_message('TOKEN {"stream_id": 4, "error": "failed"}\n')
    assert msg == ErrorEvent(2, "Unknown command: X", as_msg=True)
    assert tok == ErrorEvent(4, "failed", as_msg=False)


def test_extensions_round_trip_through_a_description() -> None:
    text = f"Some input. {advertise(ENGINE_CAPABILITIES)} More words."
    assert advertised(text) == frozenset(ENGINE_CAPABILITIES)
    assert advertised("JSON array of LMTP ops") is None
    assert advertised(OPS_BATCH_DESCRIPTION) == frozenset(ENGINE_CAPABILITIES)
