"""The Cog side: one real Cog prediction server per model, driven like Replicate drives it.

A prediction waits its injected latency (Replicate's queue and network, `--latency`), then a
free slot (the Cog server's max concurrency; a 409 from Cog while a slot is being released is
retried, never shown to clients, as Replicate queues), then a READY server. It is then sent as
`PUT /predictions/{id}` with the Replicate id, asking for Cog's server-sent events, which are
translated as they arrive: start → processing, output → an output chunk, log → logs, completed
→ the final state. Cancel is Cog's `POST /predictions/{id}/cancel`. A Cog server that exits or
fails its setup fails the prediction with the reason and where its log is, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ...lmtp.sse import SSEDecoder
from ..cogserver import CogServer
from .catalog import ModelEntry
from .store import Prediction

BUSY_RETRY_S = 0.05
HEALTH_POLL_S = 0.05
_LOG_TAIL = 2000


class CogUnavailable(RuntimeError):
    """The model's Cog server cannot run predictions (it exited or its setup failed)."""


class CogBackend:
    """Runs one model's predictions on its Cog server."""

    def __init__(
        self, entry: ModelEntry, server: CogServer, http: httpx.AsyncClient, latency: float
    ) -> None:
        self.entry = entry
        self.server = server
        self.http = http
        self.latency = latency
        self.slots = asyncio.Semaphore(entry.max_concurrency)
        self.at_cog: set[str] = set()  # ids sent to the Cog server and not finished there
        self.ready = False

    # ---- health ---------------------------------------------------------------------------

    def _exited(self) -> str | None:
        process = self.server.process
        if process is None:
            return "was never started"
        code = process.poll()
        return None if code is None else f"exited with code {code}"

    def _unavailable(self, why: str) -> CogUnavailable:
        tail = self.server.logs()[-_LOG_TAIL:].strip()
        return CogUnavailable(
            f"the Cog server of {self.entry.ref} {why}; its log is {self.server.log_path}"
            + (f"\n{tail}" if tail else "")
        )

    async def _health(self) -> dict[str, Any] | None:
        try:
            answer = await self.http.get(f"{self.server.url}/health-check", timeout=5)
            return answer.json()
        except (httpx.HTTPError, ValueError):
            return None

    async def wait_ready(self) -> None:
        """Return once the server is READY; a STARTING server keeps predictions `starting`."""
        while True:
            if (exited := self._exited()) is not None:
                raise self._unavailable(exited)
            if self.ready:
                return
            health = await self._health() or {}
            status = health.get("status")
            if status in ("READY", "BUSY"):
                self.ready = True
                return
            if status in ("SETUP_FAILED", "DEFUNCT"):
                logs = (health.get("setup") or {}).get("logs") or ""
                raise CogUnavailable(
                    f"the Cog server of {self.entry.ref} failed its setup ({status}):\n{logs}"
                )
            await asyncio.sleep(HEALTH_POLL_S)

    # ---- predictions ----------------------------------------------------------------------

    async def run(self, prediction: Prediction) -> None:
        """Carry a prediction to a terminal state, whatever happens."""
        try:
            if self.latency > 0:
                await prediction.wait_terminal(self.latency)  # a cancel ends the wait early
            async with self.slots:
                if prediction.terminal:
                    return
                await self.wait_ready()
                await self._predict(prediction)
        except CogUnavailable as e:
            prediction.finish("failed", error=str(e))
        except asyncio.CancelledError:
            prediction.finish("failed", error="the emulator stopped before the prediction ended")
            raise
        except Exception as e:  # a bug here must still end the prediction, with its cause
            prediction.finish("failed", error=f"emulator error: {type(e).__name__}: {e}")
        finally:
            self.at_cog.discard(prediction.id)

    async def _predict(self, prediction: Prediction) -> None:
        url = f"{self.server.url}/predictions/{prediction.id}"
        body = {"id": prediction.id, "input": prediction.input}
        headers = {"Accept": "text/event-stream"}
        timeout = httpx.Timeout(10.0, read=None)
        if prediction.terminal:  # canceled while the server was starting
            return
        self.at_cog.add(prediction.id)
        while True:
            try:
                async with self.http.stream(
                    "PUT", url, json=body, headers=headers, timeout=timeout
                ) as answer:
                    if answer.status_code == 409:  # a slot is still being released
                        await answer.aread()
                    else:
                        await self._follow(prediction, answer)
                        return
            except httpx.HTTPError as e:
                why = self._exited() or f"dropped the prediction ({type(e).__name__}: {e})"
                raise self._unavailable(why) from None
            await asyncio.sleep(BUSY_RETRY_S)

    async def _follow(self, prediction: Prediction, answer: httpx.Response) -> None:
        if answer.status_code != 200:
            text = (await answer.aread()).decode(errors="replace")
            prediction.finish(
                "failed", error=f"the Cog server answered {answer.status_code}: {text}"
            )
            return
        if prediction.cancel_requested:  # a cancel that came while the request was on its way
            await self.cancel_at_cog(prediction)
        async for event, data in cog_events(answer):
            if self._apply(prediction, event, data):
                return
        why = self._exited() or "closed the prediction's stream before it completed"
        raise self._unavailable(why)

    def _apply(self, prediction: Prediction, event: str, data: Any) -> bool:
        """Translate one Cog event; True when the prediction has ended."""
        if event == "start":
            prediction.start()
        elif event == "output":
            prediction.add_output(data.get("chunk"))
        elif event == "log":
            prediction.add_logs(str(data.get("data", "")))
        elif event == "metric" and isinstance(data, dict) and "name" in data:
            prediction.metrics[str(data["name"])] = data.get("value")
        elif event == "completed":
            status = data.get("status", "failed")
            if prediction.cancel_requested and status != "succeeded":
                status = "canceled"
            error = data.get("error") if status == "failed" else None
            output = data.get("output") if status == "succeeded" else None
            prediction.finish(status, error=error, output=output, metrics=data.get("metrics"))
            return True
        elif event == "error":
            prediction.finish("failed", error=f"Cog stream error: {json.dumps(data)}")
            return True
        return False

    async def cancel_at_cog(self, prediction: Prediction) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post(
                f"{self.server.url}/predictions/{prediction.id}/cancel", json={}, timeout=10
            )

    async def cancel(self, prediction: Prediction) -> None:
        """Stop a prediction: at the Cog server when it is there, else before it gets there."""
        prediction.cancel_requested = True
        if prediction.id in self.at_cog:
            await self.cancel_at_cog(prediction)
        else:
            prediction.finish("canceled")


async def cog_events(answer: httpx.Response) -> AsyncIterator[tuple[str, Any]]:
    """Cog's own server-sent events: (name, parsed JSON data); keep-alive comments skipped."""
    decoder = SSEDecoder()
    async for line in answer.aiter_lines():
        sse = decoder.feed(line.rstrip("\r\n"))
        if sse is None or not sse.data:
            continue
        try:
            parsed = json.loads(sse.data)
        except ValueError:
            parsed = {"raw": sse.data}
        yield sse.event, parsed
