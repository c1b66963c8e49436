"""The one LMTP wire schema: ops (client → server), events (server → client), and both framings.

Byte compatibility with LMQL 0.7 rests on key order and Python's default `json.dumps`
formatting, so payloads are built field by field here and nowhere else. cogql's extensions
(`grammar`, `stop`, `seed`, `min_tokens`, `after`) are only written when set, so an LMQL server
never sees them unless the client chose to use them.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

from ..errors import TransportError

GENERATE, SCORE, MODEL_INFO = "GENERATE", "SCORE", "MODEL_INFO"
TOKEN, MSG = "TOKEN", "MSG"
DEFAULT_MAX_TOKENS = 32
EXTENSIONS = ("grammar", "stop", "seed", "min_tokens")


class ProtocolError(TransportError, ValueError):
    """A message that does not follow LMTP; `stream_id` is set when the message named one."""

    def __init__(self, message: str, stream_id: Any = None) -> None:
        super().__init__(message)
        self.stream_id = stream_id


@dataclass
class Generate:
    stream_id: Any
    model: str
    prompt: list[int]
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    logit_bias: dict[int, float] = field(default_factory=dict)
    top_logprobs: int = 1
    extra: dict[str, Any] = field(default_factory=dict)
    grammar: str | None = None
    stop: list[str] = field(default_factory=list)
    seed: int | None = None
    min_tokens: int = 0
    after: Any = None  # the `after` extension, as for SCORE: it starts when that GENERATE ends


@dataclass
class Score:
    stream_id: Any
    model: str
    prompt: list[int]
    scored: list[int]
    # the `after` extension: the stream id of a GENERATE in the same message; the prompt is
    # then that GENERATE's prompt, its generated tokens (a final EOS left out), and `prompt`
    after: Any = None


@dataclass
class ModelInfo:
    stream_id: Any
    model: str
    data: dict[str, Any] = field(default_factory=dict)


Op = Generate | Score | ModelInfo
_OpT = TypeVar("_OpT", bound=Op)


@dataclass
class TokenEvent:
    stream_id: Any
    token: int
    logprob: float
    finish_reason: str | None = None
    top_logprobs: dict[int, float] | None = None


@dataclass
class InfoEvent:
    stream_id: Any
    model_info: Any


@dataclass
class ErrorEvent:
    stream_id: Any
    error: str
    as_msg: bool = True
    # set by the client's transport for its own failures (a dropped connection, HTTP 429);
    # never on the wire: what a server reports is not known to be worth repeating
    retryable: bool = field(default=False, compare=False)


Event = TokenEvent | InfoEvent | ErrorEvent


def is_terminal(event: Event) -> bool:
    """LMQL's rule: a stream ends at a finish_reason, an error, or any MSG."""
    return not isinstance(event, TokenEvent) or event.finish_reason is not None


# ---- ops -> wire ---------------------------------------------------------------------------


def op_kind(op: Op) -> str:
    """The op's TYPE on the wire: GENERATE, SCORE or MODEL_INFO."""
    if isinstance(op, Generate):
        return GENERATE
    return SCORE if isinstance(op, Score) else MODEL_INFO


def op_to_wire(op: Op) -> tuple[str, dict[str, Any]]:
    """(TYPE, payload) with LMQL's key order."""
    if isinstance(op, Generate):
        return GENERATE, _generate_payload(op)
    if isinstance(op, Score):
        payload = {"model": op.model, "prompt": op.prompt, "scored": op.scored}
        if op.after is not None:
            payload["after"] = op.after
        return SCORE, {**payload, "stream_id": op.stream_id}
    return MODEL_INFO, {"stream_id": op.stream_id, "model": op.model, "data": op.data}


def _generate_payload(op: Generate) -> dict[str, Any]:
    p: dict[str, Any] = {"max_tokens": op.max_tokens, "temperature": op.temperature}
    if op.logit_bias:
        p["logit_bias"] = {str(k): v for k, v in sorted(op.logit_bias.items())}
    p["top_logprobs"] = op.top_logprobs
    p.update(op.extra)
    if op.grammar is not None:
        p["grammar"] = op.grammar
    if op.stop:
        p["stop"] = list(op.stop)
    if op.seed is not None:
        p["seed"] = op.seed
    if op.min_tokens:
        p["min_tokens"] = op.min_tokens
    if op.after is not None:
        p["after"] = op.after
    p.update(model=op.model, prompt=op.prompt, stream_id=op.stream_id)
    return p


# ---- wire -> ops ---------------------------------------------------------------------------


_JSON_TYPES = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
               list: "a list", dict: "an object", type(None): "null"}  # fmt: skip


def _type_name(kind: type | tuple[type, ...]) -> str:
    kinds = kind if isinstance(kind, tuple) else (kind,)
    return "a number" if float in kinds else _JSON_TYPES.get(kinds[0], kinds[0].__name__)


def _require(payload: dict[str, Any], key: str, kind: type | tuple[type, ...]) -> Any:
    if key not in payload:
        raise ProtocolError(f"missing field '{key}'", payload.get("stream_id"))
    value = payload[key]
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is not bool):
        raise ProtocolError(
            f"field '{key}' has the wrong type (expected {_type_name(kind)}, got "
            f"{_JSON_TYPES.get(type(value), type(value).__name__)})",
            payload.get("stream_id"),
        )
    return value


def _token_ids(payload: dict[str, Any], key: str) -> list[int]:
    ids = _require(payload, key, list)
    if not all(isinstance(t, int) and not isinstance(t, bool) and t >= 0 for t in ids):
        raise ProtocolError(f"field '{key}' must be a list of token ids", payload["stream_id"])
    return ids


def _logit_bias(payload: dict[str, Any]) -> dict[int, float]:
    raw = payload.get("logit_bias") or {}
    if not isinstance(raw, dict):
        raise ProtocolError("field 'logit_bias' must be an object", payload["stream_id"])
    try:
        bias = {int(k): _finite(v) for k, v in raw.items()}
    except (TypeError, ValueError):
        raise ProtocolError(
            "logit_bias keys must be token ids and values finite numbers", payload["stream_id"]
        ) from None
    if any(k < 0 for k in bias):
        raise ProtocolError("logit_bias keys must be token ids (>= 0)", payload["stream_id"])
    return bias


def _finite(value: Any) -> float:
    """A JSON number that is finite: json.loads accepts NaN, Infinity and 1e999, which no
    model field means and which must never be echoed back into JSON."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"not a finite number: {value!r}")
    return float(value)


def op_from_wire(kind: str, payload: Any) -> Op:
    """Validate one incoming op; raises ProtocolError naming the op and the client's stream id
    when it can (the client may have many streams in flight)."""
    if not isinstance(payload, dict):
        raise ProtocolError(f"{kind} payload must be a JSON object")
    if kind not in (GENERATE, SCORE, MODEL_INFO):
        raise ProtocolError(f"Unknown command: {kind}", payload.get("stream_id"))
    if "stream_id" not in payload:
        raise ProtocolError(f"{kind} without a stream_id: every op needs one ('stream_id')")
    if not strict_json(payload["stream_id"]):  # it is echoed on every reply
        raise ProtocolError(f"{kind} stream_id holds NaN or Infinity, which JSON cannot carry")
    try:
        return _op_from_wire(kind, payload)
    except ProtocolError as e:
        sid = payload["stream_id"]
        raise ProtocolError(f"{kind} stream_id={show_id(sid)}: {e}", sid) from None


def strict_json(value: Any) -> bool:
    """Whether `value` can be written as standard JSON (no NaN or Infinity inside)."""
    try:
        json.dumps(value, allow_nan=False)
    except ValueError:
        return False
    return True


def show_id(stream_id: Any, limit: int = 40) -> str:
    """A client's stream id as JSON, for messages and logs: control characters escaped (a
    newline in an id must not forge a log line), and cut short when long."""
    text = json.dumps(stream_id, ensure_ascii=True, default=repr)
    return text if len(text) <= limit else f"{text[: limit - 3]}..."


def _op_from_wire(kind: str, payload: dict[str, Any]) -> Op:
    model = payload.get("model", "")
    if not isinstance(model, str):
        raise ProtocolError("field 'model' has the wrong type", payload["stream_id"])
    if kind == MODEL_INFO:
        data = payload.get("data")
        if not isinstance(data, dict):
            data = {}
        return ModelInfo(payload["stream_id"], model, data)
    if kind == SCORE:
        return Score(
            payload["stream_id"],
            model,
            _token_ids(payload, "prompt"),
            _token_ids(payload, "scored"),
            _after(payload),
        )
    return _generate_from_wire(payload, model)


_GENERATE_KEYS = {"max_tokens", "temperature", "logit_bias", "top_logprobs", "model", "prompt"}
SEED_RANGE = (-(2**63), 2**64)  # what torch.Generator.manual_seed takes


def _generate_from_wire(payload: dict[str, Any], model: str) -> Generate:
    sid = payload["stream_id"]
    op = Generate(
        stream_id=sid,
        model=model,
        prompt=_token_ids(payload, "prompt"),
        max_tokens=_count(payload, "max_tokens", DEFAULT_MAX_TOKENS),
        temperature=_number(payload, "temperature", 0.0),
        logit_bias=_logit_bias(payload),
        top_logprobs=_count(payload, "top_logprobs", 1),
        grammar=_optional(payload, "grammar", str, None),
        stop=list(_optional(payload, "stop", list, [])),
        seed=_optional(payload, "seed", int, None),
        min_tokens=_count(payload, "min_tokens", 0),
        after=_after(payload),
    )
    if not all(isinstance(s, str) and s for s in op.stop):
        raise ProtocolError("field 'stop' must be a list of non-empty strings", sid)
    if op.seed is not None and not SEED_RANGE[0] <= op.seed < SEED_RANGE[1]:
        raise ProtocolError("field 'seed' must be between -2**63 and 2**64 - 1", sid)
    skip = _GENERATE_KEYS | set(EXTENSIONS) | {"stream_id", AFTER}
    op.extra = {k: v for k, v in payload.items() if k not in skip}
    _check_sampling_extras(op.extra, sid)
    return op


def _count(payload: dict[str, Any], key: str, default: int) -> int:
    """An integer field that must not be negative (a float such as 4.0 is refused: LMQL sends
    ints, and a float here is a client bug worth hearing about)."""
    value = int(_optional(payload, key, int, default))
    if value < 0:
        raise ProtocolError(
            f"field '{key}' must not be negative, got {value}", payload["stream_id"]
        )
    return value


def _number(payload: dict[str, Any], key: str, default: float) -> float:
    """A finite, non-negative number."""
    value = _optional(payload, key, (int, float), default)
    if not math.isfinite(value) or value < 0:
        raise ProtocolError(
            f"field '{key}' must be a finite number >= 0, got {value!r}", payload["stream_id"]
        )
    return float(value)


def _check_sampling_extras(extra: dict[str, Any], sid: Any) -> None:
    """LMQL passes HF sampling options through; the engine reads top_k and top_p, so a wrong
    one must fail here with its name, not as a comparison error inside the engine."""
    top_k = extra.get("top_k")
    if top_k is not None and (isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0):
        raise ProtocolError(f"field 'top_k' must be an integer >= 0, got {top_k!r}"[:200], sid)
    top_p = extra.get("top_p")
    if top_p is not None:
        try:
            ok = 0 < _finite(top_p) <= 1
        except ValueError:
            ok = False
        if not ok:
            raise ProtocolError(
                f"field 'top_p' must be a number in (0, 1], got {top_p!r}"[:200], sid
            )


def _after(payload: dict[str, Any]) -> Any:
    after = payload.get("after")
    if isinstance(after, (list, dict)):
        raise ProtocolError("field 'after' must be a stream id", payload["stream_id"])
    return after


def _optional(payload: dict[str, Any], key: str, kind: Any, default: Any) -> Any:
    if payload.get(key) is None:
        return default
    return _require(payload, key, kind)


# ---- events <-> wire -----------------------------------------------------------------------


def event_to_wire(event: Event) -> tuple[str, dict[str, Any]]:
    if isinstance(event, TokenEvent):
        p: dict[str, Any] = {
            "token": event.token,
            "stream_id": event.stream_id,
            "logprob": event.logprob,
            "finish_reason": event.finish_reason,
        }
        if event.top_logprobs is not None:
            p["top_logprobs"] = {str(k): v for k, v in event.top_logprobs.items()}
        return TOKEN, p
    if isinstance(event, InfoEvent):
        return MSG, {"stream_id": event.stream_id, "model_info": event.model_info}
    return (MSG if event.as_msg else TOKEN), {"stream_id": event.stream_id, "error": event.error}


def event_from_wire(kind: str, payload: Any) -> Event:
    if not isinstance(payload, dict) or "stream_id" not in payload:
        raise ProtocolError(f"{kind} item without a stream_id")
    sid = payload["stream_id"]
    if "error" in payload:
        return ErrorEvent(sid, str(payload["error"]), as_msg=kind == MSG)
    if kind == MSG:
        return InfoEvent(sid, payload.get("model_info"))
    if kind != TOKEN:
        raise ProtocolError(f"unknown message type {kind}", sid)
    token = _require(payload, "token", int)
    logprob = _require(payload, "logprob", (int, float))
    finish = _optional(payload, "finish_reason", str, None)
    top = _optional(payload, "top_logprobs", dict, None)
    try:
        top = None if top is None else {int(k): float(v) for k, v in top.items()}
    except (TypeError, ValueError):
        raise ProtocolError("top_logprobs keys must be token ids and values numbers", sid) from None
    return TokenEvent(sid, token, float(logprob), finish, top)


# ---- framing -------------------------------------------------------------------------------


def dumps(obj: Any) -> str:
    """Python's default JSON formatting, which LMQL peers produce and compare byte for byte."""
    return json.dumps(obj)


def split_message(text: str) -> tuple[str, Any]:
    """`TYPE JSON` → (TYPE, parsed JSON); NaN/Infinity literals are accepted as LMQL emits them."""
    kind, sep, body = text.partition(" ")
    if not sep or not kind:
        raise ProtocolError("malformed message: expected 'TYPE {json}'")
    try:
        return kind, json.loads(body)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"malformed JSON in {kind} message: {e.msg}") from None
    except (ValueError, RecursionError) as e:  # a 5,000-digit integer, arrays nested too deep
        reason = "nested too deeply" if isinstance(e, RecursionError) else str(e).split(";")[0]
        raise ProtocolError(f"unreadable JSON in {kind} message: {reason}") from None


def ws_frame(kind: str, payload: dict[str, Any]) -> str:
    """Server → client over WebSocket: the payload is wrapped in a one-element array. Strict
    JSON: NaN and Infinity raise ValueError instead of reaching a client that cannot parse
    them (`finite_event` drops them from events first)."""
    return f"{kind} {json.dumps([payload], allow_nan=False)}"


def finite_event(event: Event) -> Event:
    """`event` with nothing JSON cannot carry: top_logprobs entries that are not finite (a
    masked or filtered token, -inf) are left out, as they have no probability to report; a
    token whose own logprob is not finite becomes an error (the model produced NaN or inf)."""
    if not isinstance(event, TokenEvent):
        return event
    if not math.isfinite(event.logprob):
        return ErrorEvent(
            event.stream_id,
            f"the model gave token {event.token} a logprob of {event.logprob} (not a finite "
            "number); the stream cannot go on",
            as_msg=False,
        )
    top = event.top_logprobs
    if top is not None and not all(math.isfinite(v) for v in top.values()):
        top = {k: v for k, v in top.items() if math.isfinite(v)}
        return replace(event, top_logprobs=top)
    return event


def request_frame(kind: str, payload: dict[str, Any]) -> str:
    """Client → server over WebSocket: a bare object."""
    return f"{kind} {dumps(payload)}"


def replicate_line(kind: str, payload: dict[str, Any]) -> str:
    """One line of a Replicate prediction's output: a bare object and a newline."""
    return f"{kind} {dumps(payload)}\n"


def parse_server_message(text: str) -> list[Event]:
    """One WebSocket frame or Replicate line → events (arrays of any length are accepted)."""
    kind, body = split_message(text.strip())
    items = body if isinstance(body, list) else [body]
    return [event_from_wire(kind, item) for item in items]


# ---- cogql transport extensions ------------------------------------------------------------
# Sent only to a server whose MODEL_INFO reply advertises the capability, so LMQL peers never
# see them: `batch` (several ops in one frame, the pairs of Replicate's ops_batch_json),
# `cancel` (stop a stream server-side) and `tokenizer` (MODEL_INFO with data {"tokenizer":
# true} answers with the server's tokenizer inside model_info).

BATCH, CANCEL = "BATCH", "CANCEL"
TOKENIZER = "tokenizer"
AFTER = "after"
ENGINE_CAPABILITIES = ("stop", "grammar", "tokenizer", "batch", "seed", "min_tokens", AFTER)

# A Replicate model also advertises them in its input's description, which the version lookup
# returns anyway: a client learns them without spending a MODEL_INFO prediction.
_ADVERTISEMENT = "LMTP extensions: "


def advertise(capabilities: tuple[str, ...]) -> str:
    return f"{_ADVERTISEMENT}{', '.join(capabilities)}."


def advertised(description: str) -> frozenset[str] | None:
    """The capabilities `advertise` wrote into `description`; None when it holds none."""
    start = description.find(_ADVERTISEMENT)
    if start < 0:
        return None
    listed = description[start + len(_ADVERTISEMENT) :].split(".", 1)[0]
    return frozenset(c.strip() for c in listed.split(",") if c.strip())


def batch_frame(items: list[tuple[str, dict[str, Any]]]) -> str:
    """Client → server: `BATCH [[TYPE, obj], ...]`, ops the server submits together."""
    return f"{BATCH} {dumps([[kind, payload] for kind, payload in items])}"


def split_batch(body: Any, max_ops: int | None = None) -> list[tuple[str, Any]]:
    """The (TYPE, payload) pairs of a BATCH body; each payload is validated later, per op."""
    if not isinstance(body, list) or not all(
        isinstance(item, list) and len(item) == 2 and isinstance(item[0], str) for item in body
    ):
        raise ProtocolError("BATCH body must be a list of [TYPE, {...}] pairs")
    if max_ops is not None and len(body) > max_ops:
        raise ProtocolError(f"BATCH holds {len(body)} ops; at most {max_ops} are accepted")
    return [(kind, payload) for kind, payload in body]


def renumbered(ops: Sequence[_OpT], new_id: Callable[[], Any]) -> list[_OpT]:
    """Copies of `ops` under new stream ids (hosts and transports number streams their own
    way). An op's `after` follows the GENERATE it names among `ops`; one that names none gets an
    id no stream has, which the engine answers with an error."""
    renamed: dict[Any, Any] = {}
    out: list[_OpT] = []
    for op in ops:
        copy = replace(op, stream_id=new_id())
        if isinstance(op, Generate) and _hashable(op.stream_id):
            renamed[op.stream_id] = copy.stream_id
        out.append(copy)
    for op in out:
        if isinstance(op, Generate | Score) and op.after is not None:
            op.after = (
                renamed[op.after] if _hashable(op.after) and op.after in renamed else new_id()
            )
    return out


def misplaced_after(ops: Sequence[Op], refused: set[Any] | None = None) -> dict[int, str]:
    """Why ops (by index) cannot run `after` what they name, in the client's own ids: `after`
    must name a GENERATE earlier in the same message. `refused` holds ids of GENERATEs of the
    message that were refused before (what follows them, and what follows that, is refused)."""
    seen: set[Any] = set()
    refused = set(refused or ())
    problems: dict[int, str] = {}
    for i, op in enumerate(ops):
        after = getattr(op, "after", None)
        if after is not None and (not _hashable(after) or after not in seen):
            what = (
                "follows a GENERATE that cannot run"
                if _hashable(after) and after in refused
                else "names no GENERATE sent before it in the same message"
            )
            problems[i] = (
                f"{op_kind(op)} stream_id={show_id(op.stream_id)}: after={show_id(after)} {what}"
            )
            if isinstance(op, Generate) and _hashable(op.stream_id):
                refused.add(op.stream_id)
        elif isinstance(op, Generate) and _hashable(op.stream_id):
            seen.add(op.stream_id)
    return problems


def _hashable(value: Any) -> bool:
    return not isinstance(value, (list, dict))


def cancel_frame(stream_id: Any) -> str:
    """Client → server: stop a stream this client no longer reads (no reply is sent)."""
    return request_frame(CANCEL, {"stream_id": stream_id})


def tokenizer_to_wire(tokenizer: Any) -> dict[str, Any]:
    """The `tokenizer` entry of a model_info reply: tokenizer.json text plus special ids."""
    return {
        "json": tokenizer.to_json(),
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "chat_template": tokenizer.chat_template,
    }


def tokenizer_from_wire(data: Any, name: str) -> Any:
    """Rebuild a `cogql.tokenizer.Tokenizer` from `tokenizer_to_wire`'s dict."""
    from ..tokenizer import Tokenizer

    if not isinstance(data, dict) or not isinstance(data.get("json"), str):
        raise ProtocolError(f"{name} sent no usable tokenizer")
    return Tokenizer.from_json(
        data["json"],
        bos_token_id=data.get("bos_token_id"),
        eos_token_id=data.get("eos_token_id"),
        chat_template=data.get("chat_template"),
        name=name,
    )
