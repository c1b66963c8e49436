"""The real Cog prediction server (coglet) on a built project, without Docker.

`python -m cog.server.http` runs a project from its folder, as the Cog image does from /src,
when three things are right (reference: replicate-api-and-cog.md §3.6): COG_PREDICT_TYPE_STUB
names the predictor (the Dockerfile sets it), the Python environment's bin/ comes first on PATH
(the server spawns its worker as `python` and finds it there), and .cog/openapi_schema.json is
present (validation and streaming; the build writes it). Used by the tests and the benchmark,
and by anything else that wants to run a project locally.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..lmtp.sse import SSEDecoder

PREDICTOR_REF = "predict.py:Predictor"
BUSY_RETRY_S = 10.0


class CogServerError(RuntimeError):
    """The server did not become ready (setup failed, or it exited); carries its logs."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class CogServer:
    """One coglet server process on 127.0.0.1, for a project folder."""

    def __init__(
        self,
        project: Path,
        *,
        port: int | None = None,
        max_concurrency: int | None = None,
        env: dict[str, str] | None = None,
        log_path: Path | None = None,
    ) -> None:
        self.project = Path(project)
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

    def start(self) -> CogServer:
        self.started_at = time.perf_counter()
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "cog.server.http", "--host", "127.0.0.1"],
                cwd=self.project,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,  # one process group: the worker goes with it
            )
        return self

    def health(self) -> dict[str, Any] | None:
        try:
            with urllib.request.urlopen(f"{self.url}/health-check", timeout=5) as r:
                return json.loads(r.read())
        except (OSError, ValueError):
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

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=10)

    def __enter__(self) -> CogServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # ---- predictions --------------------------------------------------------------------

    def _open(self, request: urllib.request.Request, timeout: float) -> Any:
        """Open a request; a 409 (every slot busy, e.g. the previous prediction is still being
        released) is retried for a few seconds, as Replicate's queue would."""
        deadline = time.monotonic() + BUSY_RETRY_S
        while True:
            try:
                return urllib.request.urlopen(request, timeout=timeout)
            except urllib.error.HTTPError as e:
                if e.code != 409 or time.monotonic() > deadline:
                    raise
                e.close()
            time.sleep(0.02)

    def _send(self, request: urllib.request.Request, timeout: float) -> tuple[int, bytes]:
        try:
            with self._open(request, timeout) as r:
                return int(r.status), r.read()
        except urllib.error.HTTPError as e:
            return int(e.code), e.read()

    def predict(self, inputs: dict[str, Any], timeout: float = 120.0) -> dict[str, Any]:
        """A synchronous prediction: the final JSON (status, output list, error, metrics)."""
        request = urllib.request.Request(
            f"{self.url}/predictions",
            data=json.dumps({"input": inputs}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        status, body = self._send(request, timeout)
        try:
            data = json.loads(body)
        except ValueError:
            data = {"error": body.decode(errors="replace")}
        return data if status == 200 else {"http_status": status, **data}

    def _post(self, path: str, body: dict[str, Any], headers: dict[str, str], method: str) -> int:
        request = urllib.request.Request(
            f"{self.url}{path}",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", **headers},
            method=method,
        )
        return self._send(request, 30)[0]

    def start_async(self, prediction_id: str, inputs: dict[str, Any]) -> int:
        """Start a prediction without waiting (Cog answers 202); returns the HTTP status."""
        return self._post(
            f"/predictions/{prediction_id}", {"input": inputs}, {"Prefer": "respond-async"}, "PUT"
        )

    def cancel(self, prediction_id: str) -> int:
        """Cancel a running prediction (200), or 404 when there is none by that id."""
        return self._post(f"/predictions/{prediction_id}/cancel", {}, {}, "POST")

    def stream(self, inputs: dict[str, Any], timeout: float = 120.0) -> Iterator[tuple[str, Any]]:
        """Server-sent events of one prediction: (event, parsed data), as they arrive."""
        request = urllib.request.Request(
            f"{self.url}/predictions",
            data=json.dumps({"input": inputs}).encode(),
            headers={"Content-Type": "application/json", "Accept": "text/event-stream"},
            method="POST",
        )
        with self._open(request, timeout) as r:
            decoder = SSEDecoder()
            for raw in r:
                sse = decoder.feed(raw.decode().rstrip("\r\n"))
                if sse is not None and sse.data:
                    yield sse.event, json.loads(sse.data)
                    if sse.event == "completed":
                        return
