"""LMTP ops as Completions requests, and their answers as LMTP events.

A GENERATE streams a completion of its prompt's token ids (the API takes ids as the prompt),
with `logprobs` so that every token comes back with its id and log-prob. A SCORE completes
nothing: `echo` returns the prompt with each token's log-prob (`max_tokens` 0), which only APIs
that give prompt log-probs answer (vLLM does; OpenAI's current models do not).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ...messages import Generate, Score, TokenEvent
from .errors import OpenAIUnsupported
from .settings import OpenAITarget
from .tokens import TokenIds

OPENAI_MAX_LOGPROBS = 5  # OpenAI's limit on `logprobs` in completions


@dataclass(frozen=True)
class Dialect:
    """What the server understands beyond OpenAI's fields."""

    vllm: bool = False  # vLLM: token ids in logprobs, more than 5 top log-probs

    @property
    def max_logprobs(self) -> int:
        return 20 if self.vllm else OPENAI_MAX_LOGPROBS


def generate_body(target: OpenAITarget, op: Generate, dialect: Dialect) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model,
        "prompt": list(op.prompt),
        "max_tokens": op.max_tokens,
        "temperature": op.temperature,
        "logprobs": min(max(op.top_logprobs, 1), dialect.max_logprobs),
        "stream": True,
    }
    if op.logit_bias:
        body["logit_bias"] = {str(k): v for k, v in sorted(op.logit_bias.items())}
    if op.seed is not None:
        body["seed"] = op.seed
    if dialect.vllm:
        body["return_tokens_as_token_ids"] = True
        body["skip_special_tokens"] = False
    return body


def score_body(target: OpenAITarget, op: Score, dialect: Dialect) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": target.model,
        "prompt": [*op.prompt, *op.scored],
        "max_tokens": 0,
        "echo": True,
        "logprobs": 0 if dialect.vllm else 1,
    }
    if dialect.vllm:
        body["return_tokens_as_token_ids"] = True
    return body


def chunk_tokens(chunk: dict[str, Any], ids: TokenIds) -> tuple[list[TokenEvent], str | None]:
    """The tokens of one streamed chunk (no stream id, no finish reason yet) and the chunk's
    finish reason, if it is the last."""
    choice = _first_choice(chunk, ids.where)
    logprobs = choice.get("logprobs") or {}
    tokens = logprobs.get("tokens") or []
    if choice.get("text") and not tokens:
        raise OpenAIUnsupported(
            f"{ids.where} returned text without log-probs, and cogql needs them to know the "
            "tokens' ids; this server does not support `logprobs` in completions"
        )
    values = logprobs.get("token_logprobs") or []
    tops = logprobs.get("top_logprobs") or []
    events = [
        TokenEvent(
            None,
            ids.id_of(token),
            float(values[i]) if i < len(values) and values[i] is not None else 0.0,
            None,
            _top(tops[i] if i < len(tops) else None, ids),
        )
        for i, token in enumerate(tokens)
    ]
    return events, choice.get("finish_reason")


def final_event(last: TokenEvent | None, finish: str | None, eos: int | None) -> list[TokenEvent]:
    """The end of a stream whose last token is `last` (held back until the end): a stop
    without a token for it (servers leave EOS out) gets an EOS event, which is how LMTP says
    the model ended; a stream that just stopped ends on "length"."""
    events = [last] if last is not None else []
    if finish == "stop" and (last is None or last.token != eos) and eos is not None:
        events.append(TokenEvent(None, eos, 0.0, None, {}))
    if not events:
        events.append(TokenEvent(None, eos if eos is not None else 0, 0.0, None, {}))
    events[-1].finish_reason = "stop" if finish == "stop" else "length"
    return events


def score_logprobs(answer: dict[str, Any], op: Score, where: str) -> list[float]:
    """The log-probs of the op's scored tokens from an echoing completion."""
    choice = _first_choice(answer, where)
    values = (choice.get("logprobs") or {}).get("token_logprobs") or []
    total = len(op.prompt) + len(op.scored)
    if len(values) < total:
        raise OpenAIUnsupported(
            f"{where} did not return the prompt's log-probs (echo with logprobs), which "
            "distribution clauses and score() need; use a server that does (vLLM) or a local model"
        )
    scored = values[len(op.prompt) : total]
    return [float(v) if v is not None else 0.0 for v in scored]


def _first_choice(chunk: dict[str, Any], where: str) -> dict[str, Any]:
    choices = chunk.get("choices") if isinstance(chunk, dict) else None
    if not choices or not isinstance(choices[0], dict):
        raise OpenAIUnsupported(f"{where} returned no completion choice: {str(chunk)[:200]}")
    return choices[0]


def _top(entry: Any, ids: TokenIds) -> dict[int, float]:
    if not isinstance(entry, dict):
        return {}
    return {ids.id_of(t): float(v) for t, v in entry.items() if v is not None}
