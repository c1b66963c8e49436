"""LMQL's tracing: `with lmql.traced("name") as t:` records the model calls of every query run
inside it, and `lmql.certificate(t)` turns the record into an inference certificate (JSON that
documents which calls produced a result). A query's `certificate=` argument traces that one
query: True prints its certificate, a path writes it there, a callable receives it, and
"return_dict" returns `{"result": ..., "certificate": ...}` instead of the result.

The record is built from the query's `ModelCall` events (kind, prompt and generated token
counts, wall time), not from LMTP payloads as in LMQL.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from contextvars import ContextVar
from dataclasses import asdict, is_dataclass
from typing import Any

from .events import ModelCall, OnEvent, QueryEvent
from .result import LMQLResult

_active: ContextVar[tuple[Tracer, ...]] = ContextVar("cogql_tracers", default=())


class Tracer:
    """Events and metrics of a traced workload; queries run inside it add child tracers."""

    def __init__(self, name: str, parent: Tracer | None = None) -> None:
        self.name = name
        self.parent = parent
        self.events: list[dict[str, Any]] = []
        self.metrics: dict[str, Any] = {}
        self.children: list[Tracer] = []
        self.active = True

    def event(self, name: str, data: Any) -> dict[str, Any]:
        """Record an event; its data is kept as JSON (what is not JSON becomes its str)."""
        entry = {"name": name, "data": _jsonable(data)}
        self.events.append(entry)
        return entry

    def add(self, metric_name: str, n: int | float = 1) -> None:
        """Add `n` to a metric (dotted names nest: "lmtp.generate"); parents add it too."""
        if self.parent is not None:
            self.parent.add(metric_name, n)
        *path, last = metric_name.split(".")
        node = self.metrics
        for part in path:
            node = node.setdefault(part, {})
        node[last] = node.get(last, 0) + n

    def add_child_tracer(self, tracer: Tracer) -> None:
        self.children.append(tracer)
        tracer.parent = self

    def __repr__(self) -> str:
        return (
            f"<Tracer {self.name!r} events={len(self.events)} metrics={len(self.metrics)} "
            f"children={len(self.children)}>"
        )


def active_tracer() -> Tracer | None:
    """The innermost tracer of this context (task), or None when nothing is traced."""
    stack = _active.get()
    return stack[-1] if stack else None


@contextmanager
def _activated(tracer: Tracer) -> Iterator[Tracer]:
    current = active_tracer()
    if current is not None and tracer.parent is None:
        current.add_child_tracer(tracer)
    token = _active.set((*_active.get(), tracer))
    try:
        yield tracer
    finally:
        _active.reset(token)


def traced(name: str) -> AbstractContextManager[Tracer]:
    """`with lmql.traced("workload") as tracer:`: trace every query run inside."""
    return _activated(Tracer(name))


class InferenceCertificate:
    """LMQL's inference certificate: the tracer's events, children and metrics as JSON."""

    def __init__(self, tracer: Tracer | None) -> None:
        self.tracer = tracer

    def asdict(self, child: bool = False) -> dict[str, Any]:
        t = self.tracer
        if t is None:
            return {
                "type": "lmql.InferenceCertificate",
                "warning": "Untraced query. Use lmql.traced() or certificate=True to trace it.",
            }
        header = {"type": "lmql.InferenceCertificate", "cogql.version": _version()}
        header["time"] = time.strftime("%Y-%m-%d %H:%M:%S %z")
        children = [InferenceCertificate(c).asdict(child=True) for c in t.children]
        parts = {"events": t.events, "children": children, "metrics": t.metrics}
        return {
            "name": t.name,
            **({} if child else header),
            **{k: v for k, v in parts.items() if v},
        }

    def __str__(self) -> str:
        return json.dumps(self.asdict(), indent=4)

    __repr__ = __str__


def certificate(tracer: Tracer | None, empty_on_null: bool = False) -> InferenceCertificate | None:
    """The certificate of `tracer`; for no tracer, None (or an empty one if `empty_on_null`)."""
    if tracer is None:
        return InferenceCertificate(None) if empty_on_null else None
    if not isinstance(tracer, Tracer):
        raise TypeError(f"certificate() takes a tracer (from lmql.traced), got {tracer!r}")
    return InferenceCertificate(tracer)


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("cogql")
    except PackageNotFoundError:
        return "unknown"


def _jsonable(data: Any) -> Any:
    if is_dataclass(data) and not isinstance(data, type):
        data = asdict(data)
    return json.loads(json.dumps(data, default=str))


# --------------------------------------------------------------------------- one query's trace

Certificate = bool | str | Callable[[InferenceCertificate], Any]


class QueryTrace:
    """The tracer of one query run: records its model calls (passing every event on to the
    caller's own callback) and, when the query asked for a certificate, hands it out."""

    def __init__(self, tracer: Tracer, wanted: Certificate, model: str, tokenizer: str) -> None:
        self.tracer = tracer
        self.wanted = wanted
        self.model = model
        self.tokenizer = tokenizer

    def listen(self, on_event: OnEvent | None) -> OnEvent:
        def record(event: QueryEvent) -> None:
            if isinstance(event, ModelCall) and event.status != "cancelled":
                self._record(event)
            if on_event is not None:
                on_event(event)

        return record

    def _record(self, call: ModelCall) -> None:
        kind = call.kind.lower()
        data = {"model": self.model, "tokenizer": self.tokenizer, **asdict(call)}
        self.tracer.event(f"lmtp.{kind}", data)
        self.tracer.add(f"lmtp.{kind}")
        self.tracer.add("lmtp.prompt_tokens", call.prompt_tokens)
        self.tracer.add("lmtp.generated_tokens", call.tokens)

    def finish(self, result: Any) -> Any:
        if self.wanted is False or self.wanted is None:
            return result
        results = result if isinstance(result, list) else [result]
        self.tracer.event("lmql.LMQLResult", [_result_data(r) for r in results])
        cert = InferenceCertificate(self.tracer)
        if callable(self.wanted):
            self.wanted(cert)
        elif self.wanted == "return_dict":
            wrapped = [{"result": r, "certificate": cert} for r in results]
            return wrapped if isinstance(result, list) else wrapped[0]
        elif isinstance(self.wanted, str):
            with open(self.wanted, "w", encoding="utf-8") as f:
                f.write(str(cert))
        else:
            print(str(cert), flush=True)
        return result


def _result_data(result: Any) -> Any:
    if isinstance(result, LMQLResult):
        data: dict[str, Any] = {"prompt": result.prompt, "variables": result.variables}
        if result.distribution_variable is not None:
            data["distribution_variable"] = result.distribution_variable
            data["distribution_values"] = result.distribution_values
        return data
    return result


def check_certificate(value: Any) -> None:
    """`certificate=` is True/False, a file path (or "return_dict"), or a callable."""
    if value is None or isinstance(value, bool | str) or callable(value):
        return
    raise TypeError(
        "certificate= takes True (print it), a file path, 'return_dict', or a callable that "
        f"receives the certificate; got {value!r}"
    )


@contextmanager
def query_trace(name: str, wanted: Any, model: str, tokenizer: str) -> Iterator[QueryTrace | None]:
    """A QueryTrace while a tracer is active or `wanted` asks for a certificate, else None."""
    check_certificate(wanted)
    if active_tracer() is None and not wanted:
        yield None
        return
    with _activated(Tracer(name)) as tracer:
        yield QueryTrace(tracer, wanted, model, tokenizer)
