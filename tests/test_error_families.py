"""cogql's exception families (cogql/errors.py): every exception class in the package has the
one root and exactly one family and keeps the builtin base LMQL's users catch; the families are
what a caller catches on real failures: a query error before any model call, a run error on
what the model produced (no longer a SyntaxError), a model error for a missing model, and
transport errors whose `retryable` says whether the same call may succeed later (a dead server,
a handshake refused with 503 or 401, a connection dropped mid-request; Replicate's 429 and 404
are in test_replicate_transport.py). And `cogql run`'s exit status by family, through the real
command."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.server import ServerConnection, serve
from websockets.http11 import Request, Response

import cogql
from cogql.errors import CogqlError, DeployError, ModelError, QueryError, RunError, TransportError
from cogql.replicate.cog.cogserver import free_port
from cogql.replicate.emulator.errors import BadRequest, ServerError, Throttled, Unauthenticated

FAMILIES = (QueryError, RunError, ModelError, TransportError, DeployError)
CONTROL_FLOW = {"_Suspended"}  # unwinds a replayed program: a BaseException on purpose
SCRIPT = Path(sys.executable).with_name("cogql")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cogql"]


def cogql_exceptions() -> set[type[BaseException]]:
    """Every exception class defined in a module of the package (each module imported)."""
    root = Path(cogql.__file__).parent
    found: set[type[BaseException]] = set()
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root.parent).with_suffix("").parts
        if parts[-1] == "__main__":
            continue
        module = importlib.import_module(".".join(parts[:-1] if parts[-1] == "__init__" else parts))
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__.startswith("cogql.")
            ):
                found.add(value)
    return found


def test_every_exception_class_has_the_root_and_one_family() -> None:
    classes = cogql_exceptions()
    assert len(classes) > 60  # the walk saw the whole package
    for cls in classes:
        if cls.__name__ in CONTROL_FLOW:
            assert not issubclass(cls, Exception), cls  # no `except Exception` may catch it
            continue
        assert issubclass(cls, CogqlError), f"{cls.__module__}.{cls.__qualname__}"
        if cls is CogqlError or cls in FAMILIES:
            continue
        families = [f.__name__ for f in FAMILIES if issubclass(cls, f)]
        assert len(families) == 1, (f"{cls.__module__}.{cls.__qualname__}", families)


@pytest.mark.parametrize(
    ("name", "family", "builtin"),
    [
        ("QuerySyntaxError", QueryError, SyntaxError),
        ("HoleTypeError", QueryError, TypeError),  # LMQL: "Not a valid type expression ..."
        ("InputError", QueryError, TypeError),  # "Failed to resolve variable ..."
        ("DecoderError", QueryError, ValueError),  # "Unknown decoder argument: ..."
        ("NoResultError", RunError, RuntimeError),
        ("ModelConfigError", ModelError, ValueError),
        ("LMTPError", TransportError, RuntimeError),
    ],
)
def test_exported_classes_keep_their_builtin_base(
    name: str, family: type[CogqlError], builtin: type[Exception]
) -> None:
    cls = getattr(cogql, name)
    assert issubclass(cls, family) and issubclass(cls, builtin)


def test_the_root_and_families_are_exported() -> None:
    for cls in (CogqlError, *FAMILIES):
        assert getattr(cogql, cls.__name__) is cls and cls.__name__ in cogql.__all__


# --------------------------------------------------------------------------- catching them


def dead_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    return free_port()


def dead_model() -> cogql.Model:
    """A model behind a server that is not there: any model call fails with a TransportError,
    so an error of another family proves that no call was made."""
    return cogql.model("random", endpoint=f"127.0.0.1:{dead_port()}")


def test_a_query_error_comes_before_any_model_call() -> None:
    with pytest.raises(cogql.QueryError) as info:
        cogql.run_sync('argmax\n    "Hello [X"', model=dead_model())
    assert isinstance(info.value, SyntaxError) and info.value.lineno == 2
    with pytest.raises(cogql.QueryError, match="Failed to resolve variable 'name'"):
        cogql.run_sync('argmax "Hello {name} [X]"', model=dead_model())


def test_an_unsatisfiable_constraint_is_a_run_error() -> None:
    query = 'argmax\n    "Hi:[A]"\nwhere len(TOKENS(A)) < 2 and A.count("z") > 5'
    with pytest.raises(cogql.RunError) as info:
        cogql.run_sync(query, model=cogql.model("random", seed=1))
    e = info.value
    assert isinstance(e, cogql.ConstraintUnsatisfiedError) and not isinstance(e, SyntaxError)
    assert not isinstance(e, QueryError)  # the query is fine: the model found no value
    assert (e.lineno, e.offset) == (3, len("where len(TOKENS(A)) < 2 and ") + 1)
    assert "(line 3, column 30)" in str(e) and str(e).endswith("^")


def test_a_missing_model_is_a_model_error(tmp_path: Path) -> None:
    with pytest.raises(cogql.ModelError, match="looked at"):
        cogql.run_sync('argmax "Hi[X]"', model=f"local:{tmp_path / 'no-such-model'}")


def test_a_dead_server_is_a_retryable_transport_error() -> None:
    with pytest.raises(cogql.TransportError, match="no LMTP server at") as info:
        cogql.run_sync('argmax "Hi[X]"', model=dead_model())
    assert info.value.retryable and isinstance(info.value, ConnectionError)


class LoopbackServer:
    """A websocket server on loopback, on a thread of its own, that misbehaves as told."""

    def __init__(
        self,
        handler: Callable[[ServerConnection], Any],
        process_request: Callable[[ServerConnection, Request], Response | None] | None = None,
    ) -> None:
        self.handler = handler
        self.process_request = process_request
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._serve(),))
        self.port = 0

    async def _serve(self) -> None:
        self.stop = asyncio.Event()
        async with serve(
            self.handler, "127.0.0.1", 0, process_request=self.process_request
        ) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self.ready.set()
            await self.stop.wait()

    def __enter__(self) -> str:
        self.thread.start()
        assert self.ready.wait(10)
        return f"127.0.0.1:{self.port}"

    def __exit__(self, *exc: object) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(10)
        self.loop.close()


async def _hang_up_after_the_first_message(ws: ServerConnection) -> None:
    await ws.recv()
    await ws.close(1011, "gone")


async def _never_called(ws: ServerConnection) -> None:
    raise AssertionError("the handshake was refused")


def _refuse_with(status: int) -> Callable[[ServerConnection, Request], Response]:
    return lambda connection, request: connection.respond(status, "not now\n")


@pytest.mark.parametrize(("status", "retryable"), [(503, True), (401, False), (400, False)])
def test_a_refused_handshake_is_retryable_by_its_status(status: int, retryable: bool) -> None:
    with LoopbackServer(_never_called, _refuse_with(status)) as endpoint:
        model = cogql.model("random", endpoint=endpoint)
        with pytest.raises(cogql.TransportError, match=f"HTTP {status}") as info:
            cogql.run_sync('argmax "Hi[X]"', model=model)
    assert info.value.retryable is retryable


def test_a_connection_dropped_mid_request_is_retryable() -> None:
    with LoopbackServer(_hang_up_after_the_first_message) as endpoint:
        model = cogql.model("random", endpoint=endpoint)
        with pytest.raises(cogql.LMTPError, match="lost") as info:
            cogql.run_sync('argmax "Hi[X]"', model=model)
    assert isinstance(info.value, cogql.TransportError) and info.value.retryable


def test_the_emulators_answers_are_retryable_by_status() -> None:
    assert Throttled(1).retryable and ServerError(503).retryable
    assert not BadRequest("no").retryable and not Unauthenticated().retryable


# --------------------------------------------------------------------------- cogql run


@pytest.fixture(scope="module")
def dead_endpoint() -> Iterator[str]:
    yield f"127.0.0.1:{dead_port()}"


@pytest.mark.parametrize(
    ("query", "args", "status", "says"),
    [
        ('argmax "Hello {name}[X]"\n', [], 2, "Failed to resolve variable 'name'"),
        ('argmax\n    "Hello [X"\n', [], 2, "line 2, column 12"),
        (
            'argmax "Hi:[A]" where len(TOKENS(A)) < 2 and A.count("z") > 5\n',
            ["--model", "random"],
            3,
            "error: the model produced no value of A",
        ),
        ('argmax "Hi[X]" from "local:/no/such/model"\n', [], 4, "ModelNotFound"),
        (
            'argmax "Hi[X]" from lmql.model("random", endpoint="{dead}")\n',
            [],
            4,
            "LMTPConnectionError: no LMTP server at",
        ),
    ],
    ids=["missing-input", "syntax", "unsatisfiable", "no-model", "dead-server"],
)
def test_cogql_run_exits_by_family(
    dead_endpoint: str, query: str, args: list[str], status: int, says: str
) -> None:
    proc = subprocess.run(
        [*COMMAND, "run", "-", *args],
        input=query.replace("{dead}", dead_endpoint),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == status, proc.stderr
    assert says in proc.stderr and "Traceback" not in proc.stderr
