"""Replicate's HTTP API (the predictions subset, replicate-api-and-cog.md §1 and §5) as a
Starlette app over the models in a catalog and their Cog backends.

Every route but the 404 fallback checks the token first; every error is problem JSON (a bug
too: a 500 with its cause, never a plain-text page); every URL in an answer is absolute and built from the request's Host, so clients can follow `urls.*` and
`next` verbatim whichever address they used.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from ..cog.cogserver import CogServer
from . import auth, sse
from .access_log import AccessLog
from .backend import CogBackend
from .body import MAX_BODY_BYTES, parse_object, read_body
from .catalog import ModelEntry
from .errors import (
    APIError,
    BadRequest,
    InvalidInput,
    NotFound,
    ServerError,
    Throttled,
    problem,
)
from .faults import Faults
from .store import KEEP_S, MAX_KEPT, Prediction, Store
from .validate import validate_input

MAX_WAIT_S = 60
CANCEL_WAIT_S = 5.0
Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("cogql.replicate.emulator")


class API:
    """The emulator's state: models, their Cog backends, predictions, token and faults."""

    def __init__(
        self,
        entries: list[ModelEntry],
        servers: dict[str, CogServer],
        token: str,
        *,
        latency: float = 0.0,
        heartbeat_s: float = 15.0,
        faults: Faults | None = None,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_kept: int = MAX_KEPT,
        keep_s: float = KEEP_S,
    ) -> None:
        self.entries = {e.ref: e for e in entries}
        self.by_version = {e.version_id: e for e in entries}
        self.servers = servers
        self.token = token
        self.latency = latency
        self.heartbeat_s = heartbeat_s
        self.faults = faults or Faults()
        self.max_body_bytes = max_body_bytes
        self.store = Store(max_kept, keep_s)
        self.backends: dict[str, CogBackend] = {}
        self.tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle (on the event loop) -----------------------------------------------------

    async def startup(self) -> None:
        for ref, entry in self.entries.items():
            self.backends[ref] = CogBackend(entry, self.servers[ref], self.latency)

    async def finish_all(self) -> None:
        """End every prediction still running (at Cog too), so streams and waits return."""
        for prediction in self.store.unfinished():
            await self.backends[prediction.entry.ref].cancel(prediction)
            prediction.finish("failed", error="the emulator stopped before the prediction ended")

    async def shutdown(self) -> None:
        await self.finish_all()
        for task in list(self.tasks):
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*self.tasks, return_exceptions=True)
        for backend in self.backends.values():
            await backend.close()

    def set_latency(self, seconds: float) -> None:
        self.latency = seconds
        for backend in self.backends.values():
            backend.latency = seconds

    # ---- lookups --------------------------------------------------------------------------

    def model(self, owner: str, name: str, what: str = "model") -> ModelEntry:
        entry = self.entries.get(f"{owner}/{name}")
        if entry is None:
            raise NotFound(f"The requested {what} {owner}/{name} does not exist")
        return entry

    def version(self, ref: Any) -> ModelEntry:
        """`version` of a create body: a 64-hex id, `owner/name:id`, or `owner/name`."""
        if not isinstance(ref, str) or not ref:
            raise InvalidInput("version: a version id is required")
        model, _, version_id = ref.rpartition(":") if ":" in ref else ("", "", ref)
        entry = self.by_version.get(version_id) if version_id else None
        if entry is None and "/" in ref and ":" not in ref:
            entry = self.entries.get(ref)
        if entry is None or (model and model != entry.ref):
            raise InvalidInput(f"Invalid version or not permitted: {ref}")
        return entry

    def prediction(self, prediction_id: str) -> Prediction:
        prediction = self.store.get(prediction_id)
        if prediction is None:
            raise NotFound("Not found.")
        return prediction

    # ---- predictions ----------------------------------------------------------------------

    async def body(self, request: Request) -> dict[str, Any]:
        """The request's JSON object, read once, within the size limit."""
        return parse_object(await read_body(request, self.max_body_bytes))

    async def create(
        self, request: Request, entry: ModelEntry, deployment: str | None, body: dict[str, Any]
    ) -> Response:
        retry_after = self.faults.take_throttle()
        if retry_after is not None:
            raise Throttled(retry_after)
        inputs = validate_input(body.get("input"), entry.schema)
        wait = prefer_wait(request.headers.get("prefer"))
        failure = self.faults.take_failure()
        if failure is not None and not failure[1]:
            raise ServerError(failure[0])
        prediction = self.store.add(entry, inputs, deployment)
        task = asyncio.create_task(self.backends[entry.ref].run(prediction))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        if failure is not None:
            raise ServerError(failure[0])  # made and running; the answer is "lost"
        shown = None
        headers = {"Location": prediction.url(base_url(request))}
        if wait is not None:
            headers["Preference-Applied"] = f"wait={wait}"
            if not await prediction.wait_terminal(wait):
                shown = "starting"  # what Replicate reports when the wait runs out (§1.4)
        return JSONResponse(
            prediction.to_json(base_url(request), status=shown), status_code=201, headers=headers
        )

    async def cancel(self, prediction: Prediction) -> None:
        if prediction.terminal:
            return
        await self.backends[prediction.entry.ref].cancel(prediction)
        if not await prediction.wait_terminal(CANCEL_WAIT_S):
            prediction.finish("canceled")  # the API's answer does not wait on a stuck model


# --------------------------------------------------------------------------- request helpers


def base_url(request: Request) -> str:
    return str(request.base_url).rstrip("/")


def prefer_wait(header: str | None) -> int | None:
    """Seconds asked for by `Prefer: wait` (60) or `Prefer: wait=N` (1..60); None without."""
    for part in (header or "").split(","):
        key, _, value = part.strip().partition("=")
        if key.strip().lower() != "wait":
            continue
        if not value.strip():
            return MAX_WAIT_S
        try:
            seconds = int(value.strip())
        except ValueError:
            seconds = 0
        if not 1 <= seconds <= MAX_WAIT_S:
            raise BadRequest(f"Prefer: wait={value.strip()} must name 1 to {MAX_WAIT_S} seconds")
        return seconds
    return None


def _time_param(request: Request, name: str) -> float | None:
    value = request.query_params.get(name)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise BadRequest(f"{name} must be an ISO-8601 time, got {value!r}") from None


def page(items: list[Any], next_url: str | None = None) -> dict[str, Any]:
    return {"next": next_url, "previous": None, "results": items}


# --------------------------------------------------------------------------- the app


def build_app(api: API) -> AccessLog:
    """The Starlette app, logging each request; its lifespan starts and stops the API's
    loop-bound state."""

    def guarded(handler: Callable[[Request], Awaitable[Any]]) -> Handler:
        async def endpoint(request: Request) -> Response:
            try:
                auth.check(request.headers.get("authorization"), api.token)
                result = await handler(request)
            except APIError as e:
                return e.response()
            except Exception as e:  # a bug: still problem JSON, with its cause
                log.exception("emulator error on %s %s", request.method, request.url.path)
                return problem(500, "Internal server error", f"{type(e).__name__}: {e}")
            return result if isinstance(result, Response) else JSONResponse(result)

        return endpoint

    def path(request: Request, key: str) -> str:
        return str(request.path_params[key])

    async def get_model(request: Request) -> Any:
        return api.model(path(request, "owner"), path(request, "name")).model_json()

    async def list_models(request: Request) -> Any:
        return page([e.model_json() for e in api.entries.values()])

    async def list_versions(request: Request) -> Any:
        return page([api.model(path(request, "owner"), path(request, "name")).version_json()])

    async def get_version(request: Request) -> Any:
        entry = api.model(path(request, "owner"), path(request, "name"))
        if path(request, "version") != entry.version_id:
            raise NotFound(f"The requested version does not exist for {entry.ref}")
        return entry.version_json()

    async def create_prediction(request: Request) -> Any:
        body = await api.body(request)
        return await api.create(request, api.version(body.get("version")), None, body)

    async def create_model_prediction(request: Request) -> Any:
        entry = api.model(path(request, "owner"), path(request, "name"))
        return await api.create(request, entry, None, await api.body(request))

    async def create_deployment_prediction(request: Request) -> Any:
        entry = api.model(path(request, "owner"), path(request, "name"), "deployment")
        return await api.create(request, entry, entry.ref, await api.body(request))

    async def get_deployment(request: Request) -> Any:
        entry = api.model(path(request, "owner"), path(request, "name"), "deployment")
        return entry.deployment_json()

    async def list_deployments(request: Request) -> Any:
        return page([e.deployment_json() for e in api.entries.values()])

    async def list_predictions(request: Request) -> Any:
        try:
            offset = max(int(request.query_params.get("cursor", "0")), 0)
        except ValueError:
            raise BadRequest("cursor must be a number") from None
        found, following = api.store.page(
            offset, _time_param(request, "created_after"), _time_param(request, "created_before")
        )
        next_url = None
        if following is not None:
            next_url = str(request.url.include_query_params(cursor=following))
        return page([p.to_json(base_url(request)) for p in found], next_url)

    async def get_prediction(request: Request) -> Any:
        return api.prediction(path(request, "id")).to_json(base_url(request))

    async def cancel_prediction(request: Request) -> Any:
        prediction = api.prediction(path(request, "id"))
        await api.cancel(prediction)
        return prediction.to_json(base_url(request))

    async def stream_prediction(request: Request) -> Response:
        prediction = api.prediction(path(request, "id"))
        if not prediction.entry.streams:
            raise NotFound(f"{prediction.entry.ref} does not support streaming")
        after = sse.resume_after(prediction, request.headers.get("last-event-id"))
        cut = api.faults.take_drop()
        events = sse.follow(
            prediction,
            after,
            api.heartbeat_s,
            (lambda sent: sent >= cut) if cut is not None else (lambda sent: False),
        )
        return StreamingResponse(
            events,
            media_type="text/event-stream",
            headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"},
        )

    async def get_account(request: Request) -> Any:
        owner = next(iter(api.entries.values())).owner if api.entries else "local"
        return {"type": "user", "username": owner, "name": owner, "github_url": None}

    async def not_found(request: Request, exc: Exception) -> Response:
        status = exc.status_code if isinstance(exc, HTTPException) else 404
        title = "Method not allowed" if status == 405 else "Not found"
        detail = f"{request.method} {request.url.path}: no such route in Replicate's API"
        return problem(status, title, detail)

    routes = [
        Route("/v1/account", guarded(get_account)),
        Route("/v1/models", guarded(list_models)),
        Route("/v1/models/{owner}/{name}", guarded(get_model)),
        Route("/v1/models/{owner}/{name}/versions", guarded(list_versions)),
        Route("/v1/models/{owner}/{name}/versions/{version}", guarded(get_version)),
        Route(
            "/v1/models/{owner}/{name}/predictions",
            guarded(create_model_prediction),
            methods=["POST"],
        ),
        Route("/v1/deployments", guarded(list_deployments)),
        Route("/v1/deployments/{owner}/{name}", guarded(get_deployment)),
        Route(
            "/v1/deployments/{owner}/{name}/predictions",
            guarded(create_deployment_prediction),
            methods=["POST"],
        ),
        Route("/v1/predictions", guarded(list_predictions), methods=["GET"]),
        Route("/v1/predictions", guarded(create_prediction), methods=["POST"]),
        Route("/v1/predictions/{id}", guarded(get_prediction)),
        Route("/v1/predictions/{id}/cancel", guarded(cancel_prediction), methods=["POST"]),
        Route("/v1/predictions/{id}/stream", guarded(stream_prediction)),
    ]

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await api.startup()
        try:
            yield
        finally:
            await api.shutdown()

    app = Starlette(
        routes=routes,
        lifespan=lifespan,
        exception_handlers={404: not_found, 405: not_found},
    )
    return AccessLog(app)
