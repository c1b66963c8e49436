"""The Cog predictor of a cogql-built Replicate model: LMTP ops in, LMTP lines out.

Wire behaviour follows LMQL's Replicate models (reference: lmtp-and-replicate-tunnel.md §2.3):
the one input `ops_batch_json` holds `[[TYPE, payload], ...]`; ops get local stream ids 0..n-1
and the output lines carry each op's original id back (even a missing one, as null); each yield
is one `TOKEN {...}\\n` or `MSG {...}\\n` line; the prediction ends when every stream has ended.
Where LMQL hangs or misleads, this predictor does not:

- `setup()` loads the model completely, on the engine config.json names (cogql's or vLLM's,
  opened through `open_engine` and used only through the `LMTPEngine` protocol), and runs a
  warm-up step, so a load failure fails the Cog setup with its cause (LMQL returned before
  loading, and a failed load hung every prediction) and the first prediction is as fast as the
  tenth;
- should the engine ever stop, Cog's health check reports UNHEALTHY with the reason
  (`healthcheck`), and predictions fail with it at once instead of waiting;
- an empty batch ends at once; a malformed batch (bad JSON, not a list of [TYPE, {...}]) fails
  the prediction before any work with a message that says what was expected;
- one bad op (missing prompt, unknown command, empty SCORE) gets its own error MSG and never
  poisons the others; ops arriving together go to the engine together, so SCOREs batch.

cogql's LMTP extensions (stop strings, grammars, seeds, min_tokens, capabilities in MODEL_INFO)
come from the engine, so the Cog path has every feature the in-process path has.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import queue
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any, ClassVar

from cog import BaseRunner

from ...engine.protocol import EngineStopped, LMTPEngine
from ...engine.sink import LoopSink
from ...errors import ModelError, TransportError
from ...lmtp.messages import (
    ErrorEvent,
    Event,
    Generate,
    Op,
    ProtocolError,
    Score,
    event_to_wire,
    is_terminal,
    op_from_wire,
    renumbered,
    replicate_line,
)
from .layout import BUILD_INFO, CHECKPOINTS, MODEL_ARGS
from .modelargs import EngineSpec, engine_spec

_POLL_S = 1.0


class BatchError(TransportError, ValueError):
    """`ops_batch_json` is not a JSON list of [TYPE, {payload}] pairs; the prediction fails."""


class PredictorSetupError(ModelError, RuntimeError):
    """The model could not be loaded; Cog reports setup as failed, with this message."""


def parse_batch(text: str) -> list[tuple[str, dict[str, Any]]]:
    """Validate the whole batch before any op runs."""
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise BatchError(
            f"ops_batch_json is not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); "
            'expected [["GENERATE", {...}], ...]'
        ) from None
    if not isinstance(data, list):
        raise BatchError(
            f"ops_batch_json must be a JSON array of [TYPE, payload] pairs, not "
            f"{type(data).__name__}"
        )
    ops = []
    for i, item in enumerate(data):
        if (
            not isinstance(item, list)
            or len(item) != 2
            or not isinstance(item[0], str)
            or not isinstance(item[1], dict)
        ):
            shown = json.dumps(item)
            shown = shown if len(shown) <= 80 else shown[:77] + "..."
            raise BatchError(
                f"ops_batch_json[{i}] must be [TYPE, {{payload}}] with TYPE a string such as "
                f'"GENERATE" and payload an object; got {shown}'
            )
        ops.append((item[0], item[1]))
    return ops


class _Demux:
    """Maps engine events (local ids) back to the client's ids and tracks open streams."""

    def __init__(self, batch: list[tuple[str, dict[str, Any]]]) -> None:
        parsed: list[Op] = []
        self.rejected: list[str] = []
        for kind, payload in batch:
            try:
                sid = payload.get("stream_id")  # absent: null, as LMQL's predictor has it
                parsed.append(
                    op_from_wire(kind, {**payload, "stream_id": sid, "model": CHECKPOINTS})
                )
            except ProtocolError as e:
                self.rejected.append(_error_line(payload.get("stream_id"), str(e)))
        # like LMQL, streams get local ids 0..n-1; the model is "checkpoints" whatever was sent
        self.ops = renumbered(parsed, itertools.count().__next__)
        self.original = [op.stream_id for op in parsed]
        self.open = {op.stream_id for op in self.ops}

    def line(self, event: Event) -> str | None:
        """The output line for an event, or None for an event after its stream ended."""
        local = event.stream_id
        if local not in self.open:
            return None
        if is_terminal(event):
            self.open.discard(local)
        event.stream_id = self.original[local]
        return replicate_line(*event_to_wire(event))


def _error_line(stream_id: Any, error: str) -> str:
    return replicate_line("MSG", {"stream_id": stream_id, "error": error})


class BatchRunner:
    """Runs ops batches on an engine; independent of Cog so other hosts can reuse it."""

    def __init__(self, engine: LMTPEngine, info_overrides: dict[str, Any] | None = None) -> None:
        self.engine = engine
        self.info_overrides = info_overrides or {}

    def check(self) -> None:
        """Raise EngineStopped, with the reason, when the engine no longer runs ops."""
        if not self.engine.alive:
            raise EngineStopped(self.engine.stopped or "the cogql engine stopped; see the logs")

    def _fix_info(self, event: Event) -> Event:
        info = getattr(event, "model_info", None)
        if isinstance(info, dict) and self.info_overrides:
            event.model_info = {**info, **self.info_overrides}  # type: ignore[union-attr]
        return event

    def stream(self, ops_batch_json: str) -> Iterator[str]:
        """Lines in the order events happen; ends when every stream has ended."""
        demux = _Demux(parse_batch(ops_batch_json))
        yield from demux.rejected
        if not demux.ops:
            return
        events: queue.SimpleQueue[Event] = queue.SimpleQueue()
        handles = self.engine.submit(demux.ops, events.put)
        try:
            while demux.open:
                try:
                    event = events.get(timeout=_POLL_S)
                except queue.Empty:
                    self.check()
                    continue
                reply = demux.line(self._fix_info(event))
                if reply is not None:
                    yield reply
        finally:  # cancelled or failed: stop computing for streams nobody reads
            for op, handle in zip(demux.ops, handles, strict=True):
                if op.stream_id in demux.open:
                    handle.cancel()

    async def astream(self, ops_batch_json: str) -> AsyncIterator[str]:
        """The same as `stream`, for async predictors (max_concurrency > 1)."""
        demux = _Demux(parse_batch(ops_batch_json))
        for line in demux.rejected:
            yield line
        if not demux.ops:
            return
        events: asyncio.Queue[Event] = asyncio.Queue()
        sink = LoopSink(asyncio.get_running_loop(), events.put_nowait)
        handles = self.engine.submit(demux.ops, sink)
        try:
            while demux.open:
                try:
                    event = await asyncio.wait_for(events.get(), _POLL_S)
                except TimeoutError:
                    self.check()
                    continue
                reply = demux.line(self._fix_info(event))
                if reply is not None:
                    yield reply
        finally:
            for op, handle in zip(demux.ops, handles, strict=True):
                if op.stream_id in demux.open:
                    handle.cancel()


# --------------------------------------------------------------------------- loading


def _read_args(project: Path) -> dict[str, Any]:
    path = project / MODEL_ARGS
    try:
        args = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return {}
    except (OSError, ValueError) as e:
        raise PredictorSetupError(f"cannot read the model arguments {path}: {e}") from None
    if not isinstance(args, dict):
        raise PredictorSetupError(f"{path} must hold a JSON object of model arguments")
    return args


def _open_engine(checkpoints: Path, spec: EngineSpec) -> LMTPEngine:
    """The chosen engine on the checkpoints, on the GPU when there is one. cogql's engine
    loads on its own thread (torch's rule); vLLM in its own process."""
    import torch

    from ...engine.choice import open_engine

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return open_engine(
        str(checkpoints), engine=spec.engine, dtype=spec.dtype, device=device, **spec.options
    )


def _warm_up(engine: LMTPEngine) -> None:
    """One short GENERATE and SCORE, so kernels and allocators are warm before the first
    prediction (it then costs what the tenth does)."""
    tok = engine.tokenizer
    start = next((t for t in (tok.bos_token_id, tok.eos_token_id) if t is not None), 0)
    done: queue.SimpleQueue[Event] = queue.SimpleQueue()
    ops: list[Op] = [
        Generate(stream_id=0, model=CHECKPOINTS, prompt=[start], max_tokens=2),
        Score(stream_id=1, model=CHECKPOINTS, prompt=[start], scored=[start, start]),
    ]
    engine.submit(ops, done.put)
    remaining = {0, 1}
    deadline = time.monotonic() + 300
    while remaining:
        try:
            event = done.get(timeout=max(deadline - time.monotonic(), 0.001))
        except queue.Empty:
            raise PredictorSetupError("the warm-up prediction took over 300 s") from None
        if is_terminal(event):
            remaining.discard(event.stream_id)
        if isinstance(event, ErrorEvent):
            raise PredictorSetupError(f"the warm-up prediction failed: {event.error}")


def vendored_build() -> dict[str, Any]:
    """What the build recorded about the cogql copy inside the project (empty when cogql runs
    from an installed package rather than a project's vendored copy)."""
    path = Path(__file__).resolve().parents[2] / BUILD_INFO  # in the cogql package folder
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def load_runner(project: Path) -> BatchRunner:
    """Load the project's model completely; raises PredictorSetupError with the cause."""
    checkpoints = project / CHECKPOINTS
    if not (checkpoints / "config.json").is_file():
        raise PredictorSetupError(
            f"{checkpoints} has no config.json; rebuild the project with `cogql replicate build`"
        )
    args = _read_args(project)
    started = time.perf_counter()
    try:
        spec = engine_spec(args)
    except ValueError as e:
        raise PredictorSetupError(f"cannot load the model in {checkpoints}: {e}") from None
    print(f"cogql: loading {checkpoints} on {spec.engine}'s engine with {args}", flush=True)
    try:
        engine = _open_engine(checkpoints, spec)
    except Exception as e:
        raise PredictorSetupError(
            f"cogql could not load the model in {checkpoints}: {type(e).__name__}: {e}"
        ) from e
    _warm_up(engine)
    if engine.stopped:
        raise PredictorSetupError(f"the engine stopped during setup: {engine.stopped}")
    print(
        f"cogql: ready in {time.perf_counter() - started:.1f} s ({engine.describe()})", flush=True
    )
    build = vendored_build()
    overrides = {"cogql": build["cogql"]} if "cogql" in build else {}
    return BatchRunner(engine, overrides)


class LMTPPredictor(BaseRunner):
    """Base of the generated predict.py's `Predictor`, which declares the Cog input and output
    types itself (so Cog's static schema parser sees them) and delegates here."""

    project_dir: ClassVar[Path] = Path.cwd()

    def setup(self) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
        self.runner = load_runner(Path(self.project_dir))

    def healthcheck(self) -> bool:
        """Cog's health check (GET /health-check turns UNHEALTHY when this raises): the engine
        must still run, or every prediction would fail; the error says why it stopped."""
        runner = getattr(self, "runner", None)
        if runner is not None:
            runner.check()
        return True

    def stream(self, ops_batch_json: str) -> Iterator[str]:
        return self.runner.stream(ops_batch_json)

    def astream(self, ops_batch_json: str) -> AsyncIterator[str]:
        return self.runner.astream(ops_batch_json)
