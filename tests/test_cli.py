"""The `cogql run` command: in subprocesses (few: one loads the model, the others fail before
loading one) `--json` prints JSON only, `--set` inputs, syntax errors and bad arguments exit
non-zero with line and column; in-process (click's runner) `-` reads stdin, streams the prompt
and prints variables and the distribution, and a missing model is a clear error. Also the seed
query examples/sentiment.lmql, run in-process."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import cogql
from cogql.cli import main

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SCRIPT = Path(sys.executable).with_name("cogql")
COMMAND = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "cogql"]

APPLES = (
    "argmax\n"
    '    "{name} has {n + 1} apples.\\nQ: Is that a lot?\\nA:[ANSWER]"\n'
    'distribution ANSWER in [" yes", " no"]\n'
)


def cogql_run(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*COMMAND, "run", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_json_output_with_set_inputs(tmp_path: Path) -> None:
    """The one subprocess that loads a model."""
    query = tmp_path / "apples.lmql"
    query.write_text(APPLES, encoding="utf-8")
    proc = cogql_run(str(query), "--json", "--set", "name=Ada", "--set", "n=3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)  # nothing but the JSON document on stdout
    assert result["prompt"].startswith("Ada has 4 apples.\nQ: Is that a lot?\nA:")
    assert result["distribution_variable"] == "ANSWER"
    assert result["distribution_values"] == [" yes", " no"]
    probs = dict(result["variables"]["P(ANSWER)"])
    assert math.isclose(sum(probs.values()), 1.0, abs_tol=1e-9)
    assert result["variables"]["ANSWER"] == max(probs, key=probs.__getitem__)


def test_syntax_error_names_line_and_column() -> None:
    proc = cogql_run("-", stdin='argmax\n    "Hello [X"\n')
    assert proc.returncode == 2
    assert "unclosed '['" in proc.stderr
    assert "line 2, column 12" in proc.stderr  # the hole's "["
    assert proc.stdout == ""


def test_bad_set_argument() -> None:
    proc = cogql_run("-", "--set", "no-equals-sign", stdin=APPLES)
    assert proc.returncode == 2
    assert "expected NAME=VALUE" in proc.stderr


# in-process through click's runner: the same command without paying for another model load


def test_stdin_query_streams_the_prompt_and_prints_the_result() -> None:
    result = CliRunner().invoke(main, ["run", "-", "--set", "name=Bob", "--set", "n=1"], APPLES)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("Bob has 2 apples.\nQ: Is that a lot?\nA:")
    assert "ANSWER = " in result.stdout
    assert "P(ANSWER)" in result.stdout and "' yes'" in result.stdout and "█" in result.stdout


def test_missing_model_is_a_clear_error(tmp_path: Path) -> None:
    missing = tmp_path / "some" / "deeply" / "nested" / "folder" / "that-does-not-exist"
    query = f'argmax\n    "Hi[X]"\nfrom "local:{missing}"\n'
    result = CliRunner().invoke(main, ["run", "-"], query)
    assert result.exit_code == 1
    assert "ModelNotFound" in result.stderr and "looked at" in result.stderr
    assert str(missing) in result.stderr  # the whole path, on one line
    assert result.stdout == ""


def test_sentiment_example() -> None:
    result = cogql.run_sync((EXAMPLES / "sentiment.lmql").read_text(encoding="utf-8"))
    analysis = result["ANALYSIS"]
    assert analysis and "\n" not in analysis[:-1]  # STOPS_AT keeps at most the final "\n"
    options = [" positive", " negative", " neutral"]
    assert result["CLASSIFICATION"] in options
    assert result.distribution_values == options
    probs = result.variables["P(CLASSIFICATION)"]
    assert math.isclose(sum(p for _, p in probs), 1.0, abs_tol=1e-9)
    assert result.prompt.endswith("A:" + result["CLASSIFICATION"])


def test_run_on_the_random_model(tmp_path: Path) -> None:
    """`--model random` needs no weights; its values are the in-process random model's."""
    query = tmp_path / "apples.lmql"
    query.write_text(APPLES, encoding="utf-8")
    proc = cogql_run(str(query), "--json", "--model", "random", "--set", "name=Ada", "--set", "n=3")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    here = cogql.run_sync(APPLES, name="Ada", n=3, model=cogql.model("random"))
    assert result["variables"]["ANSWER"] == here["ANSWER"]
    assert dict(result["variables"]["P(ANSWER)"]) == pytest.approx(dict(here["P(ANSWER)"]))


def test_every_command_prints_errors_plainly(tmp_path: Path) -> None:
    """`error: MESSAGE`, never rich markup printed raw (the old build and push errors began
    with a literal `[red]error:[/]`); brackets in messages stay as they are."""
    odd = tmp_path / "[bold]odd[dim]"
    odd.mkdir()
    (odd / "config.toml").write_text('[models.m]\nhuggingface.repo = "a/b"\n')
    (odd / "file").write_text("")
    runner = CliRunner()
    cases = [
        (["replicate", "build", "--config", str(odd / "missing.toml")], 2),
        (
            [
                "replicate",
                "build",
                "--config",
                str(odd / "config.toml"),
                "--out",
                str(odd / "file"),
            ],
            1,
        ),
        (["replicate", "push", "nope", "--out", str(odd)], 1),
        (["replicate", "init", "--config", str(odd / "c.toml"), "--owner", "Bad"], 2),
        (["replicate", "serve", str(odd), "--port", "0"], 1),
    ]
    for args, code in cases:
        result = runner.invoke(main, args)
        assert result.exit_code == code, (args, result.output)
        assert result.stderr.startswith("error: "), (args, result.stderr)
        assert "[red]error" not in result.stderr and "\x1b[" not in result.stderr
    assert "[bold]odd[dim]" in runner.invoke(main, cases[0][0]).stderr  # not read as markup
    proc = subprocess.run(
        [*COMMAND, "replicate", "push", "../../x", "--out", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 1
    assert proc.stderr.startswith("error: '../../x' is not a model name"), proc.stderr
