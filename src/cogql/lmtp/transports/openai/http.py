"""The HTTP side: one httpx client per event loop, JSON and event-stream requests, and every
failure turned into one of errors.py's classes (with the API key never in a message)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ....errors import retryable_status
from ...sse import SSEDecoder
from .errors import OpenAIAPIError, OpenAIAuthError, OpenAIConnectionError, OpenAIModelNotFound
from .settings import OpenAITarget

log = logging.getLogger("cogql.lmtp.openai")

CONNECT_TIMEOUT_S = 10.0
DEFAULT_TIMEOUT_S = 120.0  # the longest silence while a request runs (a cold server included)


class OpenAIHTTP:
    """Requests to one target, from whichever event loop runs them."""

    def __init__(self, target: OpenAITarget, timeout: float = DEFAULT_TIMEOUT_S) -> None:
        self.target = target
        self.timeout = httpx.Timeout(float(timeout), connect=min(CONNECT_TIMEOUT_S, timeout))
        self._clients: dict[asyncio.AbstractEventLoop, httpx.AsyncClient] = {}

    def _client(self) -> httpx.AsyncClient:
        loop = asyncio.get_running_loop()
        for other in [k for k in self._clients if k.is_closed()]:
            del self._clients[other]
        if loop not in self._clients:
            self._clients[loop] = httpx.AsyncClient(
                timeout=self.timeout, headers=self.target.headers()
            )
        return self._clients[loop]

    async def get(self, path: str) -> Any:
        url = self.target.url(path)
        async with self._failures(url):
            response = await self._client().get(url)
            await self._check(response, url)
            return response.json()

    async def post(self, path: str, body: dict[str, Any]) -> Any:
        url = self.target.url(path)
        async with self._failures(url):
            response = await self._client().post(url, json=body)
            await self._check(response, url)
            return response.json()

    async def stream(self, path: str, body: dict[str, Any]) -> AsyncIterator[dict[str, Any]]:
        """The JSON chunks of a streamed request until `[DONE]`; leaving early closes it."""
        url = self.target.url(path)
        client = self._client()
        async with self._failures(url), client.stream("POST", url, json=body) as response:
            await self._check(response, url)
            decoder = SSEDecoder()
            async for line in response.aiter_lines():
                event = decoder.feed(line)
                if event is None or not event.data:
                    continue
                if event.data.strip() == "[DONE]":
                    return
                chunk = _json(event.data, url)
                if isinstance(chunk, dict) and "error" in chunk:
                    raise _api_error(self.target, url, 500, chunk)
                yield chunk

    async def close(self) -> None:
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    def _failures(self, url: str) -> _Failures:
        return _Failures(self.target, url)

    async def _check(self, response: httpx.Response, url: str) -> None:
        if response.status_code < 400:
            return
        await response.aread()
        try:
            body = response.json()
        except ValueError:
            body = response.text
        raise _api_error(self.target, url, response.status_code, body)


class _Failures:
    """Turns httpx's connection failures into OpenAIConnectionError, redacted."""

    def __init__(self, target: OpenAITarget, url: str) -> None:
        self.target, self.url = target, url

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, kind: Any, error: BaseException | None, tb: Any) -> None:
        if isinstance(error, httpx.TimeoutException):
            raise OpenAIConnectionError(
                f"no answer from {_where(self.url)} in time ({type(error).__name__}); the "
                "server may be overloaded: try again, or raise the model's timeout="
            ) from None
        if isinstance(error, httpx.TransportError):
            what = self.target.redact(str(error) or type(error).__name__)
            raise OpenAIConnectionError(
                f"cannot reach the OpenAI-compatible API at {_where(self.url)}: {what}; "
                "is the server running and the endpoint right?"
            ) from None


def _where(url: str) -> str:
    return url.split("?", 1)[0]


def _json(data: str, url: str) -> Any:
    try:
        return json.loads(data)
    except ValueError:
        raise OpenAIAPIError(
            f"{_where(url)} sent an event that is not JSON: {data[:200]!r}"
        ) from None


def _api_error(target: OpenAITarget, url: str, status: int, body: Any) -> Exception:
    detail = target.redact(_message(body))[:500]
    where = _where(url)
    if status in (401, 403):
        return OpenAIAuthError(
            f"{where} refused the request (HTTP {status}: {detail}); check the API key "
            "(OPENAI_API_KEY or api_key=) and its access to the model",
            status,
        )
    if status == 404:
        return OpenAIModelNotFound(
            f"{where} (HTTP 404: {detail}): no model {target.model!r} there, or no such "
            "endpoint; check the model name and the endpoint (a base URL ending in /v1)"
        )
    if status == 429:
        return OpenAIAPIError(
            f"{where} is rate limiting (HTTP 429: {detail}); try again later",
            status,
            retryable=True,
        )
    retry = retryable_status(status)
    what = "the server failed" if status >= 500 else "the request was refused"
    return OpenAIAPIError(f"{where}: {what} (HTTP {status}: {detail})", status, retryable=retry)


def _message(body: Any) -> str:
    """The error message of OpenAI's `{"error": {"message": ...}}` (or vLLM's variants)."""
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict):
            return str(error.get("message") or error.get("detail") or error)
        return str(error)
    return str(body).strip() or "no details"
