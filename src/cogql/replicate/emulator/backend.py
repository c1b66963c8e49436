"""The Cog side: one real Cog prediction server per model, driven like Replicate drives it.

A prediction waits its injected latency (Replicate's queue and network, `--latency`), then a
free slot (the Cog server's max concurrency), then a READY server. It is then sent as
`PUT /predictions/{id}` with the Replicate id, asking for Cog's server-sent events, which are
translated as they arrive: start → processing, output → an output chunk, log → logs, completed
→ the final state. Cancel is Cog's `POST /predictions/{id}/cancel`.

Cog answers 409 while a slot is being released: retried with bounded exponential backoff,
never shown to clients (Replicate queues), and never after the prediction was cancelled. A
server whose worker or process dies after it was ready (its /health-check says UNHEALTHY or
DEFUNCT, or it exited) is restarted, once however many predictions noticed: the prediction it
was running fails saying so, and the ones waiting run when it is READY again. A server that
fails its setup, or cannot be restarted, fails every prediction with the reason and where its
log is, never a hang.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx

from ...errors import DeployError
from ...lmtp.sse import SSEDecoder
from ..cog.cogserver import CogServer
from .catalog import ModelEntry
from .store import Prediction

HEALTH_POLL_S = 0.05
BACKOFF_FIRST_S = 0.05
BACKOFF_MAX_S = 2.0
BUSY_LIMIT_S = 60.0  # 409s this long from a server that says it is healthy: it lost capacity
CONNECT_ATTEMPTS = 5
RESTART_TIMEOUT_S = 600.0
WORKER_CRASHED = "Worker crashed"  # Cog's error for a prediction whose worker died
_LOG_TAIL = 2000


class CogUnavailable(DeployError, RuntimeError):
    """The model's Cog server cannot run predictions (it exited or its setup failed)."""


class Backoff:
    """Delays that double from `first` up to `most`."""

    def __init__(self, first: float = BACKOFF_FIRST_S, most: float = BACKOFF_MAX_S) -> None:
        self.first, self.most, self._next = first, most, first

    def delay(self) -> float:
        delay, self._next = self._next, min(self._next * 2, self.most)
        return delay

    def reset(self) -> None:
        self._next = self.first


class CogBackend:
    """Runs one model's predictions on its Cog server, and restarts the server if it dies."""

    def __init__(self, entry: ModelEntry, server: CogServer, latency: float) -> None:
        self.entry = entry
        self.server = server
        self.http = httpx.AsyncClient(
            base_url=server.url, transport=server.transport(), timeout=httpx.Timeout(30.0)
        )
        self.latency = latency
        self.slots = asyncio.Semaphore(entry.max_concurrency)
        self.at_cog: set[str] = set()  # ids Cog accepted and has not finished
        self.ready = False
        self.was_ready = False  # READY once: from then on a dead server is restarted
        self.restarts = 0
        self.broken: str | None = None  # why no prediction can run any more
        self._recovery: asyncio.Task[None] | None = None

    async def close(self) -> None:
        if self._recovery is not None:
            self._recovery.cancel()
        await self.http.aclose()

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
            answer = await self.http.get("/health-check", timeout=5)
            return answer.json()
        except (httpx.HTTPError, ValueError):
            return None

    async def _state(self) -> tuple[str, str]:
        """(ready | starting | crashed | failed, why): `crashed` is a server that was READY
        and is not any more (restart it); `failed` is one that never got there."""
        if (exited := self._exited()) is not None:
            return ("crashed" if self.was_ready else "failed"), exited
        health = await self._health()
        if health is None and self.ready:  # it answered before: is it going away?
            process = self.server.process
            with contextlib.suppress(Exception):
                await asyncio.to_thread(process.wait, 1.0)  # type: ignore[union-attr]
            return "crashed", self._exited() or "stopped answering its health check"
        status = (health or {}).get("status")
        if status in ("READY", "BUSY"):
            return "ready", ""
        if status == "SETUP_FAILED" or (status == "DEFUNCT" and not self.was_ready):
            logs = ((health or {}).get("setup") or {}).get("logs") or ""
            return "failed", f"failed its setup ({status}):\n{logs}"
        if status in ("UNHEALTHY", "DEFUNCT"):
            detail = (health or {}).get("user_healthcheck_error")
            return "crashed", f"reports {status} on its health check" + (
                f" ({detail})" if detail else ""
            )
        return "starting", ""

    async def wait_ready(self, prediction: Prediction | None = None) -> None:
        """Return once the server is READY (or `prediction` ended meanwhile); a STARTING server
        keeps predictions `starting`, a crashed one is restarted first."""
        while True:
            if self._recovery is not None:
                await asyncio.shield(self._recovery)
                continue
            if self.broken is not None:
                raise CogUnavailable(self.broken)
            if self.ready and self._exited() is None:
                return
            state, why = await self._state()
            if state == "ready":
                self.ready = self.was_ready = True
                return
            if state == "failed":
                raise self._unavailable(why)
            if state == "crashed":
                self.recover(why)
                continue
            if prediction is not None and prediction.terminal:
                return
            await asyncio.sleep(HEALTH_POLL_S)

    def recover(self, why: str) -> None:
        """Restart the server in the background, once however many predictions noticed."""
        self.ready = False
        if self._recovery is None and self.broken is None:
            self._recovery = asyncio.create_task(self._restart(why))

    async def _restart(self, why: str) -> None:
        ref = self.entry.ref
        try:
            if not await asyncio.to_thread(self.server.restart, why):
                self.broken = f"the Cog server of {ref} was stopped ({why})"
                return
            deadline = time.monotonic() + RESTART_TIMEOUT_S
            while (state := await self._state())[0] != "ready":
                if state[0] in ("failed", "crashed"):
                    raise self._unavailable(state[1])
                if time.monotonic() > deadline:
                    raise self._unavailable(
                        f"was not READY {RESTART_TIMEOUT_S:g} s after a restart"
                    )
                await asyncio.sleep(HEALTH_POLL_S)
            self.ready = True
            self.restarts += 1
        except CogUnavailable as e:
            self.broken = (
                f"the Cog server of {ref} {why}, and restarting it failed; every prediction of "
                f"{ref} fails until the emulator is restarted. {e}"
            )
        finally:
            self._recovery = None

    # ---- predictions ----------------------------------------------------------------------

    async def run(self, prediction: Prediction) -> None:
        """Carry a prediction to a terminal state, whatever happens."""
        try:
            if self.latency > 0:
                await prediction.wait_terminal(self.latency)  # a cancel ends the wait early
            async with self.slots:
                if prediction.terminal:
                    return
                await self.wait_ready(prediction)
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
        body = {"id": prediction.id, "input": prediction.input}
        backoff, busy_since, refused = Backoff(), None, 0
        while not prediction.terminal:  # a cancel stops the retries
            request = self.http.build_request(
                "PUT",
                f"/predictions/{prediction.id}",
                json=body,
                headers={"Accept": "text/event-stream"},
                timeout=httpx.Timeout(10.0, read=None),
            )
            try:
                answer = await self.http.send(request, stream=True)
            except httpx.HTTPError as e:
                refused += 1
                if refused >= CONNECT_ATTEMPTS:
                    why = f"refused the prediction ({type(e).__name__}: {e})"
                    raise self._unavailable(why) from None
                await self._after_failure(prediction, backoff)
                continue
            try:
                if answer.status_code != 409:
                    self.at_cog.add(prediction.id)
                    await self._follow(prediction, answer)
                    return
                await answer.aread()
            finally:
                await answer.aclose()
            busy_since = busy_since or time.monotonic()
            if time.monotonic() - busy_since > BUSY_LIMIT_S:
                self.recover(f"answered 409 (at capacity) for {BUSY_LIMIT_S:g} s")
                busy_since = None
            await self._after_failure(prediction, backoff)

    async def _after_failure(self, prediction: Prediction, backoff: Backoff) -> None:
        """Between two tries: restart a crashed server, else back off (a cancel cuts it)."""
        state, why = await self._state()
        if state == "crashed":
            self.recover(why)
        if self._recovery is not None or state != "ready":
            backoff.reset()
            await self.wait_ready(prediction)
        else:
            await prediction.wait_terminal(backoff.delay())

    async def _follow(self, prediction: Prediction, answer: httpx.Response) -> None:
        if answer.status_code != 200:
            text = (await answer.aread()).decode(errors="replace")
            prediction.finish(
                "failed", error=f"the Cog server answered {answer.status_code}: {text}"
            )
            return
        if prediction.cancel_requested:  # a cancel that came while the request was on its way
            await self.cancel_at_cog(prediction)
        try:
            async for event, data in cog_events(answer):
                if event == "completed":
                    await self._complete(prediction, data)
                    return
                if self._apply(prediction, event, data):
                    return
        except httpx.HTTPError:
            pass
        await self._lost(prediction, "closed the prediction's stream before it completed")

    async def _lost(self, prediction: Prediction, otherwise: str) -> None:
        """The prediction's stream broke: fail it, and restart the server if it died."""
        state, why = await self._state()
        if state == "crashed":
            self.recover(why)
            why = f"{why} during the prediction, and is being restarted"
        raise self._unavailable(why if state in ("crashed", "failed") else otherwise)

    async def _complete(self, prediction: Prediction, data: Any) -> None:
        status = data.get("status", "failed")
        if prediction.cancel_requested and status != "succeeded":
            status = "canceled"
        error = data.get("error") if status == "failed" else None
        if status == "failed":
            state, why = await self._state()
            if state == "crashed" or error == WORKER_CRASHED:
                self.recover(why or "lost its worker")
                error = (
                    f"the Cog server of {self.entry.ref} lost its worker during the prediction "
                    f"(Cog: {error}; {why or 'its worker process died'}); it is being "
                    f"restarted. Its log is {self.server.log_path}"
                )
        output = data.get("output") if status == "succeeded" else None
        prediction.finish(status, error=error, output=output, metrics=data.get("metrics"))

    def _apply(self, prediction: Prediction, event: str, data: Any) -> bool:
        """Translate one Cog event before `completed`; True when the prediction has ended."""
        if event == "start":
            prediction.start()
        elif event == "output":
            prediction.add_output(data.get("chunk"))
        elif event == "log":
            prediction.add_logs(str(data.get("data", "")))
        elif event == "metric" and isinstance(data, dict) and "name" in data:
            prediction.metrics[str(data["name"])] = data.get("value")
        elif event == "error":
            prediction.finish("failed", error=f"Cog stream error: {json.dumps(data)}")
            return True
        return False

    async def cancel_at_cog(self, prediction: Prediction) -> None:
        with contextlib.suppress(httpx.HTTPError):
            await self.http.post(f"/predictions/{prediction.id}/cancel", json={}, timeout=10)

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
