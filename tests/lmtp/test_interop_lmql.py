"""LMTP interop with LMQL 0.7.3 itself (the peer venv from `make peer`), both directions:
LMQL's client runs the sentiment query against `cogql serve-model` and gets what it gets from
`lmql serve-model`; cogql's client runs it against `lmql serve-model` (no extensions there, so
cogql falls back to LMQL's method) and gets what it gets in-process.

Skipped, with the reason, where the peer is not installed."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.replicate.cog.cogserver import free_port
from cogql.runtime.model import RemoteModelNotLoaded
from cogql.serve import BackgroundServer
from tests.conftest import running_server

PEER = Path(os.environ.get("LMQL_PEER_DIR", Path.home() / ".cache" / "lmql-peer"))
PEER_PYTHON = PEER / "venv" / "bin" / "python"
PEER_LMQL = PEER / "venv" / "bin" / "lmql"
PEER_MODEL = PEER / "smollm2-hf"  # the embedded model, converted to a transformers folder
CLIENT = Path(__file__).parent / "peer" / "lmql_client.py"
SENTIMENT = Path(__file__).resolve().parents[2] / "examples" / "sentiment.lmql"

pytestmark = [
    pytest.mark.slow,  # both LMQL and cogql serve the embedded model
    pytest.mark.skipif(
        not (PEER_PYTHON.exists() and PEER_MODEL.is_dir()),
        reason=f"LMQL 0.7.3 peer not installed at {PEER} (run `make peer`)",
    ),
]


@pytest.fixture(scope="module")
def lmql_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`lmql serve-model` on the peer's SmolLM2 folder; yields its endpoint."""
    port = free_port()
    log = tmp_path_factory.mktemp("lmql-serve") / "serve.log"
    cmd = [str(PEER_LMQL), "serve-model", str(PEER_MODEL), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    with running_server(cmd, port, log, stop=signal.SIGTERM):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def cogql_server(engine: Engine) -> Iterator[BackgroundServer]:
    with BackgroundServer(engine) as s:
        yield s


@pytest.fixture(scope="module")
def in_process() -> cogql.LMQLResult:
    return cogql.run_sync(SENTIMENT.read_text(encoding="utf-8"))


def _lmql_client(*endpoints: str) -> list[dict[str, Any]]:
    """LMQL's own client, in its own venv, against each endpoint in turn."""
    cmd = [str(PEER_PYTHON), str(CLIENT), str(SENTIMENT), str(PEER_MODEL), *endpoints]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    return [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]


def _probs(variables: dict[str, Any]) -> dict[str, float]:
    return {option: p for option, p in variables["P(CLASSIFICATION)"]}


def test_lmql_client_gets_the_same_result_from_cogql_and_lmql_servers(
    lmql_server: str, cogql_server: BackgroundServer, in_process: cogql.LMQLResult
) -> None:
    ours, theirs = _lmql_client(cogql_server.endpoint, lmql_server)
    assert ours["endpoint"] == cogql_server.endpoint
    for key in ("ANALYSIS", "CLASSIFICATION"):
        assert ours["variables"][key] == theirs["variables"][key]
        assert ours["variables"][key] == in_process[key]
    assert ours["prompt"] == theirs["prompt"] == in_process.prompt
    # same weights, different kernels (cogql decodes in fp16 on CPU): close, not identical
    assert _probs(ours["variables"]) == pytest.approx(_probs(theirs["variables"]), abs=5e-3)
    assert _probs(ours["variables"]) == pytest.approx(_probs(in_process.variables), abs=1e-3)


def test_cogql_client_against_lmql_server(lmql_server: str, in_process: cogql.LMQLResult):
    """No capabilities there: the constraints run client-side with LMQL's method."""
    model = cogql.model(str(PEER_MODEL), endpoint=lmql_server)
    result = cogql.run_sync(SENTIMENT.read_text(encoding="utf-8"), model=model)
    assert result["ANALYSIS"] == in_process["ANALYSIS"]
    assert result["CLASSIFICATION"] == in_process["CLASSIFICATION"]
    assert result.prompt == in_process.prompt
    assert _probs(result.variables) == pytest.approx(_probs(in_process.variables), abs=5e-3)


async def test_cogql_client_sees_no_extensions_on_an_lmql_server(lmql_server: str) -> None:
    conn = await cogql.model(str(PEER_MODEL), endpoint=lmql_server).connect()
    assert conn.capabilities == frozenset()  # so it never sends an LMQL server an extension
    assert conn.tokenizer.bos_token_id == 1  # found under the model's name, as LMQL does


async def test_naming_a_model_the_lmql_server_cannot_load_fails_within_the_wait(
    lmql_server: str,
) -> None:
    """An LMQL server tries to load whatever model a client names, and answers "<unavailable>"
    meanwhile (for good, for a name it cannot get): the wait ends with the likely cause.
    Last in this module: the server is left with a second model it failed to load."""
    name = "no-such-org/not-served-here"
    model = cogql.model(name, endpoint=lmql_server, tokenizer=str(PEER_MODEL), load_timeout=3)
    with pytest.raises(RemoteModelNotLoaded) as failed:
        await model.connect()
    assert f"has not loaded {name!r} after" in str(failed.value)
    assert "loads whatever model its client names" in str(failed.value)
