"""An LMTP model answered in this process from a script: no engine, no weights, no torch.

A test that needs a model to choose given tokens, or any model at all, talks to this transport
instead of loading one. It speaks LMQL's plain LMTP (GENERATE with `logit_bias`, temperature,
`max_tokens` and top log-probs; SCORE; MODEL_INFO) plus `seed`, so a client emulates grammars,
stop phrases and `min_tokens` on its side, as it does against an LMQL server. The logits after
a token sequence come from a function of that sequence: `RandomLogits` (seeded noise, like the
`random` model) or `Continuations` (the text a script says comes next, noise elsewhere).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from ...errors import TransportError
from ...tokenizer import Tokenizer
from ..messages import ErrorEvent, Event, Generate, InfoEvent, Op, Score, TokenEvent
from .base import Cancellable, EventCallback, Handle

__all__ = [
    "Continuations",
    "Logits",
    "RandomLogits",
    "ScriptError",
    "ScriptedTransport",
    "Writer",
    "replies",
]

# a sequence's logits: one float per token id
Logits = Callable[[Sequence[int]], np.ndarray]
# what a script says comes after the text so far: text, token ids, or None (no opinion)
Writer = Callable[[str], str | Sequence[int] | None]

# standard normal logits times this, as the `random` model's: no token dominates
NOISE_SCALE = 3.0
# how far a scripted token is put above the best other one: it gets nearly all the mass
SCRIPTED_MARGIN = 20.0
CAPABILITIES = ("seed",)


class ScriptError(TransportError, ValueError):
    """An op the scripted model does not answer; it ends that stream with an error."""


class RandomLogits:
    """Seeded noise that depends only on the seed and the exact sequence, so a prompt gets the
    same logits alone, after a cancelled request or re-sent with the tokens chosen so far."""

    def __init__(self, vocab_size: int, seed: int = 0, scale: float = NOISE_SCALE) -> None:
        self.vocab_size = vocab_size
        self.scale = scale
        self._key = seed.to_bytes(16, "little", signed=True)

    def __call__(self, ids: Sequence[int]) -> np.ndarray:
        data = np.asarray(ids, dtype="<i8").tobytes()
        digest = hashlib.blake2b(data, digest_size=8, key=self._key).digest()
        rng = np.random.default_rng(int.from_bytes(digest, "little"))
        return rng.standard_normal(self.vocab_size) * self.scale


class Continuations:
    """Logits under which a model writes what `write(text so far)` says comes next: the first
    token of that text (or the first of the ids it gives; EOS for "" or []) is put well above
    all others. Where it says None, or its token is masked out by a constraint, `otherwise`
    decides (seeded noise by default)."""

    def __init__(
        self, tokenizer: Tokenizer, write: Writer, otherwise: Logits | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.write = write
        self.otherwise = otherwise or RandomLogits(tokenizer.vocab_size)

    def __call__(self, ids: Sequence[int]) -> np.ndarray:
        logits = np.array(self.otherwise(ids), dtype=np.float64)
        wanted = self._next(ids)
        if wanted is not None:
            logits[wanted] = logits.max() + SCRIPTED_MARGIN
        return logits

    def _next(self, ids: Sequence[int]) -> int | None:
        bos = self.tokenizer.bos_token_id
        body = list(ids[1:]) if ids and bos is not None and ids[0] == bos else list(ids)
        ahead = self.write(self.tokenizer.decode(body))
        if ahead is None:
            return None
        tokens = self.tokenizer.encode(ahead) if isinstance(ahead, str) else list(ahead)
        return tokens[0] if tokens else self.tokenizer.eos_token_id


def replies(script: Mapping[str, str]) -> Writer:
    """A writer from prompts to what the model answers to them: after a text that starts with a
    prompt and has written part of its reply so far, the rest of the reply, then EOS. The
    longest matching prompt wins; off the script (a constraint made it write something else)
    there is no opinion."""
    ordered = sorted(script.items(), key=lambda item: len(item[0]), reverse=True)

    def write(text: str) -> str | None:
        for prompt, reply in ordered:
            if text.startswith(prompt) and reply.startswith(text[len(prompt) :]):
                return reply[len(text) - len(prompt) :]
        return None

    return write


class ScriptedTransport:
    """The transport: each op is answered by a task on the caller's event loop, a token at a
    time, so cancelling a GENERATE stops it where it is. `ops` records every op received."""

    def __init__(
        self, tokenizer: Tokenizer, logits: Logits | None = None, *, name: str = "scripted"
    ) -> None:
        if tokenizer.eos_token_id is None:
            raise ScriptError(
                f"the scripted model needs a tokenizer with an EOS token; {tokenizer.name} has none"
            )
        self.tokenizer = tokenizer
        self.eos: int = tokenizer.eos_token_id
        self.logits = logits or RandomLogits(tokenizer.vocab_size)
        self.name = name
        self.ops: list[Op] = []
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        return None

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Cancellable]:
        loop = asyncio.get_running_loop()
        handles: list[Cancellable] = []
        for op in ops:
            self.ops.append(op)
            task = loop.create_task(self._answer(op, on_event))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            handles.append(Handle(_canceller(task)))
        return handles

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    def model_info(self) -> dict[str, Any]:
        return {
            "model": self.name,
            "model_type": "scripted",
            "capabilities": list(CAPABILITIES),
            "bos_token_id": self.tokenizer.bos_token_id,
            "eos_token_id": self.tokenizer.eos_token_id,
            "vocab_size": self.tokenizer.vocab_size,
        }

    async def _answer(self, op: Op, on_event: EventCallback) -> None:
        try:
            if isinstance(op, Generate):
                await self._generate(op, on_event)
            elif isinstance(op, Score):
                self._score(op, on_event)
            else:
                on_event(InfoEvent(op.stream_id, self.model_info()))
        except ScriptError as e:
            on_event(ErrorEvent(op.stream_id, str(e)))

    async def _generate(self, op: Generate, on_event: EventCallback) -> None:
        _plain_only(op)
        eos = self.eos
        if op.max_tokens <= 0:
            on_event(TokenEvent(op.stream_id, eos, 0.0, "length", {}))
            return
        rng = np.random.default_rng(op.seed)
        ids = list(op.prompt)
        for step in range(op.max_tokens):
            logprobs = self._processed(ids, op)
            if op.temperature > 0:
                token = int(rng.choice(len(logprobs), p=_normalised(np.exp(logprobs))))
            else:
                token = int(np.argmax(logprobs))
            reason = "stop" if token == eos else ("length" if step + 1 == op.max_tokens else None)
            on_event(_token(op, token, logprobs, reason))
            if reason is not None:
                return
            ids.append(token)
            await asyncio.sleep(0)  # a cancel lands between tokens, as on a server

    def _processed(self, ids: list[int], op: Generate) -> np.ndarray:
        """Log-probs of the distribution the token is drawn from: biased, then tempered."""
        scores = np.array(self.logits(ids), dtype=np.float64)
        for token, bias in op.logit_bias.items():
            if not 0 <= token < len(scores):
                raise ScriptError(f"logit_bias names token id {token}, outside the vocabulary")
            scores[token] += bias
        if op.temperature > 0:
            scores /= op.temperature
        return _log_softmax(scores)

    def _score(self, op: Score, on_event: EventCallback) -> None:
        if op.after is not None:
            raise ScriptError("the scripted model has no `after` extension")
        if not op.scored:
            raise ScriptError("SCORE with no tokens to score")
        events: list[Event] = []
        for j, token in enumerate(op.scored):
            logprobs = _log_softmax(np.array(self.logits(op.prompt + op.scored[:j]), np.float64))
            last = j == len(op.scored) - 1
            events.append(
                TokenEvent(op.stream_id, token, float(logprobs[token]), "stop" if last else None)
            )
        for event in events:
            on_event(event)


def _plain_only(op: Generate) -> None:
    used = [name for name, value in (("grammar", op.grammar), ("stop", op.stop),
            ("min_tokens", op.min_tokens), ("after", op.after)) if value]  # fmt: skip
    if used:
        raise ScriptError(
            f"the scripted model speaks plain LMTP and got {', '.join(used)}: give the client "
            "its tokenizer so that it emulates them"
        )


def _canceller(task: asyncio.Task[None]) -> Callable[[], None]:
    def cancel() -> None:
        task.cancel()

    return cancel


def _token(op: Generate, token: int, logprobs: np.ndarray, reason: str | None) -> TokenEvent:
    top = {token: float(logprobs[token])}
    if op.top_logprobs > 0:
        k = min(op.top_logprobs, len(logprobs))
        best = np.argpartition(-logprobs, k - 1)[:k]
        for i in best[np.argsort(-logprobs[best], kind="stable")]:
            top.setdefault(int(i), float(logprobs[i]))
    return TokenEvent(op.stream_id, token, top[token], reason, top)


def _log_softmax(scores: np.ndarray) -> np.ndarray:
    shifted = scores - scores.max()
    return shifted - np.log(np.exp(shifted).sum())


def _normalised(p: np.ndarray) -> np.ndarray:
    return p / p.sum()
