"""`tokenizer=` on a remote model when the named tokenizer is not on this machine (a hub id not
in the cache, offline: tests/conftest.py points HF_ENDPOINT at a closed port): the query runs on
the tokenizer the server hands out, with a one-line note; where the server hands out none (an
LMQL server), the error names the tokenizer and the server. Real servers on loopback: cogql's
LMTP server on the random model, and a bare LMTP server that answers MODEL_INFO as LMQL's does.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

import cogql
from cogql.cli import EXIT_MODEL, main
from cogql.serve import BackgroundServer

MISSING = "acme/tokenizer-not-cached"
QUERY = (
    'argmax "Count: 1, 2, 3,[N]"\n'
    'from lmql.model("random", endpoint="{endpoint}", tokenizer="{tokenizer}")\n'
    "where INT(N) and len(TOKENS(N)) < 4\n"
)


def run_cli(query: str) -> Any:
    return CliRunner().invoke(main, ["run", "-", "--json"], query)


def test_a_tokenizer_not_on_this_machine_gives_way_to_the_one_the_server_hands_out(
    random_engine: Any,
) -> None:
    with BackgroundServer(random_engine) as server:
        result = run_cli(QUERY.format(endpoint=server.endpoint, tokenizer=MISSING))
    assert result.exit_code == 0, result.output
    assert (
        json.loads(result.stdout)["variables"]["N"]
        == (
            cogql.run_sync(
                QUERY.split("\n")[0] + "\nwhere INT(N) and len(TOKENS(N)) < 4", model="random"
            )["N"]
        )
    )
    [note] = result.stderr.splitlines()
    assert note == (
        f"warning: tokenizer='{MISSING}' is not on this machine (not a folder, not in the Hugging "
        f"Face cache); using the tokenizer that the model at {server.url} hands out"
    )


class LMQLStyleServer:
    """An LMTP server that answers MODEL_INFO as LMQL's serve-model does: its model, and no
    capabilities, so no tokenizer to hand out."""

    def __init__(self) -> None:
        self.port = 0
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=asyncio.run, args=(self._main(),), daemon=True)

    async def _answer(self, connection: ServerConnection) -> None:
        with contextlib.suppress(ConnectionClosed):  # the client may leave without a close
            await self._serve(connection)

    async def _serve(self, connection: ServerConnection) -> None:
        async for frame in connection:
            kind, _, body = str(frame).partition(" ")
            if kind == "MODEL_INFO":
                sid = json.loads(body)["stream_id"]
                reply = {"stream_id": sid, "model_info": {"model": "random"}}
                await connection.send(f"MSG {json.dumps(reply)}")

    async def _main(self) -> None:
        self._loop, self._stop = asyncio.get_running_loop(), asyncio.Event()
        async with serve(self._answer, "127.0.0.1", 0) as server:
            self.port = next(iter(server.sockets)).getsockname()[1]
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> LMQLStyleServer:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc: Any) -> None:
        assert self._loop is not None and self._stop is not None
        self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)


@pytest.fixture
def lmql_style_server() -> Iterator[LMQLStyleServer]:
    with LMQLStyleServer() as server:
        yield server


def test_neither_tokenizer_is_an_error_naming_both(lmql_style_server: LMQLStyleServer) -> None:
    endpoint = f"127.0.0.1:{lmql_style_server.port}"
    result = run_cli(QUERY.format(endpoint=endpoint, tokenizer=MISSING))
    assert result.exit_code == EXIT_MODEL, result.output
    error = result.stderr
    assert error.startswith(f"error: TokenizerNotFound: no tokenizer found for '{MISSING}'")
    assert f"Nor does the model at ws://{endpoint}/ hand out its tokenizer" in error
