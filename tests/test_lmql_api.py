"""The rest of LMQL 0.7's public API, through `import cogql.compat as lmql`: lmql.tokenizer,
the default model, query-function attributes (and LMQL's own test runner's way of recognising
queries), lmql.algorithms, tracing and inference certificates, run_file, run_in_loop,
lmql.serve, lmql.inspect and the version. Expected values marked "LMQL 0.7.3" were read off
the peer LMQL running the same code."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cogql
import cogql.compat as lmql
from cogql.replicate.cog.cogserver import free_port
from cogql.runtime import model as model_module
from cogql.runtime.model import EMBEDDED_IDENTIFIER, ModelConfigError
from cogql.tokenizer import TokenizerNotFound

SHORT = '"Once upon a time[X]" where len(TOKENS(X)) < 3'

# every name in LMQL 0.7.3's dir(lmql) that is LMQL's own and that cogql provides
# (its internal modules, compiled_query and tag are not; see the README's table)
LMQL_NAMES = [
    "F",
    "InferenceCertificate",
    "LLM",
    "LMQLQueryFunction",
    "LMQLResult",
    "ScoringResult",
    "Tracer",
    "algorithms",
    "certificate",
    "decorators",
    "generate",
    "generate_sync",
    "get_default_model",
    "get_default_scoring_model",
    "headless",
    "inspect",
    "main",
    "model",
    "printing",
    "query",
    "query_from_string",
    "run",
    "run_file",
    "run_in_loop",
    "run_sync",
    "score",
    "score_sync",
    "serve",
    "set_default_model",
    "silent",
    "stream",
    "tokenizer",
    "traced",
    "version",
    "version_info",
]


def test_compat_has_every_lmql_name() -> None:
    missing = [n for n in LMQL_NAMES if not hasattr(lmql, n)]
    assert missing == []
    assert lmql.__version__ == lmql.version.version == "0.7.3"
    assert lmql.LMQLQueryFunction is cogql.QueryFunction and lmql.LLM is cogql.Model


def test_cogql_has_the_names_that_do_not_clash() -> None:
    clashing = {"stream", "serve", "inspect", "version", "version_info"}
    missing = [n for n in LMQL_NAMES if n not in clashing and not hasattr(cogql, n)]
    assert missing == []


def test_cogql_tokenizer_is_the_module_and_lmqls_function() -> None:
    """`import cogql as lmql; lmql.tokenizer("name")` works as LMQL's call, in Python and in
    query code that reads that `lmql`, while `cogql.tokenizer` stays the module that holds
    `Tokenizer` and `load_tokenizer`."""
    import cogql.tokenizer as module

    assert module.load_tokenizer is cogql.tokenizer.load_tokenizer
    lmql = cogql  # as code written `import cogql as lmql` has it
    assert lmql.tokenizer("default") is cogql.compat.tokenizer("default")

    @lmql.query(model=lmql.model("random", seed=2))
    def q():
        """lmql
        "Hi[X]" where len(TOKENS(X)) < 3
        return X, lmql.tokenizer("default").tokenize(X)
        """

    value, tokens = q()
    assert tokens and tokens == cogql.compat.tokenizer("default").tokenize(value)


# --------------------------------------------------------------------------- lmql.tokenizer


def test_tokenizer_matches_lmql() -> None:
    t = lmql.tokenizer("default")
    # LMQL 0.7.3 on the same SmolLM2 tokenizer
    assert t.tokenize("Hello world, héllo") == ["Hello", "Ġworld", ",", "Ġh", "Ã©", "llo"]
    assert t("Hello world") == {"input_ids": [19556, 905]}
    assert t(["a b", "c"]) == {"input_ids": [[81, 278], [83]]}
    assert t.decode([19556, 905]) == "Hello world"
    assert t.decode([1, 19556, 2]) == "<|im_start|>Hello<|im_end|>"
    assert t.convert_tokens_to_string(["ĠHello", "Ġw"]) == " Hello w"
    assert (t.bos_token_id, t.eos_token_id) == (1, 2)
    assert t.vocab_size == t.model_vocab_size == 49152 == len(t.vocab)


def test_tokenizer_bytes_ids_and_one_instance() -> None:
    t = lmql.tokenizer("default")
    assert t.tokenize("Hello world", asbytes=True) == [b"Hello", b" world"]
    assert t.convert_bytes_to_ids([b"Hello", b" world"]) == [19556, 905]
    assert t.decode([b"Hello", b" world"]) == "Hello world"
    assert t.encode("Hello world") == [19556, 905]
    assert t.convert_tokens_to_ids(["Hello", "Ġworld"]) == [19556, 905]
    assert t.convert_ids_to_tokens([19556, 905]) == ["Hello", "Ġworld"]
    assert t.vocab["Ġworld"] == 905
    assert lmql.tokenizer("default") is t
    with pytest.raises(ValueError, match="not a token"):
        t.convert_tokens_to_ids("no-such-token-here")


def test_tokenizer_of_a_folder_and_of_a_model(tiny_model: cogql.Model) -> None:
    by_folder = lmql.tokenizer(str(Path(tiny_model.name.removeprefix("local:"))))
    assert by_folder("Hi there")["input_ids"] == lmql.tokenizer("default")("Hi there")["input_ids"]
    assert tiny_model.get_tokenizer()("Hi")["input_ids"] == by_folder("Hi")["input_ids"]


def test_tokenizer_of_a_gguf_file_reads_its_metadata_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """LMQL's `lmql.tokenizer("llama.cpp:<file>.gguf")`: the tokenizer comes out of the file's
    metadata; its weights are not converted (a 7B file would take minutes and tens of GB)."""
    from cogql.engine.models import embedded_gguf

    expected = lmql.tokenizer("default")("Hi there")["input_ids"]
    monkeypatch.setenv("COGQL_CACHE", str(tmp_path / "cache"))
    users_file = tmp_path / "mine.gguf"
    shutil.copyfile(embedded_gguf(), users_file)
    for name in (f"llama.cpp:{users_file}", str(users_file)):
        assert lmql.tokenizer(name)("Hi there")["input_ids"] == expected
    made = sorted(p.name for p in (tmp_path / "cache" / "models").iterdir() if p.is_dir())
    assert len(made) == 1 and made[0].endswith("-tokenizer"), made
    assert not list((tmp_path / "cache").rglob("*.safetensors"))


def test_unknown_tokenizer_says_where_it_looked() -> None:
    with pytest.raises(TokenizerNotFound) as e:
        lmql.tokenizer("gpt2")
    message = str(e.value)
    assert "'gpt2'" in message and "gpt2/tokenizer.json" in message
    assert "Hugging Face cache" in message and "offline" in message


# --------------------------------------------------------------------------- default model


@pytest.fixture
def restore_default() -> Iterator[None]:
    before = model_module._default_model
    yield
    lmql.set_default_model(before)


async def test_default_model_runs_queries_without_from(
    tiny_model: cogql.Model, restore_default: None
) -> None:
    assert lmql.get_default_model() == EMBEDDED_IDENTIFIER
    on_embedded = await lmql.run(SHORT)
    on_tiny = await lmql.run(SHORT, model=tiny_model)
    assert on_embedded.prompt != on_tiny.prompt  # the two models tell apart
    lmql.set_default_model(tiny_model)
    assert lmql.get_default_model() is tiny_model is lmql.get_default_scoring_model()
    assert (await lmql.run(SHORT)).prompt == on_tiny.prompt
    assert await lmql.generate("Once upon a time", 2) == on_tiny.variables["X"]
    scored = await lmql.score("Once upon a time", ["X"])
    assert scored.model_identifier == tiny_model.model_identifier
    lmql.set_default_model(None)
    assert (await lmql.run(SHORT)).prompt == on_embedded.prompt


async def test_default_model_by_name_and_bad_values(
    random_model: cogql.Model, restore_default: None
) -> None:
    lmql.set_default_model(random_model.name)
    assert lmql.get_default_model() == random_model.name
    on_tiny = await lmql.run(SHORT, model=random_model)
    assert (await lmql.run(SHORT)).prompt == on_tiny.prompt
    with pytest.raises(ModelConfigError, match=r"model name or cogql\.model"):
        lmql.set_default_model(42)  # type: ignore[arg-type]


def test_llm_from_descriptor_and_configuration(random_model: cogql.Model) -> None:
    assert lmql.LLM.from_descriptor(random_model) is random_model
    made = lmql.LLM.from_descriptor("local:/some/folder", dtype="float32")
    assert made.name == "local:/some/folder" and made.configuration == {"dtype": "float32"}


# --------------------------------------------------------------------------- query attributes


@lmql.query(temperature=0.3)
async def captured(a, b=2):
    """lmql
    "Q {a} {b} {c}: [ANSWER] then [MORE]" where len(TOKENS(ANSWER)) < 2 and len(TOKENS(MORE)) < 2
    """


c = "captured c"


def test_query_attributes_match_lmql() -> None:
    q = lmql.query('"Hello {who} [X] and [Y]" where len(TOKENS(X)) < 3\nreturn X')
    # LMQL 0.7.3: output_variables ['X', 'Y'], args ['who'], lmql_code as written
    assert q.output_variables == q.output_keys == ["X", "Y"]
    assert q.args == q.input_keys == ["who"]
    assert q.lmql_code == '"Hello {who} [X] and [Y]" where len(TOKENS(X)) < 3\nreturn X'
    assert q.is_async and q.extra_args == {} and q.model is None
    assert q.function_context.args_of_query == ["who"]
    assert lmql.inspect.is_query(q) and q.__lmql_query_function__ is q
    assert isinstance(q, lmql.LMQLQueryFunction)


def test_decorated_query_attributes() -> None:
    # LMQL 0.7.3: args ['a', 'b', 'c'], name 'f', extra_args the decorator's keywords
    assert captured.name == "captured" and captured.args == ["a", "b", "c"]
    assert captured.output_variables == ["ANSWER", "MORE"]
    assert captured.extra_args == {"temperature": 0.3}
    assert str(captured.function_context.argnames) == "(a, b=2)"
    assert lmql.inspect.getsource(captured).startswith('"Q {a} {b} {c}: [ANSWER]')
    with pytest.raises(TypeError, match="LMQL query function"):
        lmql.inspect.getsource(print)


def test_bound_query_method_forwards_attributes() -> None:
    class Asker:
        @lmql.query
        def ask(self, q):
            """lmql
            "{q}[A]" where len(TOKENS(A)) < 2
            """

    bound = Asker().ask
    assert bound.lmql_code == '"{q}[A]" where len(TOKENS(A)) < 2'
    assert bound.is_async is False and lmql.inspect.is_query(bound)


async def test_force_model_and_acall(random_model: cogql.Model) -> None:
    q = lmql.query(SHORT)
    q.force_model(random_model)
    assert q.model is random_model
    forced = await q.__acall__()
    assert forced.prompt == (await lmql.run(SHORT, model=random_model)).prompt


def test_lmqls_test_runner_recognises_async_queries() -> None:
    @lmql.query
    async def test_query():
        """lmql
        "Once upon a time[X]" where len(TOKENS(X)) < 3
        assert len(X) > 0, "X is empty"
        """

    def test_plain() -> None:
        pass

    # src/lmql/tests/expr_test_utils.py::run_all_tests(globals()): a name test* that has
    # lmql_code and is_async is run with loop.run_until_complete(g[k]())
    g = {"test_query": test_query, "test_plain": test_plain, "SHORT": SHORT}
    found = [k for k, v in g.items() if k.startswith("test") and hasattr(v, "lmql_code")]
    assert found == ["test_query"] and test_query.is_async
    loop = asyncio.new_event_loop()
    try:
        result = loop.run_until_complete(g["test_query"]())
    finally:
        loop.close()
    assert result.variables["X"]


# --------------------------------------------------------------------------- lmql.algorithms


async def test_algorithms_map_over_f_and_strings(random_model: cogql.Model) -> None:
    import cogql.compat.algorithms as la

    data = ["A dog walks into a bar.", "A cat goes for a walk."]
    f = lmql.F("Summarize: {text}: [SUMMARY]", "len(TOKENS(SUMMARY)) < 3", is_async=True)
    by_f = await la.map(f, data, model=random_model)
    assert len(by_f) == 2 and all(isinstance(s, str) for s in by_f)
    by_string = await la.map(
        "Summarize: {text}: [SUMMARY]", data, where="len(TOKENS(SUMMARY)) < 3", model=random_model
    )
    assert by_string == by_f
    assert await la.map(f, data, chunksize=1, model=random_model) == by_f


async def test_algorithms_reduce_apply_and_result_shape(random_model: cogql.Model) -> None:
    la = lmql.algorithms

    async def add(a: int, b: int) -> int:
        return a + b

    assert await la.reduce(add, [1, 2, 3]) == 6
    assert await la.reduce(lambda a, b: a * b, [2, 3], initial=10) == 60
    assert await la.apply(add, 1, 2) == 3
    q = lmql.query('"Say {x}:[RESULT]" where len(TOKENS(RESULT)) < 3')
    full = await q("hi", model=random_model)
    assert await la.apply(q, "hi", model=random_model) == full.variables["RESULT"].strip()
    with pytest.raises(TypeError, match="empty sequence"):
        await la.reduce(add, [])


async def test_algorithms_cache(tmp_path: Path, random_model: cogql.Model) -> None:
    la = lmql.algorithms
    cache = tmp_path / "cache.pkl"
    la.set_cache(str(cache))
    try:
        f = lmql.F("Name a color: [C]", "len(TOKENS(C)) < 3", is_async=True)
        before = dict(la.stats)
        first = await la.apply(f, model=random_model)
        again = await la.apply(f, model=random_model)
        assert first == again and cache.is_file()
        assert la.stats["total"] - before["total"] == 2
        assert la.stats["cached"] - before["cached"] == 1
        assert "Cached queries" in la.get_stats()
        la.set_cache(str(cache))  # loaded back from the file
        assert la.cache == {(f.lmql_code,): first}
    finally:
        la.caching(False)
    assert la.cache is None


# --------------------------------------------------------------------------- tracing


async def test_traced_records_every_query(random_model: cogql.Model) -> None:
    q = lmql.query(SHORT, model=random_model)
    with lmql.traced("workload") as tracer:
        await q()
        await asyncio.gather(q(), q())
    cert = lmql.certificate(tracer)
    assert isinstance(cert, lmql.InferenceCertificate)
    data = json.loads(str(cert))
    assert data["name"] == "workload" and data["type"] == "lmql.InferenceCertificate"
    assert len(data["children"]) == 3
    call = data["children"][0]["events"][0]
    assert call["name"] == "lmtp.generate"
    assert call["data"]["model"] == random_model.model_identifier
    assert call["data"]["prompt_tokens"] > 0 and 0 < call["data"]["tokens"] <= 2
    assert data["metrics"]["lmtp"]["generate"] == 3
    assert lmql.certificate(None) is None
    assert "Untraced" in lmql.certificate(None, empty_on_null=True).asdict()["warning"]


async def test_certificate_argument_forms(
    tmp_path: Path, random_model: cogql.Model, capsys: pytest.CaptureFixture[str]
) -> None:
    q = lmql.query(SHORT, model=random_model)
    plain = await q()
    assert (await q(certificate=True)).prompt == plain.prompt
    printed = json.loads(capsys.readouterr().out)
    assert printed["events"][-1] == {
        "name": "lmql.LMQLResult",
        "data": [{"prompt": plain.prompt, "variables": plain.variables}],
    }
    path = tmp_path / "cert.json"
    await q(certificate=str(path))
    assert json.loads(path.read_text())["events"][0]["name"] == "lmtp.generate"
    received: list[Any] = []
    await q(certificate=received.append)
    assert isinstance(received[0], lmql.InferenceCertificate)
    wrapped = await q(certificate="return_dict")
    assert wrapped["result"].prompt == plain.prompt
    assert isinstance(wrapped["certificate"], lmql.InferenceCertificate)
    clause = await lmql.run("argmax(certificate=True) " + SHORT, model=random_model)
    assert clause.prompt == plain.prompt and '"lmtp.generate"' in capsys.readouterr().out
    with pytest.raises(TypeError, match="certificate="):
        await q(certificate=42)


# --------------------------------------------------------------------------- run_file, loop


async def test_run_file(tmp_path: Path, random_model: cogql.Model) -> None:
    path = tmp_path / "q.lmql"
    path.write_text('"Hello {who}[X]" where len(TOKENS(X)) < 3\nreturn X\n')
    direct = await lmql.run(path.read_text(), who="Ada", model=random_model)
    assert await lmql.run_file(str(path), who="Ada", model=random_model) == direct
    assert await lmql.run_file(str(path), "Ada", force_model=random_model) == direct
    seen: list[Any] = []
    await lmql.run_file(str(path), who="Ada", model=random_model, output_writer=seen.append)
    assert any(isinstance(e, cogql.VariableFinished) for e in seen)


def test_run_in_loop(random_model: cogql.Model) -> None:
    result = lmql.run_in_loop(lmql.run(SHORT, model=random_model))
    assert result.variables["X"]


# --------------------------------------------------------------------------- lmql.serve


def _wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"lmql.serve exited early: {proc.stderr.read().decode()}")  # type: ignore[union-attr]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise AssertionError("lmql.serve did not listen in time")


@pytest.mark.slow  # a subprocess serving the model
async def test_serve_serves_a_model_over_lmtp(random_model: cogql.Model) -> None:
    port = free_port()
    folder = random_model.name.removeprefix("local:")
    code = f"import cogql.compat as lmql; lmql.serve({folder!r}, host='127.0.0.1', port={port})"
    env = {**os.environ, "PYTHONPATH": str(Path(cogql.__file__).parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, stderr=subprocess.PIPE)
    try:
        await asyncio.to_thread(_wait_listening, port, proc)
        remote = cogql.model(random_model.name, endpoint=f"127.0.0.1:{port}")
        over_lmtp = await lmql.run(SHORT, model=remote)
        assert over_lmtp.prompt == (await lmql.run(SHORT, model=random_model)).prompt
    finally:
        proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(proc.wait, 30) == 0
