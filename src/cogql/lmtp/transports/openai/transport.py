"""The Transport that answers LMTP ops by calling an OpenAI-compatible API (see the package
docstring)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from ....errors import CogqlError
from ....tokenizer import Tokenizer
from ...messages import (
    ErrorEvent,
    Generate,
    InfoEvent,
    ModelInfo,
    Op,
    Score,
    TokenEvent,
)
from ..base import EventCallback, Handle
from .completions import (
    Dialect,
    chunk_tokens,
    final_event,
    generate_body,
    score_body,
    score_logprobs,
)
from .errors import OpenAIAPIError, OpenAIModelNotFound
from .http import DEFAULT_TIMEOUT_S, OpenAIHTTP
from .settings import OpenAITarget
from .tokens import TokenIds

log = logging.getLogger("cogql.lmtp.openai")

CAPABILITIES = ("seed",)  # the one extension the API has as LMTP defines it


class OpenAITransport:
    """Ops to one model behind an OpenAI-compatible API; each op is one HTTP request."""

    def __init__(
        self,
        target: OpenAITarget,
        tokenizer: Tokenizer | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT_S,
    ) -> None:
        self.target = target
        self.tokenizer = tokenizer
        self.http = OpenAIHTTP(target, timeout)
        self.url = target.url("chat/completions" if target.chat else "completions").split("?")[0]
        self.dialect = Dialect()
        self.ids = TokenIds(tokenizer, self.url)
        self.served_root: str | None = None  # where a vLLM server loaded the model from
        self._tasks: set[asyncio.Task[None]] = set()

    async def open(self) -> None:
        """Ask the server for its models, so that a dead server, a wrong key or an unknown
        model fail here, clearly; a vLLM server is recognised by its models' owner."""
        if self.target.azure:
            return  # Azure lists models, not the deployment the requests go to
        try:
            answer = await self.http.get("models")
        except OpenAIModelNotFound:
            log.info("%s lists no models; trying the model anyway", self.url)
            return
        models = answer.get("data") if isinstance(answer, dict) else None
        if not isinstance(models, list):
            return
        names = [str(m.get("id")) for m in models if isinstance(m, dict)]
        ours = [m for m in models if isinstance(m, dict) and m.get("id") == self.target.model]
        if names and not ours and not _is_openai(self.target):
            raise OpenAIModelNotFound(
                f"the server at {self.target.base_url} serves no model {self.target.model!r}; "
                f"it serves {', '.join(sorted(names)[:10])}: name one as 'openai/<name>'"
            )
        self.dialect = Dialect(vllm=bool(ours) and ours[0].get("owned_by") == "vllm")
        root = ours[0].get("root") if ours else None
        self.served_root = root if isinstance(root, str) else None

    def use_tokenizer(self, tokenizer: Tokenizer) -> None:
        """The served model's tokenizer, found after `open` (for token strings and EOS)."""
        self.tokenizer = tokenizer
        self.ids = TokenIds(tokenizer, self.url)

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Handle]:
        return [self._start(op, on_event) for op in ops]

    def _start(self, op: Op, on_event: EventCallback) -> Handle:
        def deliver(event: Any) -> None:
            event.stream_id = op.stream_id
            on_event(event)

        task = asyncio.get_running_loop().create_task(self._run(op, deliver))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

        def cancel() -> None:
            task.cancel()  # closes the request's HTTP stream

        return Handle(cancel)

    async def _run(self, op: Op, deliver: Callable[[Any], None]) -> None:
        try:
            await self._answer(op, deliver)
        except asyncio.CancelledError:
            raise
        except OpenAIAPIError as e:
            deliver(ErrorEvent(None, str(e), as_msg=False, retryable=e.retryable))
        except CogqlError as e:  # any failure ends the op's stream, never the client's others
            deliver(ErrorEvent(None, str(e), as_msg=False))
        except Exception as e:
            deliver(ErrorEvent(None, f"{type(e).__name__}: {e}", as_msg=False))

    def _answer(self, op: Op, deliver: Callable[[Any], None]) -> Awaitable[None]:
        if isinstance(op, Generate):
            if self.target.chat:
                from .chat import chat_generate

                return chat_generate(self, op, deliver)
            return self._generate(op, deliver)
        if isinstance(op, Score):
            return self._score(op, deliver)
        return self._info(op, deliver)

    async def _generate(self, op: Generate, deliver: Callable[[TokenEvent], None]) -> None:
        """Each token is held back until the next arrives, so the last one can carry the
        finish reason that only the stream's last chunk tells."""
        body = generate_body(self.target, op, self.dialect)
        held: TokenEvent | None = None
        finish: str | None = None
        async for chunk in self.http.stream("completions", body):
            tokens, reason = chunk_tokens(chunk, self.ids)
            finish = reason or finish
            for token in tokens:
                if held is not None:
                    deliver(held)
                held = token
        for event in final_event(held, finish, self.eos):
            deliver(event)

    async def _score(self, op: Score, deliver: Callable[[Any], None]) -> None:
        from .errors import OpenAIUnsupported

        try:
            answer = await self.http.post("completions", score_body(self.target, op, self.dialect))
        except OpenAIAPIError as e:
            if e.status != 400:
                raise
            raise OpenAIUnsupported(
                f"{self.url} cannot score (completions with echo and logprobs), which "
                f"distribution clauses and score() need: {e}"
            ) from None
        values = score_logprobs(answer, op, self.url)
        for i, (token, logprob) in enumerate(zip(op.scored, values, strict=True)):
            last = i == len(op.scored) - 1
            deliver(TokenEvent(None, token, logprob, "stop" if last else None, {}))
        if not op.scored:
            deliver(InfoEvent(None, {}))

    async def _info(self, op: ModelInfo, deliver: Callable[[Any], None]) -> None:
        deliver(InfoEvent(None, self.model_info()))

    def model_info(self) -> dict[str, Any]:
        return {
            "model_info": self.target.model,
            "model_type": "openai-chat" if self.target.chat else "openai-completions",
            "api": self.target.base_url,
            "capabilities": [] if self.target.chat else list(CAPABILITIES),
        }

    @property
    def eos(self) -> int | None:
        return self.tokenizer.eos_token_id if self.tokenizer is not None else None

    async def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await self.http.close()


def _is_openai(target: OpenAITarget) -> bool:
    return target.base_url.startswith("https://api.openai.com")
