"""The emulator as one object: Cog servers, the HTTP app on a loopback port, start and stop."""

from __future__ import annotations

import asyncio
import errno
import socket
from collections.abc import Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ... import http_thread
from ...errors import DeployError
from ...http_thread import ServedInThread
from ..cog.cogserver import CogServer, CogServerError, can_isolate
from .auth import new_token
from .body import MAX_BODY_BYTES
from .catalog import ModelEntry, ProjectError, check_unique, find_projects, load_entry
from .catalog import max_concurrency as project_concurrency
from .faults import Faults
from .routes import API, build_app
from .store import KEEP_S, MAX_KEPT

STARTUP_TIMEOUT_S = 30.0


class EmulatorError(DeployError, RuntimeError):
    """The emulator could not start: no project, a Cog setup that failed, a port in use."""


class PortInUseError(EmulatorError):
    """The API's port is held by another process: checked before any Cog server starts."""


def listening_socket(host: str, port: int) -> socket.socket:
    """A socket listening on host:port (0: a free port), or an EmulatorError saying why not."""
    try:
        return http_thread.listening_socket(host, port)
    except OSError as e:
        why = http_thread.why_not_listening(host, port, e)
        raise (PortInUseError if e.errno == errno.EADDRINUSE else EmulatorError)(why) from None


class ReplicateEmulator:
    """Replicate's HTTP API on loopback, in front of one real Cog server per built project.

    Usage (tests, benchmarks, the `replicate:` transport's tests)::

        from cogql.replicate.emulator import ReplicateEmulator

        with ReplicateEmulator(["work/sentiment"], latency=0.5) as emu:
            emu.base_url    # "http://127.0.0.1:PORT": REPLICATE_BASE_URL for replicate 1.x
            emu.token       # the API token it accepts (random unless given)
            emu.env         # {"REPLICATE_API_TOKEN": ..., "REPLICATE_BASE_URL": ...}
            emu.models      # ["OWNER/NAME", ...] (dest_prefix's owner, else "local")
            emu.version("OWNER/NAME")        # the 64-hex version id (a content hash)
            replicate.Client(api_token=emu.token, base_url=emu.base_url).run(...)

    `workdirs` are project folders (work/NAME, from `cogql replicate build`) or folders of them
    (work/). Entering starts the Cog servers and the app in a background thread (its own event
    loop) on a free port (or `port`), and by default returns once every Cog server is READY
    (`wait_ready=False` returns at once; predictions then stay `starting` until their server
    is ready, as on a cold boot). Exiting ends unfinished predictions as failed, stops the app,
    then the Cog servers. `latency` seconds are added to every prediction while it is
    `starting` (Replicate's queueing and network; `emu.latency = s` changes it while
    running). `heartbeat_s` is the SSE keep-alive period. Request bodies over `max_body_bytes`
    are refused (413); finished predictions are forgotten past `max_kept` of them or `keep_s`
    seconds after they ended. With `isolate` (the default wherever the kernel allows it,
    `cogql.replicate.cog.cogserver.can_isolate()`), each Cog server runs in a network namespace of
    its own, reachable only through a Unix socket that only this user can open; `isolate=False`
    puts it on a loopback port, where any local user can reach it; `isolate=True` where it is
    not possible is an EmulatorError.

    For robustness tests: `faults.throttle_creates(n, retry_after)` (429s),
    `faults.fail_creates(n, status, after_create=...)` (5xx, with or without the prediction
    made), `faults.drop_streams(after_events, times)` (SSE cut before `done`), and
    `cog_server(ref)` (the CogServer; stop it to kill the model mid-prediction).
    `predictions()` lists every prediction made (count them, read their metrics).
    """

    def __init__(
        self,
        workdirs: Iterable[str | Path],
        *,
        token: str | None = None,
        latency: float = 0.0,
        host: str = "127.0.0.1",
        port: int = 0,
        heartbeat_s: float = 15.0,
        wait_ready: bool = True,
        ready_timeout: float = 600.0,
        max_body_bytes: int = MAX_BODY_BYTES,
        max_kept: int = MAX_KEPT,
        keep_s: float = KEEP_S,
        isolate: bool | None = None,
    ) -> None:
        self.workdirs = [Path(w) for w in workdirs]
        self.token = token or new_token()
        self._latency = latency
        self.host = host
        self.port = port
        self.heartbeat_s = heartbeat_s
        self.wait_ready = wait_ready
        self.ready_timeout = ready_timeout
        self.max_body_bytes = max_body_bytes
        self.max_kept = max_kept
        self.keep_s = keep_s
        self.isolate = isolate
        self.faults = Faults()
        self.entries: list[ModelEntry] = []
        self.servers: dict[str, CogServer] = {}
        self._http: ServedInThread | None = None
        self._api: API | None = None
        self._booting: list[CogServer] = []
        self._socket: socket.socket | None = None  # bound first, handed to the HTTP server

    # ---- what clients need ----------------------------------------------------------------

    @property
    def base_url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def latency(self) -> float:
        """Seconds each new prediction stays `starting`; settable while running."""
        return self._latency

    @latency.setter
    def latency(self, seconds: float) -> None:
        self._latency = seconds
        if self._api is not None:
            self._api.set_latency(seconds)

    @property
    def env(self) -> dict[str, str]:
        return {"REPLICATE_API_TOKEN": self.token, "REPLICATE_BASE_URL": self.base_url}

    @property
    def models(self) -> list[str]:
        return [e.ref for e in self.entries]

    def version(self, ref: str) -> str:
        return self._entry(ref).version_id

    def predictions(self) -> list[dict[str, Any]]:
        """Every prediction made so far, oldest first, as the API shows them (for tests and
        benchmarks that count predictions, their status and predict_time)."""
        loop, api = self._http.loop if self._http else None, self._api
        if loop is None or api is None or loop.is_closed():
            return []

        async def snapshot() -> list[dict[str, Any]]:
            return [p.to_json(self.base_url) for p in api.store.all()]

        return asyncio.run_coroutine_threadsafe(snapshot(), loop).result(timeout=10)

    def cog_server(self, ref: str) -> CogServer:
        return self.servers[self._entry(ref).ref]

    def _entry(self, ref: str) -> ModelEntry:
        for entry in self.entries:
            if entry.ref == ref:
                return entry
        raise KeyError(f"no model {ref} here; models: {', '.join(self.models)}")

    # ---- start / stop ---------------------------------------------------------------------

    def start(self) -> ReplicateEmulator:
        try:
            projects = find_projects(self.workdirs)
            self._socket = listening_socket(self.host, self.port)  # before any Cog server
            self.port = self._socket.getsockname()[1]
            if self.isolate is None:
                self.isolate = can_isolate()
            elif self.isolate and not can_isolate():
                raise EmulatorError(
                    "cannot isolate the Cog servers: this machine does not let this user make a "
                    "network namespace (`unshare --user --net` fails); pass isolate=False"
                )
            servers = self._booting = [
                CogServer(p, max_concurrency=project_concurrency(p), private=self.isolate).start()
                for p in projects
            ]
            with ThreadPoolExecutor(4) as pool:  # hashing weights while the servers boot
                self.entries = list(pool.map(load_entry, projects))
            check_unique(self.entries)
            self.servers = {e.ref: s for e, s in zip(self.entries, servers, strict=True)}
            self._serve_http()
            if self.wait_ready:
                for server in servers:
                    server.wait_ready(self.ready_timeout)
        except BaseException as e:
            self.stop()
            if isinstance(e, ProjectError | CogServerError | OSError):
                raise EmulatorError(str(e)) from e
            raise
        return self

    def _serve_http(self) -> None:
        sock, self._socket = self._socket, None
        assert sock is not None
        self._api = API(
            self.entries,
            self.servers,
            self.token,
            latency=self.latency,
            heartbeat_s=self.heartbeat_s,
            faults=self.faults,
            max_body_bytes=self.max_body_bytes,
            max_kept=self.max_kept,
            keep_s=self.keep_s,
        )
        self._http = ServedInThread(
            build_app(self._api),
            sock,
            name="cogql-replicate-emulator",
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        if not self._http.start(STARTUP_TIMEOUT_S):
            raise EmulatorError(f"the HTTP server did not start: {self._http.failure!r}")

    def stop(self) -> None:
        if self._http is not None:
            self._finish_predictions()
            self._http.stop()
            self._http = None
        if self._socket is not None:  # bound, but the HTTP server never took it
            self._socket.close()
            self._socket = None
        for server in self._booting:
            server.stop()
        self._booting, self.servers = [], {}

    def _finish_predictions(self) -> None:
        """End open streams and waits first, so the HTTP server can close its connections."""
        http, api = self._http, self._api
        if http is None or http.loop is None or api is None or not http.alive:
            return
        loop = http.loop
        future = asyncio.run_coroutine_threadsafe(api.finish_all(), loop)
        try:
            future.result(timeout=15)
        except Exception:
            future.cancel()

    def __enter__(self) -> ReplicateEmulator:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()
