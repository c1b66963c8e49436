"""GENERATE on a chat endpoint: the prompt becomes messages, the answer becomes tokens.

The runtime writes a chat model's role tags as LMQL's markers (`<lmql:user/>`); the prompt's
text is split at them into messages (text before the first tag is a user message, as in LMQL).
The answer comes back as text, which the client's tokenizer turns into tokens (with log-prob
0: the tokens are the client's, not the model's). Chat endpoints take no `logit_bias`, so an
op that carries a mask fails, as LMQL's "Chat API models do not support advanced constraining".
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ...messages import Generate, TokenEvent
from .completions import final_event
from .errors import OpenAIUnsupported

if TYPE_CHECKING:
    from .transport import OpenAITransport

MARKER = re.compile(r"<lmql:(\w+)/>")


def role_marker(role: str) -> str:
    """The text a `{:role}` tag leaves in a chat model's prompt."""
    return f"<lmql:{role}/>"


def messages_of(prompt: str) -> list[dict[str, str]]:
    """The prompt's text as chat messages, split at role markers; empty messages dropped."""
    parts = MARKER.split(prompt)
    messages = [("user", parts[0])]
    messages += [(parts[i], parts[i + 1]) for i in range(1, len(parts), 2)]
    return [{"role": r, "content": c.strip()} for r, c in messages if c.strip()]


def chat_body(transport: OpenAITransport, op: Generate) -> dict[str, Any]:
    if op.logit_bias:
        raise OpenAIUnsupported(
            f"{transport.url} is a chat endpoint, which takes no logit_bias, and a constraint "
            "here needs a token mask (in [...], INT, a regex, ...); chat models support "
            "stop phrases and token limits only: use a completions model for the others"
        )
    tok = transport.tokenizer
    if tok is None:
        raise OpenAIUnsupported(f"{transport.url}: a chat model needs a tokenizer= for its text")
    ids = op.prompt[1:] if op.prompt and op.prompt[0] == tok.bos_token_id else op.prompt
    body: dict[str, Any] = {
        "model": transport.target.model,
        "messages": messages_of(tok.decode(ids)),
        "max_tokens": op.max_tokens,
        "temperature": op.temperature,
        "stream": True,
    }
    if op.seed is not None:
        body["seed"] = op.seed
    return body


async def chat_generate(
    transport: OpenAITransport, op: Generate, deliver: Callable[[TokenEvent], None]
) -> None:
    body = chat_body(transport, op)
    text, finish = "", None
    async for chunk in transport.http.stream("chat/completions", body):
        for choice in chunk.get("choices") or []:
            text += (choice.get("delta") or {}).get("content") or ""
            finish = choice.get("finish_reason") or finish
    assert transport.tokenizer is not None  # chat_body checked
    events = [TokenEvent(None, t, 0.0, None, {}) for t in transport.tokenizer.encode(text)]
    for event in events[:-1]:
        deliver(event)
    for event in final_event(events[-1] if events else None, finish, transport.eos):
        deliver(event)
