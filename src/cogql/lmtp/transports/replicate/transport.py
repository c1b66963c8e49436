"""The Transport for one Replicate model: sends ops in batches, one prediction per batch (see
the package docstring)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx

from ...messages import Op
from ..base import EventCallback, Handle
from .api import ReplicateTarget, RetryPolicy
from .endpoint import api_token_from, base_url_from
from .model_info import ModelInfoCache
from .session import LoopSession, resolved_targets

__all__ = ["ReplicateTransport", "forget_lookups"]

DEFAULT_BATCH_WINDOW_S = 0.02
DEFAULT_WAIT_S = 60  # Replicate's longest `Prefer: wait`
DEFAULT_IDLE_TIMEOUT_S = 600.0  # covers a cold boot; a prediction silent this long is dropped
MAX_OPS_PER_PREDICTION = 64


class ReplicateTransport:
    """The Transport for one Replicate model (see the package docstring)."""

    def __init__(
        self,
        target: ReplicateTarget,
        *,
        api_token: str | None = None,
        base_url: str | None = None,
        batch_window: float = DEFAULT_BATCH_WINDOW_S,
        wait: int | None = DEFAULT_WAIT_S,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT_S,
        max_ops: int = MAX_OPS_PER_PREDICTION,
        cancel: bool = True,
        info_cache: Path | bool | None = True,
        http_transport: httpx.AsyncBaseTransport | None = None,
        retry: RetryPolicy | None = None,
    ) -> None:
        """`info_cache`: a folder, True for the default one, False/None for memory only.
        `http_transport` is handed to the official client's httpx session (tests use it to
        inject faults). `cancel=False` leaves a prediction running when nothing reads it any
        more, as LMQL does (to compare with its traffic); it is still followed, for its cost."""
        self.target = target
        self.cancel = cancel
        self.token = api_token_from(api_token)
        self.base_url = base_url_from(base_url)
        self.batch_window = max(float(batch_window), 0.0)
        self.wait = max(1, min(int(wait), 60)) if wait else None
        self.idle_timeout = float(idle_timeout)
        self.max_ops = max(int(max_ops), 1)
        folder = ModelInfoCache.default_folder() if info_cache is True else info_cache or None
        self.info_cache = ModelInfoCache(Path(folder) if folder else None)
        self.http_transport = http_transport
        self.retry = retry
        self.url = f"replicate:{target} at {self.base_url}"
        self._session: LoopSession | None = None

    def _current(self) -> LoopSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.loop is not loop:
            self._session = LoopSession(self)
        return self._session

    async def open(self) -> None:
        """Look the model up now, so a wrong name or token fails here, clearly."""
        await self._current().resolve()

    @property
    def version(self) -> str | None:
        resolved = resolved_targets.get((self.base_url, self.target))
        return resolved.version if resolved is not None else None

    @property
    def advertised(self) -> frozenset[str] | None:
        """The extensions the version's schema lists (cogql-built models); None if none."""
        resolved = resolved_targets.get((self.base_url, self.target))
        return resolved.capabilities if resolved is not None else None

    def send(self, ops: list[Op], on_event: EventCallback) -> list[Handle]:
        return self._current().send(ops, on_event)

    async def close(self) -> None:
        """Cancel what is still running and close the HTTP session of this event loop."""
        session, self._session = self._session, None
        if session is not None and session.loop is asyncio.get_running_loop():
            await session.close()


def forget_lookups() -> None:
    """Drop the process's version lookups and in-memory MODEL_INFO answers (for tests)."""
    resolved_targets.clear()
    ModelInfoCache.forget()
