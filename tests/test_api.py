"""The public Python API: cogql.run (async) and run_sync, cogql.query as a string query and as a
decorator (docstring or `lmql`-marked body string, arguments bound as inputs, scope captured),
model selection (`from` clause with cogql.model / lmql.model / a string, `model=`), LMQLResult,
and the errors for missing inputs, unknown models and synchronous calls inside an event loop."""

from __future__ import annotations

from pathlib import Path

import pytest

import cogql
from cogql.engine.models import ModelNotFound
from cogql.errors import ModelError
from cogql.runtime.query import InputError, SyncCallInLoopError

GREETING = 'argmax\n    "Say hello to {name}:[X]"\nwhere len(TOKENS(X)) < 4'
SUFFIX = "the end"  # read by a decorated query through its captured scope


def tiny_query(from_clause: str) -> str:
    return f'argmax\n    "Once upon a time[X]"\n{from_clause}\nwhere len(TOKENS(X)) < 5'


# --------------------------------------------------------------------------- run / run_sync


async def test_run_is_awaitable_and_binds_inputs() -> None:
    result = await cogql.run(GREETING, name="Ada")
    assert isinstance(result, cogql.LMQLResult)
    assert result.prompt == "Say hello to Ada:" + result["X"]
    assert result.variables == {"X": result["X"]} and result["X"]


def test_run_sync_binds_keyword_inputs() -> None:
    ada = cogql.run_sync(GREETING, name="Ada")
    bob = cogql.run_sync(GREETING, name="Bob")
    assert ada.prompt.startswith("Say hello to Ada:")
    assert bob.prompt.startswith("Say hello to Bob:")


async def test_run_sync_inside_an_event_loop_is_refused() -> None:
    with pytest.raises(SyncCallInLoopError, match=r"write `await query.run\(...\)`"):
        cogql.run_sync(GREETING, name="Ada")
    query = cogql.query_from_string(GREETING, is_async=False)
    with pytest.raises(SyncCallInLoopError, match="a running event loop, as in a Jupyter"):
        query(name="Ada")
    assert isinstance(await query.run(name="Ada"), cogql.LMQLResult)  # the way that works


def test_misspelt_arguments_are_errors_with_a_suggestion() -> None:
    with pytest.raises(InputError, match=r"unknown argument nme=.*did you mean name=\?"):
        cogql.run_sync(GREETING, nme="Ada")
    with pytest.raises(InputError, match=r"unknown argument modle=.*did you mean model=\?"):
        cogql.run_sync(GREETING, name="Ada", modle="random")
    with pytest.raises(cogql.ModelConfigError, match=r"unknown option sede=; did you mean seed="):
        cogql.model("random", sede=3)
    with pytest.raises(cogql.ModelConfigError, match=r"temperature=.*an argument of the query"):
        cogql.model("random", temprature=0.5)
    # LMQL's options and cogql's are accepted; an input the query reads is never refused
    cogql.model("local:gpt2", cuda=True, dtype="float32", load_timeout=5)
    cogql.run_sync('"{n} [X]" where len(TOKENS(X)) < 2', n=1)


def test_version_and_notebook_display() -> None:
    from importlib.metadata import version

    assert cogql.__version__ == version("cogql")
    result = cogql.run_sync(GREETING, name="<Ada & co>")
    html = result._repr_html_()
    assert "&lt;Ada &amp; co&gt;" in html and "<Ada" not in html  # escaped
    assert "<th style='text-align:left'>X</th>" in html and f"{result.logprob:.3f}" in html


def test_result_fields_and_dict() -> None:
    result = cogql.run_sync(GREETING, name="Ada")
    assert result.distribution_variable is None and result.distribution_values is None
    assert result.to_dict() == {
        "prompt": result.prompt,
        "variables": {"X": result["X"]},
        "distribution_variable": None,
        "distribution_values": None,
    }


# --------------------------------------------------------------------------- cogql.query


async def test_query_from_a_string_is_async_and_takes_inputs() -> None:
    q = cogql.query(GREETING)
    by_keyword = await q(name="Ada")
    by_position = await q("Ada")  # one free variable: bound positionally
    assert by_keyword.prompt == by_position.prompt
    assert by_keyword.prompt.startswith("Say hello to Ada:")


def test_decorator_on_a_docstring_query_binds_arguments() -> None:
    @cogql.query
    def greet(name: str, punctuation: str = "!") -> None:
        """
        argmax
            "Say hello to {name}{punctuation}\nReply:[X]"
        where len(TOKENS(X)) < 4
        """

    result = greet("Ada")
    assert isinstance(result, cogql.LMQLResult)
    # `\n` stays an escape in the query source, so the prompt holds a real newline
    assert result.prompt.startswith("Say hello to Ada!\nReply:")
    assert greet("Bob", punctuation="?").prompt.startswith("Say hello to Bob?\nReply:")


def test_decorator_on_an_lmql_body_string_captures_scope() -> None:
    @cogql.query
    def tell(topic: str) -> None:
        """lmql
        argmax
            "A story about {topic}, {SUFFIX}:[X]"
        where len(TOKENS(X)) < 3
        """

    result = tell(topic="cats")
    assert result.prompt.startswith("A story about cats, the end:")
    assert result["X"]


async def test_decorator_on_an_async_function_is_awaitable() -> None:
    @cogql.query
    async def greet(name: str) -> None:
        """
        argmax
            "Say hello to {name}:[X]"
        where len(TOKENS(X)) < 4
        """

    result = await greet("Ada")
    assert result.prompt == (await cogql.run(GREETING, name="Ada")).prompt


def test_decorator_with_defaults(random_model: cogql.Model) -> None:
    @cogql.query(model=random_model)
    def story() -> None:
        """
        argmax
            "Once upon a time[X]"
        where len(TOKENS(X)) < 5
        """

    assert story()["X"] == cogql.run_sync(tiny_query(""), model=random_model)["X"]


def test_function_arguments_missing() -> None:
    @cogql.query
    def greet(name: str) -> None:
        """
        argmax
            "Say hello to {name}:[X]"
        """

    with pytest.raises(InputError, match=r"greet\(\)"):
        greet()


# --------------------------------------------------------------------------- models


def test_model_in_from_clause_and_as_argument(tiny_model_path: Path) -> None:
    name = f"local:{tiny_model_path}"
    forms = [
        f"from cogql.model({name!r})",
        f"from lmql.model({name!r})",
        f"from {name!r}",
    ]
    values = [cogql.run_sync(tiny_query(f))["X"] for f in forms]
    by_argument = cogql.run_sync(tiny_query(""), model=cogql.model(name))["X"]
    embedded = cogql.run_sync(tiny_query(""))["X"]
    assert values == [by_argument] * 3
    assert by_argument != embedded  # the random-weight model, not the default one, ran


def test_model_argument_overrides_the_from_clause(random_model: cogql.Model) -> None:
    overridden = cogql.run_sync(tiny_query('from "local:/nowhere/at/all"'), model=random_model)
    assert overridden["X"] == cogql.run_sync(tiny_query(""), model=random_model)["X"]


def test_missing_input_is_a_clear_error() -> None:
    with pytest.raises(InputError, match=r"Failed to resolve variable.*'name'"):
        cogql.run_sync(GREETING)


def test_unknown_local_model_says_where_it_looked(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelNotFound) as err:
        cogql.run_sync(tiny_query(f'from "local:{missing}"'))
    message = str(err.value)
    assert str(missing) in message and "no such file or folder" in message
    assert "Hugging Face cache" in message


@pytest.mark.parametrize("name", ["chatgpt", "openai/gpt-4o", "openai/gpt-3.5-turbo-instruct"])
def test_lmqls_openai_names_go_to_openais_api(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """As in LMQL, `openai/...` and the aliases name models on OpenAI's API (no key: a clear
    error before any request)."""
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("OPENAI_API_BASE", raising=False)
    with pytest.raises(ModelError, match=r"needs an API key.*OPENAI_API_KEY"):
        cogql.run_sync(tiny_query(f'from "{name}"'))


def test_model_name_must_be_a_string() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        cogql.model(42)  # type: ignore[arg-type]
