"""What the OpenAI-compatible transport sends and how it reads answers, without a server:
targets from LMQL's arguments, request bodies, token ids from the API's token strings, chat
messages from role markers. (The requests themselves run against vLLM in
test_openai_server.py.)"""

from __future__ import annotations

import pytest

from cogql.lmtp.messages import Generate, Score
from cogql.lmtp.transports.openai import OpenAIConfigError, OpenAIUnsupported, target_from
from cogql.lmtp.transports.openai.chat import messages_of
from cogql.lmtp.transports.openai.completions import (
    Dialect,
    chunk_tokens,
    final_event,
    generate_body,
    score_body,
    score_logprobs,
)
from cogql.lmtp.transports.openai.settings import is_openai_name
from cogql.lmtp.transports.openai.tokens import TokenIds
from cogql.tokenizer import Tokenizer


@pytest.fixture(autouse=True)
def _no_openai_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "OPENAI_API_BASE", "OPENAI_API_TYPE",
                 "AZURE_OPENAI_API_KEY", "AZURE_OPENAI_ENDPOINT", "OPENAI_API_VERSION"):  # fmt: skip
        monkeypatch.delenv(name, raising=False)


@pytest.mark.parametrize(
    ("endpoint", "base"),
    [
        ("localhost:8000", "http://localhost:8000/v1"),
        ("http://127.0.0.1:8000/", "http://127.0.0.1:8000/v1"),
        ("https://host/api/v1", "https://host/api/v1"),
        ("http://h:1/v1/completions", "http://h:1/v1"),
    ],
)
def test_an_endpoint_is_a_base_url(endpoint: str, base: str) -> None:
    target = target_from("openai/m", endpoint, {})
    assert target.base_url == base
    assert target.url("completions") == f"{base}/completions"
    assert target.headers() == {}  # a local server without a key gets none


def test_openais_api_needs_a_key_and_sends_it_as_a_bearer(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with pytest.raises(OpenAIConfigError, match="OPENAI_API_KEY"):
        target_from("openai/gpt-3.5-turbo-instruct", None, {})
    monkeypatch.setenv("OPENAI_API_KEY", "sk-abc")
    target = target_from("openai/gpt-3.5-turbo-instruct", None, {})
    assert target.url("completions") == "https://api.openai.com/v1/completions"
    assert target.headers() == {"Authorization": "Bearer sk-abc"}
    assert "sk-abc" not in repr(target)
    assert target.redact("bad key sk-abc") == "bad key <api key>"


def test_azure_urls_name_the_deployment_and_version() -> None:
    target = target_from(
        "openai/gpt-35", None,
        {"api_type": "azure-chat", "api_base": "https://r.openai.azure.com",
         "api_deployment": "dep", "api_version": "2024-06-01", "api_key": "k"},
    )  # fmt: skip
    assert target.chat and target.azure
    assert target.url("chat/completions") == (
        "https://r.openai.azure.com/openai/deployments/dep/chat/completions?api-version=2024-06-01"
    )
    assert target.headers() == {"api-key": "k"}
    with pytest.raises(OpenAIConfigError, match="api_type"):
        target_from("openai/m", "h:1", {"api_type": "azur"})


@pytest.mark.parametrize(
    ("name", "chat"),
    [("chatgpt", True), ("gpt-4", True), ("openai/gpt-4o-mini", True),
     ("openai/gpt-3.5-turbo-instruct", False), ("openai/davinci-002", False)],
)  # fmt: skip
def test_lmqls_names_and_chat_models(name: str, chat: bool) -> None:
    assert is_openai_name(name)
    assert target_from(name, "h:1", {}).chat is chat
    assert target_from(name, "h:1", {"chat": not chat}).chat is not chat


def test_local_and_other_names_are_not_openais() -> None:
    assert not is_openai_name("local:openai/gpt-oss-20b") and not is_openai_name("gpt2")


def test_a_generate_becomes_a_streamed_completion_of_token_ids() -> None:
    target = target_from("openai/m", "h:1", {})
    op = Generate(1, "m", [5, 6], max_tokens=7, temperature=0.5, logit_bias={9: 100.0, 3: 100.0},
                  top_logprobs=10, seed=4)  # fmt: skip
    body = generate_body(target, op, Dialect())
    assert body == {"model": "m", "prompt": [5, 6], "max_tokens": 7, "temperature": 0.5,
                    "logprobs": 5, "stream": True, "logit_bias": {"3": 100.0, "9": 100.0},
                    "seed": 4}  # fmt: skip
    vllm = generate_body(target, op, Dialect(vllm=True))
    assert vllm["logprobs"] == 10 and vllm["return_tokens_as_token_ids"] is True


def test_a_score_echoes_the_prompt_and_reads_the_scored_tail() -> None:
    target = target_from("openai/m", "h:1", {})
    op = Score(1, "m", [5, 6], [7, 8])
    body = score_body(target, op, Dialect())
    assert body["prompt"] == [5, 6, 7, 8] and body["echo"] and body["max_tokens"] == 0
    answer = {"choices": [{"logprobs": {"token_logprobs": [None, -1.0, -2.0, -3.0]}}]}
    assert score_logprobs(answer, op, "u") == [-2.0, -3.0]
    with pytest.raises(OpenAIUnsupported, match="prompt's log-probs"):
        score_logprobs({"choices": [{"logprobs": None}]}, op, "u")


def test_token_strings_map_back_to_ids(tokenizer: Tokenizer) -> None:
    tok = tokenizer
    ids = TokenIds(tok, "u")
    word = tok.encode(" positive")
    assert len(word) == 1
    assert ids.id_of("token_id:42") == 42
    assert ids.id_of(" positive") == word[0]
    first = tok.all_token_bytes().index(b"\xe2")  # half a character: OpenAI's bytes: form
    assert ids.id_of("bytes:\\xe2") == first
    with pytest.raises(OpenAIUnsupported, match="tokenizer="):
        TokenIds(None, "u").id_of(" positive")


def test_a_stream_ends_on_its_last_token_or_an_eos() -> None:
    ids = TokenIds(None, "u")
    chunk = {"choices": [{"text": "ab", "finish_reason": None, "logprobs": {
        "tokens": ["token_id:3", "token_id:4"], "token_logprobs": [-0.5, -0.25],
        "top_logprobs": [{"token_id:3": -0.5}, {"token_id:4": -0.25, "token_id:9": -2.0}]}}]}  # fmt: skip
    events, finish = chunk_tokens(chunk, ids)
    assert [(e.token, e.logprob) for e in events] == [(3, -0.5), (4, -0.25)]
    assert events[1].top_logprobs == {4: -0.25, 9: -2.0} and finish is None
    stopped = final_event(events[1], "stop", eos=2)  # the model ended: EOS follows
    assert [(e.token, e.finish_reason) for e in stopped] == [(4, None), (2, "stop")]
    assert [(e.token, e.finish_reason) for e in final_event(events[1], "length", 2)] == [
        (4, "length")
    ]
    with pytest.raises(OpenAIUnsupported, match="without log-probs"):
        chunk_tokens({"choices": [{"text": "a", "logprobs": None}]}, ids)


def test_role_markers_split_a_prompt_into_messages() -> None:
    text = "Hi<lmql:system/>Be brief.<lmql:user/> Sky color?<lmql:assistant/>"
    assert messages_of(text) == [
        {"role": "user", "content": "Hi"},
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Sky color?"},
    ]
