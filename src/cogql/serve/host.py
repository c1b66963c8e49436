"""The server's engine, loaded in the background so the server can listen (and answer
MODEL_INFO with LMQL's `"<unavailable>"`) while the weights load, and report a failed load to
every client instead of hanging them.

Nothing here touches torch: the engine does its own loading on its own thread; this module only
waits for it on a helper thread and reads plain attributes afterwards.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..lmtp.messages import TOKENIZER, tokenizer_to_wire

if TYPE_CHECKING:
    from ..engine.protocol import LMTPEngine

log = logging.getLogger("cogql.serve")

UNAVAILABLE = "<unavailable>"  # LMQL's model_info while the model loads
SERVER_CAPABILITIES = ("cancel",)  # handled by the server itself, on top of the engine's


class ModelUnavailable(ModelError, RuntimeError):
    """The model failed to load; every op is answered with this message."""


class State(enum.Enum):
    LOADING = "loading"
    READY = "ready"
    FAILED = "failed"


class EngineHost:
    """Owns the engine's lifecycle for a server: background load and description."""

    def __init__(self, source: LMTPEngine | Callable[[], LMTPEngine], *, owns_engine: bool) -> None:
        """`source` is a ready engine (shared, e.g. in tests) or a factory run on a helper
        thread; `owns_engine` says whether stopping the server closes the engine."""
        self._source = source
        self._owns = owns_engine
        self._state = State.LOADING
        self.engine: LMTPEngine | None = None
        self._error: str | None = None
        self.info: dict[str, Any] | None = None
        self._tokenizer: dict[str, Any] | None = None
        self.settled: asyncio.Event | None = None

    def start(self) -> None:
        """Begin loading; the helper thread is a daemon so Ctrl-C during a load exits."""
        loop = asyncio.get_running_loop()
        self.settled = asyncio.Event()
        started = time.perf_counter()

        def load() -> None:
            try:
                engine = self._source() if callable(self._source) else self._source
                described = _describe(engine)
            except BaseException as e:  # reported to clients, never raised into the loop
                log.error("model failed to load: %s: %s", type(e).__name__, e)
                _call_soon(loop, self._fail, f"{type(e).__name__}: {e}")
                return
            _call_soon(loop, self._ready, engine, described, time.perf_counter() - started)

        threading.Thread(target=load, name="cogql-serve-load", daemon=True).start()

    @property
    def state(self) -> State:
        """READY turns FAILED when the engine stops (its thread died): clients get errors at
        once and health checks say so, instead of waiting on an engine that will never answer."""
        if self._state is State.READY and self.engine is not None and self.engine.stopped:
            return State.FAILED
        return self._state

    @property
    def error(self) -> str | None:
        if self._error is None and self.state is State.FAILED:
            assert self.engine is not None
            return f"model unavailable: {self.engine.stopped}"
        return self._error

    @property
    def public_error(self) -> str | None:
        """The error without local paths: what remote clients are told."""
        return without_paths(self.error) if self.error else None

    def health(self) -> tuple[bool, str]:
        """Whether the server can serve (loading counts: ops wait for the model), and its
        state in words, with the reason when it cannot."""
        state = self.state
        described = f"{state.value} ({self.public_error})" if self.error else state.value
        return state is not State.FAILED, described

    def _ready(self, engine: LMTPEngine, described: tuple, seconds: float) -> None:
        self.engine = engine
        self.info, self._tokenizer = described
        self._state = State.READY
        log.info("model %s ready (%.1fs)", self.info.get("model"), seconds)
        assert self.settled is not None
        self.settled.set()

    def _fail(self, message: str) -> None:
        self._error = f"model failed to load: {message}"
        self._state = State.FAILED
        assert self.settled is not None
        self.settled.set()

    def model_info(self, *, with_tokenizer: bool = False) -> Any:
        """The model_info value: LMQL's placeholder while loading; the tokenizer only on request."""
        if self.state is State.FAILED:
            raise ModelUnavailable(self.public_error)
        if self.info is None:
            return UNAVAILABLE
        if with_tokenizer and self._tokenizer is not None:
            return {**self.info, TOKENIZER: self._tokenizer}
        return self.info

    def close(self) -> None:
        """Stop the engine if this host created it (joins its thread: call off the loop)."""
        if self._owns and self.engine is not None:
            self.engine.close()


def _describe(engine: LMTPEngine) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What the server reads from the engine once: model_info (with the server's own
    capabilities added) and the tokenizer hand-out."""
    info = _public_info(engine)
    caps = list(info.get("capabilities", []))
    info["capabilities"] = caps + [c for c in SERVER_CAPABILITIES if c not in caps]
    tokenizer = tokenizer_to_wire(engine.tokenizer) if TOKENIZER in caps else None
    return info, tokenizer


def _public_info(engine: LMTPEngine) -> dict[str, Any]:
    """model_info naming the model, never a local path: the folder the weights came from is
    shown as the model's name (a hub id stays a hub id, a folder becomes its own name)."""
    info = dict(engine.model_info())
    model = info.get("model")
    if isinstance(model, str) and os.sep in model and os.path.exists(model):
        info["model"] = os.path.basename(os.path.abspath(model))
    info = without_paths(info)
    constructor = info.get("constructor")
    if isinstance(constructor, str) and isinstance(info.get("model"), str):
        # from_pretrained names the folder (for a hub id, a snapshot's hash): name the model
        named = f"from_pretrained({info['model']!r})"
        info["constructor"] = re.sub(r"from_pretrained\('[^']*'\)", lambda _: named, constructor)
    return info


def _call_soon(loop: asyncio.AbstractEventLoop, fn: Callable[..., None], *args: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the server stopped while the model loaded
        loop.call_soon_threadsafe(fn, *args)


# an absolute path (POSIX, ~/..., or C:\...) not inside a URL; it ends at a quote or space
_ABSOLUTE = re.compile(r"(?<![\w:/.~-])(?:~?/|[A-Za-z]:[\\/])[^\s'\"]+")


def without_paths(value: Any) -> Any:
    """`value` with every absolute local path replaced by its last part (a model folder by its
    name): MODEL_INFO and errors go to remote clients, who have no business knowing the
    server's file system."""
    if isinstance(value, str):
        return _ABSOLUTE.sub(_last_part, value)
    if isinstance(value, dict):
        return {k: without_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_paths(v) for v in value]
    return value


def _last_part(match: re.Match[str]) -> str:
    return re.split(r"[\\/]", match.group().rstrip("/\\"))[-1] or "/"
