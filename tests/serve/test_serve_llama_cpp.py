"""`cogql serve-model llama.cpp:<file>.gguf`, as an LMQL user starts it (LMQL's own spelling):
the file runs quantised on llama.cpp, with no `--engine` needed, and cogql's client and LMQL
0.7.3's own client get the answer llama.cpp gives in process. A `--key` must be an argument of
llama-cpp-python's `Llama`, checked before the server listens."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator

import pytest

import cogql
from cogql.engine.models import embedded_gguf
from cogql.replicate.cog.cogserver import free_port
from tests.conftest import running_server
from tests.lmtp.test_interop_lmql import PEER_MODEL, PEER_PYTHON, SENTIMENT, _lmql_client

pytest.importorskip(
    "llama_cpp", reason="llama-cpp-python is not installed (make llamacpp builds and installs it)"
)
pytestmark = pytest.mark.slow


def gguf_name() -> str:
    return f"llama.cpp:{embedded_gguf()}"


@pytest.fixture(scope="module")
def llama_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    log = tmp_path_factory.mktemp("serve-llama") / "serve.log"
    cmd = [sys.executable, "-m", "cogql", "serve-model", gguf_name(), "--port", str(port),
           "--n_ctx", "2048"]  # fmt: skip
    with running_server(cmd, port, log):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def in_process() -> cogql.LMQLResult:
    source = SENTIMENT.read_text(encoding="utf-8")
    return cogql.run_sync(source, model=cogql.model(f"local:{gguf_name()}"))


def _probs(variables: dict) -> dict[str, float]:
    return dict(variables["P(CLASSIFICATION)"])


async def test_a_gguf_file_is_served_quantised_on_llama_cpp(llama_server: str) -> None:
    conn = await cogql.model("default", endpoint=llama_server).connect()
    info = await conn.client.model_info()
    assert info["engine"] == "llama.cpp"
    assert info["dtype"] == "Q4_1"
    assert str(embedded_gguf().parent) not in info["constructor"]  # no server paths go out
    assert {"grammar", "stop", "tokenizer"} <= conn.capabilities


def test_cogql_client_gets_the_in_process_answer(
    llama_server: str, in_process: cogql.LMQLResult
) -> None:
    model = cogql.model(gguf_name(), endpoint=llama_server)
    result = cogql.run_sync(SENTIMENT.read_text(encoding="utf-8"), model=model)
    assert result.prompt == in_process.prompt
    assert result["CLASSIFICATION"] in (" positive", " negative", " neutral")
    assert _probs(result.variables) == pytest.approx(_probs(in_process.variables), abs=1e-4)


@pytest.mark.skipif(
    not (PEER_PYTHON.exists() and PEER_MODEL.is_dir()),
    reason="LMQL 0.7.3 peer not installed (run `make peer`)",
)
def test_lmql_client_gets_the_in_process_answer(
    llama_server: str, in_process: cogql.LMQLResult
) -> None:
    (ours,) = _lmql_client(llama_server)
    for key in ("ANALYSIS", "CLASSIFICATION"):
        assert ours["variables"][key] == in_process[key]
    assert ours["prompt"] == in_process.prompt
    assert _probs(ours["variables"]) == pytest.approx(_probs(in_process.variables), abs=5e-3)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--n_ctxx", "512"], "did you mean --n_ctx?"),
        (["--engine", "llama.cpp", "--dtype", "float16"], "dtype='float16'"),
    ],
)
def test_wrong_arguments_are_refused_before_serving(args: list[str], said: str) -> None:
    cmd = [sys.executable, "-m", "cogql", "serve-model", gguf_name(), "--port", "1", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert said in done.stderr
    assert "listening" not in done.stderr


def test_a_missing_gguf_file_exits_before_serving(tmp_path) -> None:
    missing = tmp_path / "nowhere.gguf"
    cmd = [sys.executable, "-m", "cogql", "serve-model", f"llama.cpp:{missing}", "--port", "1"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 4, done.stderr
    assert "nowhere.gguf" in done.stderr
