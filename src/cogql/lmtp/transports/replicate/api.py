"""Replicate's HTTP API as the replicate transport needs it, on the official `replicate` client.

The official client (1.0.x) supplies the session (auth header, base URL from REPLICATE_BASE_URL,
connection reuse, retries of throttled GETs) and the API calls. Three things it lacks are added
here, because a query must neither hang nor pay twice:

- creates are retried on 429 (honouring Retry-After) and on 5xx with backoff; before retrying a
  create whose outcome is unknown (5xx, connection lost after sending) the recent predictions
  are searched for one with the same input (every batch is unique), so an op never runs twice;
- the SSE stream is read with a small decoder that knows Last-Event-ID, so a dropped stream is
  resumed (the client's own reader stops silently at EOF and raises on unknown event names);
- HTTP failures keep their status and Retry-After header (an httpx response hook reads them:
  the client's ReplicateError drops the headers).
"""

from __future__ import annotations

import asyncio
import contextlib
import email.utils
import logging
import random
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import replicate
from replicate.prediction import Prediction

from ....errors import TransportError, retryable_status
from ...messages import advertised
from ...sse import SSEDecoder, SSEEvent

log = logging.getLogger("cogql.lmtp.replicate")

API_BASE = "https://api.replicate.com"
HTTP_TIMEOUT = httpx.Timeout(10.0, read=60.0, write=30.0, pool=30.0)
STREAM_READ_TIMEOUT_S = 60.0  # Replicate (and cogql's emulator) send a heartbeat every 15 s
DEDUPE_PAGES = 3  # pages of recent predictions searched for a create of unknown outcome


class ReplicateTransportError(TransportError, RuntimeError):
    """Base class of the replicate transport's errors."""


class ReplicateConfigError(ReplicateTransportError, ValueError):
    """An endpoint string or environment that cannot reach a Replicate model."""


class ReplicateAPIError(ReplicateTransportError):
    """Replicate's API refused a request; `status` is the HTTP status (None: no response)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message, retryable=retryable_status(status))
        self.status = status


class ReplicateAuthError(ReplicateAPIError):
    """401/403: the API token is missing, wrong, or may not use this model."""


class ReplicatePredictionError(ReplicateTransportError):
    """A prediction failed, was canceled, or ended before answering its ops."""

    def __init__(self, message: str, prediction_id: str) -> None:
        super().__init__(message)
        self.prediction_id = prediction_id


class _HTTPFailure(TransportError):
    """A response with status >= 400, raised from the response hook with what the official
    client's ReplicateError leaves out."""

    def __init__(self, response: httpx.Response) -> None:
        self.status = response.status_code
        self.retry_after = response.headers.get("retry-after")
        self.method = response.request.method
        self.path = response.request.url.path
        try:
            body = response.json()
        except ValueError:
            body = {}
        detail = (body.get("detail") or body.get("title")) if isinstance(body, dict) else None
        self.detail = str(detail or response.reason_phrase)
        super().__init__(
            f"{self.method} {self.path}: HTTP {self.status} {self.detail}",
            retryable=retryable_status(self.status),
        )


async def _raise_http_failures(response: httpx.Response) -> None:
    if response.status_code >= 400:
        await response.aread()
        raise _HTTPFailure(response)


# --------------------------------------------------------------------------- retry policy


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a Retry-After header: delta-seconds, an HTTP date or an ISO date."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(float(value), 0.0)
    except ValueError:
        pass
    now = now or datetime.now(UTC)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        try:
            when = datetime.fromisoformat(value)
        except ValueError:
            return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max((when - now).total_seconds(), 0.0)


@dataclass
class RetryPolicy:
    """When and how long to retry a prediction create: throttling (429) waits as long as the
    server asks (capped); server errors (5xx) and lost connections back off exponentially."""

    attempts: int = 8
    base_delay: float = 0.25
    max_delay: float = 30.0
    jitter: float = 0.1
    rng: random.Random = field(default_factory=random.Random, repr=False)

    def delay(self, attempt: int, retry_after: str | None = None) -> float:
        """Seconds before attempt `attempt + 1` (attempt counts from 1)."""
        asked = parse_retry_after(retry_after)
        if asked is not None:
            return min(asked, self.max_delay)
        backoff = min(self.base_delay * 2 ** (attempt - 1), self.max_delay)
        return backoff * (1 + self.jitter * self.rng.uniform(-1, 1))


# --------------------------------------------------------------------------- the API


@dataclass(frozen=True)
class ReplicateTarget:
    """A model on Replicate: `owner/name`, pinned to a version, or a deployment."""

    owner: str
    name: str
    version: str | None = None
    deployment: bool = False

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    def __str__(self) -> str:
        if self.deployment:
            return f"deployment/{self.ref}"
        return self.ref + (f"/{self.version}" if self.version else "")


@dataclass(frozen=True)
class Resolved:
    """Where predictions go: a version id (None: the deployment or model endpoint decides)."""

    target: ReplicateTarget
    version: str | None
    capabilities: frozenset[str] | None = None  # advertised in the version's input schema


class ReplicateAPI:
    """One official client (one HTTP session) for one event loop."""

    def __init__(
        self,
        token: str,
        base_url: str,
        *,
        http_transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        self.base_url = base_url
        self.retry = retry or RetryPolicy()
        kwargs: dict[str, Any] = {"event_hooks": {"response": [_raise_http_failures]}}
        if http_transport is not None:
            kwargs["transport"] = http_transport
        self.client = replicate.Client(token, base_url=base_url, timeout=HTTP_TIMEOUT, **kwargs)

    async def aclose(self) -> None:
        with contextlib.suppress(Exception):
            await self.client._async_client.aclose()

    # ---- lookups ---------------------------------------------------------------------------

    async def resolve(self, target: ReplicateTarget) -> Resolved:
        """The version predictions run on; also proves the token and the name are good."""
        what = f"deployment {target.ref}" if target.deployment else f"model {target.ref}"
        try:
            if target.deployment:
                deployment = await self.client.deployments.async_get(target.ref)
                release = deployment.current_release
                return Resolved(target, release.version if release is not None else None)
            model = await self.client.models.async_get(target.ref)
            if target.version:
                pinned = await model.versions.async_get(target.version)
                return Resolved(target, target.version, _advertised(pinned.openapi_schema))
            latest = model.latest_version
            if latest is None:
                return Resolved(target, None)
            return Resolved(target, latest.id, _advertised(latest.openapi_schema))
        except _HTTPFailure as e:
            if target.version and e.status == 404 and "/versions/" in e.path:
                what = f"version {target.version} of model {target.ref}"
            raise self._api_error(e, what) from None
        except httpx.HTTPError as e:
            raise self._unreachable(e) from None

    # ---- predictions -----------------------------------------------------------------------

    async def create(self, resolved: Resolved, ops_json: str, *, wait: int | None) -> Prediction:
        """Create a prediction for `ops_json`, retrying as the module docstring says."""
        since = datetime.now(UTC)
        for attempt in range(1, self.retry.attempts + 1):
            retry_after = None
            try:
                return await self._create_once(resolved, ops_json, wait)
            except _HTTPFailure as e:
                if e.status != 429 and e.status < 500:
                    raise self._api_error(e, f"a prediction of {resolved.target}") from None
                failure: Exception = e
                maybe_created = e.status != 429
                retry_after = e.retry_after if e.status == 429 else None
            except (httpx.ConnectError, httpx.ConnectTimeout) as e:
                failure, maybe_created = e, False  # never sent
            except httpx.HTTPError as e:
                failure, maybe_created = e, True  # sent; the answer was lost
            if maybe_created:
                found = await self.find_created(ops_json, since)
                if found is not None:
                    log.info("create failed (%s), but prediction %s exists", failure, found.id)
                    return found
            if attempt < self.retry.attempts:
                pause = self.retry.delay(attempt, retry_after)
                log.info("create of a prediction of %s failed (%s); retrying in %.2f s",
                         resolved.target, failure, pause)  # fmt: skip
                await asyncio.sleep(pause)
        raise ReplicateAPIError(
            f"could not create a prediction of {resolved.target} at {self.base_url} "
            f"in {self.retry.attempts} attempts; the last failure: {_describe(failure)}",
            getattr(failure, "status", None),
        )

    async def _create_once(self, resolved: Resolved, ops_json: str, wait: int | None) -> Prediction:
        params: dict[str, Any] = {"input": {"ops_batch_json": ops_json}, "stream": True}
        if wait:
            params["wait"] = int(wait)
        predictions = self.client.predictions
        target = resolved.target
        if target.deployment:
            return await predictions.async_create(deployment=target.ref, **params)
        if resolved.version is None:
            return await predictions.async_create(model=target.ref, **params)
        return await predictions.async_create(version=resolved.version, **params)

    async def find_created(self, ops_json: str, since: datetime) -> Prediction | None:
        """A prediction created since `since` with exactly this input (None when there is none
        or the listing fails: the caller then retries, which is safe when none was created)."""
        cursor: Any = ...
        for _ in range(DEDUPE_PAGES):
            try:
                page = await self.client.predictions.async_list(cursor)
            except (_HTTPFailure, httpx.HTTPError) as e:
                log.warning("cannot list predictions to check for a duplicate: %s", e)
                return None
            for prediction in page.results:
                if (prediction.input or {}).get("ops_batch_json") == ops_json:
                    return prediction
            oldest = _parse_time(page.results[-1].created_at) if page.results else None
            if page.next is None or oldest is None or oldest < since.timestamp() - 300:
                return None
            cursor = page.next
        return None

    async def get(self, prediction_id: str) -> Prediction:
        try:
            return await self.client.predictions.async_get(prediction_id)
        except _HTTPFailure as e:
            raise self._api_error(e, f"prediction {prediction_id}") from None

    async def cancel(self, prediction_id: str) -> None:
        """Best effort: a prediction that already ended cannot be canceled and needs not be."""
        try:
            await self.client.predictions.async_cancel(prediction_id)
        except (_HTTPFailure, httpx.HTTPError) as e:
            log.warning("could not cancel Replicate prediction %s: %s", prediction_id, e)

    async def events(self, url: str, last_event_id: str | None) -> AsyncGenerator[SSEEvent, None]:
        """The prediction's server-sent events from `url`; ends at EOF (the caller checks for
        `done`). Uses the official client's session, so auth and connections are shared."""
        headers = {"Accept": "text/event-stream", "Cache-Control": "no-store"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = last_event_id
        timeout = httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT_S)
        http = self.client._async_client  # the client's own session (see module docstring)
        try:
            async with http.stream("GET", url, headers=headers, timeout=timeout) as response:
                kind = response.headers.get("content-type", "").partition(";")[0].strip()
                if kind != "text/event-stream":
                    raise ReplicateAPIError(f"GET {url} answered {kind or 'no content type'}, "
                                            "not an event stream", response.status_code)  # fmt: skip
                decoder = SSEDecoder()
                async for line in response.aiter_lines():
                    event = decoder.feed(line.rstrip("\r\n"))
                    if event is not None:
                        yield event
        except _HTTPFailure as e:
            raise self._api_error(e, f"the event stream {url}") from None

    # ---- errors ----------------------------------------------------------------------------

    def _api_error(self, e: _HTTPFailure, what: str) -> ReplicateAPIError:
        if e.status in (401, 403):
            return ReplicateAuthError(
                f"Replicate at {self.base_url} rejected the API token for {what} "
                f"(HTTP {e.status}: {e.detail}); check REPLICATE_API_TOKEN",
                e.status,
            )
        if e.status == 404:
            return ReplicateAPIError(
                f"Replicate at {self.base_url} has no {what} visible to this token "
                f"(HTTP 404: {e.detail})",
                404,
            )
        return ReplicateAPIError(
            f"Replicate at {self.base_url} refused {e.method} {e.path} for {what} "
            f"(HTTP {e.status}: {e.detail})",
            e.status,
        )

    def _unreachable(self, e: Exception) -> ReplicateAPIError:
        return ReplicateAPIError(f"cannot reach Replicate at {self.base_url}: {_describe(e)}")


def _advertised(openapi_schema: Any) -> frozenset[str] | None:
    """The LMTP extensions a cogql-built version lists in its input's description."""
    try:
        field = openapi_schema["components"]["schemas"]["Input"]["properties"]["ops_batch_json"]
        description = field["description"]
    except (KeyError, TypeError):
        return None
    return advertised(description) if isinstance(description, str) else None


def _describe(e: Exception) -> str:
    return str(e) or type(e).__name__


def _parse_time(value: str | None) -> float | None:
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None
