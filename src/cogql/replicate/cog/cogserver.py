"""The real Cog prediction server (coglet) on a built project, without Docker.

`python -m cog.server.http` runs a project from its folder, as the Cog image does from /src,
when three things are right (reference: replicate-api-and-cog.md §3.6): COG_PREDICT_TYPE_STUB
names the predictor (the Dockerfile sets it), the Python environment's bin/ comes first on PATH
(the server spawns its worker as `python` and finds it there), and .cog/openapi_schema.json is
present (validation and streaming; the build writes it). Used by the tests and the benchmark,
and by anything else that wants to run a project locally.

Cog's server has no credentials check and listens on TCP, where every local user can reach it.
`private=True` runs it in a network namespace of its own behind a Unix socket that only this
user can open (cogbridge.py); the emulator does, wherever the kernel lets users make namespaces
(`can_isolate()`), so its token cannot be bypassed by talking to Cog directly.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx

from ...errors import DeployError
from ...lmtp.sse import SSEDecoder
from .cogbridge import free_port

PREDICTOR_REF = "predict.py:Predictor"
BUSY_RETRY_S = 10.0
BRIDGE = Path(__file__).with_name("cogbridge.py")
UNSHARE = ("unshare", "--user", "--map-root-user", "--net")


class CogServerError(DeployError, RuntimeError):
    """The server did not become ready (setup failed, or it exited); carries its logs."""


@functools.cache
def can_isolate() -> bool:
    """Whether this machine lets this user run a Cog server in a private network namespace
    (util-linux's `unshare` and unprivileged user namespaces)."""
    if shutil.which(UNSHARE[0]) is None:
        return False
    check = [*UNSHARE, sys.executable, "-I", str(BRIDGE), "--check"]
    try:
        return subprocess.run(check, capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


class CogServer:
    """One coglet server process for a project folder: on a 127.0.0.1 port, or `private`."""

    def __init__(
        self,
        project: Path,
        *,
        port: int | None = None,
        max_concurrency: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
        private: bool = False,
    ) -> None:
        self.project = Path(project)
        self.private = private
        self.socket_path: Path | None = None
        if private:
            self.socket_path = Path(tempfile.mkdtemp(prefix="cogql-cog-")) / "cog.sock"
            self.port, self.url = 0, "http://cog"
        else:
            self.port = port or free_port()
            self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = log_path or self.project.parent / f".{self.project.name}.cog-server.log"
        bin_dir = str(Path(sys.executable).parent)
        self.env = {
            **os.environ,
            "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
            "COG_PREDICT_TYPE_STUB": PREDICTOR_REF,
            "PORT": str(self.port),
            "PYTHONUNBUFFERED": "1",
            **({"COG_MAX_CONCURRENCY": str(max_concurrency)} if max_concurrency else {}),
            **(env or {}),
        }
        self.process: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0
        self._lock = threading.Lock()
        self._closed = False
        self._client: httpx.Client | None = None

    @property
    def address(self) -> str:
        """Where it listens, in words (for logs)."""
        if self.socket_path is not None:
            return f"unix:{self.socket_path} (a private network namespace)"
        return self.url

    def transport(self) -> httpx.AsyncHTTPTransport:
        """An async transport that reaches this server (the emulator's client uses it)."""
        uds = str(self.socket_path) if self.socket_path is not None else None
        return httpx.AsyncHTTPTransport(uds=uds)

    def _command(self) -> list[str]:
        serve = [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"]
        if self.socket_path is None:
            return serve
        return [*UNSHARE, sys.executable, "-I", str(BRIDGE), str(self.socket_path), "--", *serve]

    def _launch(self, note: str | None = None) -> None:
        self.started_at = time.perf_counter()
        with self.log_path.open("ab" if note else "wb") as log:
            if note:
                log.write(f"\n---- cogql: {note} ----\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                self._command(),
                cwd=self.project,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group: the worker goes with it
            )

    def _terminate(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def start(self) -> CogServer:
        with self._lock:
            self._closed = False
            if self.socket_path is not None and not self.socket_path.parent.exists():
                self.socket_path.parent.mkdir(mode=0o700)  # started again after stop()
            self._launch()
        return self

    def restart(self, why: str) -> bool:
        """Stop it (worker included) and start it again, its log going on in the same file;
        False when it was stopped for good meanwhile (`stop()`), so nothing was started."""
        with self._lock:
            if self._closed:
                return False
            self._terminate()
            self._launch(f"restarting the Cog server: {why}")
            return True

    @property
    def stopped(self) -> bool:
        """True once `stop()` was called (and not `start()` since)."""
        return self._closed

    def stop(self) -> None:
        with self._lock:
            self._closed = True
            self._terminate()
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.socket_path is not None:
            shutil.rmtree(self.socket_path.parent, ignore_errors=True)

    def __enter__(self) -> CogServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- health -------------------------------------------------------------------------

    def _http(self) -> httpx.Client:
        if self._client is None:
            uds = str(self.socket_path) if self.socket_path is not None else None
            self._client = httpx.Client(base_url=self.url, transport=httpx.HTTPTransport(uds=uds))
        return self._client

    def health(self) -> dict[str, Any] | None:
        try:
            return self._http().get("/health-check", timeout=5).json()
        except (httpx.HTTPError, ValueError):
            return None

    def logs(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def wait_ready(self, timeout: float = 300.0) -> float:
        """Seconds from start() to READY; raises CogServerError on SETUP_FAILED or exit."""
        assert self.process is not None, "start() first"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise CogServerError(
                    f"the Cog server exited ({self.process.returncode}):\n{self.logs()}"
                )
            health = self.health()
            status = (health or {}).get("status")
            if status == "READY":
                return time.perf_counter() - self.started_at
            if status in ("SETUP_FAILED", "DEFUNCT"):
                raise CogServerError(
                    f"Cog setup failed ({status}):\n{health.get('setup', {}).get('logs', '')}"  # type: ignore[union-attr]
                )
            time.sleep(0.05)
        raise CogServerError(f"the Cog server was not READY after {timeout} s:\n{self.logs()}")

    # ---- predictions --------------------------------------------------------------------

    def _send(
        self, method: str, path: str, body: Any, headers: dict[str, str], timeout: float
    ) -> httpx.Response:
        """Send a request; a 409 (every slot busy, e.g. the previous prediction is still being
        released) is retried for a few seconds, as Replicate's queue would."""
        deadline = time.monotonic() + BUSY_RETRY_S
        while True:
            answer = self._http().request(method, path, json=body, headers=headers, timeout=timeout)
            if answer.status_code != 409 or time.monotonic() > deadline:
                return answer
            time.sleep(0.02)

    def predict(self, inputs: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """A synchronous prediction: the final JSON (status, output list, error, metrics)."""
        answer = self._send("POST", "/predictions", {"input": inputs}, {}, timeout)
        try:
            data = answer.json()
        except ValueError:
            data = {"error": answer.text}
        return data if answer.status_code == 200 else {"http_status": answer.status_code, **data}

    def start_async(self, prediction_id: str, inputs: dict[str, Any]) -> int:
        """Start a prediction without waiting (Cog answers 202); returns the HTTP status."""
        headers = {"Prefer": "respond-async"}
        path = f"/predictions/{prediction_id}"
        return self._send("PUT", path, {"input": inputs}, headers, 30).status_code

    def cancel(self, prediction_id: str) -> int:
        """Cancel a running prediction (200), or 404 when there is none by that id."""
        return self._send("POST", f"/predictions/{prediction_id}/cancel", {}, {}, 30).status_code

    def stream(self, inputs: dict[str, Any], timeout: float = 120.0) -> Iterator[tuple[str, Any]]:
        """Server-sent events of one prediction: (event, parsed data), as they arrive."""
        deadline = time.monotonic() + BUSY_RETRY_S
        headers = {"Accept": "text/event-stream"}
        while True:
            with self._http().stream(
                "POST", "/predictions", json={"input": inputs}, headers=headers, timeout=timeout
            ) as answer:
                if answer.status_code == 409 and time.monotonic() < deadline:
                    time.sleep(0.02)
                    continue
                answer.raise_for_status()
                decoder = SSEDecoder()
                for line in answer.iter_lines():
                    sse = decoder.feed(line.rstrip("\r\n"))
                    if sse is not None and sse.data:
                        yield sse.event, json.loads(sse.data)
                        if sse.event == "completed":
                            return
                return
