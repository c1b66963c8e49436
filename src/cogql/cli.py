"""The `cogql` command."""

from __future__ import annotations

import ast
import contextlib
import difflib
import gc
import io
import json
import logging
import os
import sys
import time
from collections.abc import Iterator
from typing import Any, NoReturn

import click
from rich.console import Console
from rich.text import Text

from .errors import ModelError, family
from .extras import MissingExtra, require
from .language.errors import QuerySyntaxError
from .language.source_file import QueryFileError, read_query_source
from .lmtp.cost import current_cost
from .playground.command import playground
from .runtime.events import ModelCall, QueryEvent, TextAppended
from .runtime.interrupt import run_interruptible
from .runtime.missing_inputs import InputError
from .runtime.result import LMQLResult

err = Console(stderr=True, soft_wrap=True)  # never hard-wrap paths in messages

# `cogql run`'s exit status by what failed (README, "CLI")
EXIT_QUERY = 2  # the command line or the query: fix it and run again (also click's usage errors)
EXIT_RUN = 3  # the query ran, and what the model produced fails it
EXIT_MODEL = 4  # the model or the way to it: not found, failed to load, unreachable
EXIT_INTERRUPTED = 130  # Ctrl-C


def fail(message: str, code: int = 1) -> NoReturn:
    """Every command's error: `error: MESSAGE` on stderr (red on a terminal), then exit.
    The message is plain text, never read as markup: errors quote paths and [holes]."""
    err.print(Text.assemble(("error:", "bold red"), " ", message), highlight=False)
    sys.exit(code)


def note(message: str) -> None:
    """A plain progress line on stderr (paths in it are not markup)."""
    err.print(message, markup=False, highlight=False)


def _parse_sets(pairs: tuple[str, ...]) -> dict[str, Any]:
    inputs: dict[str, Any] = {}
    for pair in pairs:
        name, sep, raw = pair.partition("=")
        if not sep or not name.isidentifier():
            raise click.BadParameter(f"expected NAME=VALUE, got {pair!r}", param_hint="--set")
        try:
            inputs[name] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            inputs[name] = raw
    return inputs


class _Status:
    """Tokens so far and time elapsed, on one stderr line rewritten in place, once a run has
    taken over `SHOW_AFTER_S`: only where that line cannot land in the middle of the text (a
    terminal on stderr, the text not streamed to a terminal), never in a pipe or a log."""

    SHOW_AFTER_S = 2.0
    EVERY_S = 0.25

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.started = time.monotonic()
        self.last = 0.0
        self.shown = False

    def update(self) -> None:
        now = time.monotonic()
        if (
            not self.enabled
            or now - self.started < self.SHOW_AFTER_S
            or now - self.last < self.EVERY_S
        ):
            return
        self.last = now
        cost = current_cost()
        tokens = 0 if cost is None else cost.tokens_used
        sys.stderr.write(f"\r\x1b[2Kgenerating: {tokens} tokens, {now - self.started:.0f} s")
        sys.stderr.flush()
        self.shown = True

    def clear(self) -> None:
        if self.shown:
            sys.stderr.write("\r\x1b[2K")
            sys.stderr.flush()
            self.shown = False


def _one_destination() -> bool:
    """Whether stdout and stderr end up in one place (one terminal, `2>&1` into one pipe or
    file), where a stderr line written mid-line lands inside the text. Streams that are not
    files (captured by a test runner, a notebook) count as one place: nothing says otherwise."""
    try:
        out, errs = os.fstat(sys.stdout.fileno()), os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError, io.UnsupportedOperation):
        return True
    return (out.st_dev, out.st_ino, out.st_rdev) == (errs.st_dev, errs.st_ino, errs.st_rdev)


class _Printer:
    """Streams the prompt of the first run to stdout as tokens arrive; traces, warnings and
    errors to stderr, each on its own line: where both streams end up in one place, a stderr
    line waits for the text's line to end (an error ends it first)."""

    def __init__(self, stream: bool, trace: bool = False, status: bool = False) -> None:
        self.stream = stream
        self.trace = trace
        self.mid_line = False  # the streamed text so far does not end with a newline
        self.shared = stream and _one_destination()
        self.pending: list[Text] = []  # lines waiting for the text's line to end
        self.status = _Status(status and sys.stderr.isatty() and not self.shared)

    def __call__(self, event: QueryEvent) -> None:
        self.status.update()
        if isinstance(event, TextAppended) and self.stream and event.run == 0:
            if event.text:  # before writing: a Ctrl-C may land right after the write
                self.mid_line = not event.text.endswith("\n")
            sys.stdout.write(event.text)
            sys.stdout.flush()
            if not self.mid_line:
                self._flush_pending()
        elif isinstance(event, ModelCall) and self.trace:
            self.line(
                Text.assemble(
                    ("model call", "dim"),
                    f" {event.kind} run={event.run} prompt={event.prompt_tokens} "
                    f"tokens={event.tokens} {event.seconds * 1000:.0f} ms",
                )
            )

    def line(self, text: Text) -> None:
        """A line for stderr (a trace, a log record): now, or once the text's line ends."""
        self.pending.append(text)
        if not (self.mid_line and self.shared):
            self._flush_pending()

    def _flush_pending(self) -> None:
        self.status.clear()
        for text in self.pending:
            err.print(text, highlight=False)
        self.pending.clear()

    def end_line(self) -> None:
        """End the streamed text's line, so that what is printed next starts its own."""
        self.status.clear()
        if self.mid_line:
            sys.stdout.write("\n")
            sys.stdout.flush()
            self.mid_line = False
        self._flush_pending()


class _LogLines(logging.Handler):
    """cogql's log records during `cogql run` (warnings by default), through the printer so
    that they never land inside the streamed text."""

    def __init__(self, printer: _Printer) -> None:
        super().__init__()
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        level = record.levelname.lower()
        style = "bold yellow" if record.levelno >= logging.WARNING else "dim"
        self.printer.line(Text.assemble((f"{level}:", style), " ", record.getMessage()))


@contextlib.contextmanager
def _logging_to(printer: _Printer, level: str) -> Iterator[None]:
    """cogql's log records at `level` and above go through `printer` for the block (the
    command may run inside a process that logs otherwise: click's test runner)."""
    logger = logging.getLogger("cogql")
    handler = _LogLines(printer)
    saved = logger.level, logger.propagate
    logger.setLevel(level.upper())
    logger.addHandler(handler)
    logger.propagate = False  # not twice (Python's last-resort handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.level, logger.propagate = saved


def _run_model(model_name: str | None, engine: str | None) -> Any:
    """--model (and --engine) as a model: an LMTP endpoint, a name run in process on an
    engine, or any name cogql.model takes."""
    import cogql
    from cogql.runtime.model import ENDPOINT_SCHEMES, typed_model

    if engine:
        if model_name and model_name.startswith(ENDPOINT_SCHEMES):
            raise click.UsageError("--engine runs a model in process; --model names a server")
        name = model_name or "default"
        return cogql.model(name if name.startswith("local:") else f"local:{name}", engine=engine)
    return typed_model(model_name)


def _check_sets(inputs: dict[str, Any], reads: tuple[str, ...]) -> None:
    for name in inputs:
        if name not in reads:
            close = difflib.get_close_matches(name, reads, n=1)
            hint = f"did you mean {close[0]}? " if close else ""
            reads_what = f"its inputs are {', '.join(reads)}" if reads else "it reads no inputs"
            raise click.BadParameter(
                f"the query does not read {name!r}: {hint}({reads_what})", param_hint="--set"
            )


def _run_query(
    source: str, inputs: dict[str, Any], runtime: dict[str, Any], printer: _Printer, model: Any
) -> Any:
    """`cogql run`'s query, run to its result; errors exit with their status."""
    import cogql

    try:
        query = cogql.query_from_string(source)
        if "decoder" in runtime and query.compiled.decoder is not None:
            raise click.BadParameter(
                f"the query names its decoder ({query.compiled.decoder.name}); edit the query "
                "to change it", param_hint="--decoder",
            )  # fmt: skip
        _check_sets(inputs, query.compiled.free_variables)
        if model is not None:
            runtime = {**runtime, "model": model}
        result = run_interruptible(query.run(**inputs, **runtime, output=printer))
    except click.ClickException:
        raise
    except KeyboardInterrupt:
        printer.end_line()
        note("interrupted")
        sys.exit(EXIT_INTERRUPTED)
    except Exception as e:
        printer.end_line()
        # errors that point into the query show where; others say what they are
        located = isinstance(e, QuerySyntaxError | cogql.ConstraintUnsatisfiedError)
        message = str(e) if located else f"{type(e).__name__}: {e}"
        if isinstance(e, InputError):
            message += "\nhint: give the query its inputs with --set NAME=VALUE"
        fail(message, exit_status(e))
    printer.end_line()
    return result


def _print_cost(result: Any) -> None:
    """--trace: what the query cost, with one line per Replicate prediction."""
    first = result[0] if isinstance(result, list) and result else result
    cost = getattr(first, "cost", None)
    if cost is None:
        return
    err.print(f"[dim]cost[/] {cost.summary()}", highlight=False)
    for p in cost.predictions:
        seconds = "?" if p.predict_time is None else f"{p.predict_time:.3f} s"
        err.print(
            f"[dim]prediction[/] {p.id} {'+'.join(p.ops)} {p.status} "
            f"predict_time={seconds} tokens_generated={p.tokens_generated}",
            highlight=False,
        )


def _bar(p: float, width: int = 30) -> str:
    full = round(p * width)
    return "█" * full + "·" * (width - full)


def _print_result(result: Any, console: Console) -> None:
    if not isinstance(result, LMQLResult):
        console.print(repr(result))
        return
    for name, value in result.variables.items():
        if name.startswith(("P(", "log P(")):
            continue
        console.print(f"[bold]{name}[/] = {value!r}", highlight=False)
    var = result.distribution_variable
    if var is not None:
        console.print(f"[bold]P({var})[/]")
        for option, p in result.variables[f"P({var})"]:
            console.print(f"  {option!r:>16} {_bar(p)} {p:6.3f}", highlight=False)


def _to_json(result: Any) -> Any:
    """The result as JSON: LMQL's to_dict, with the sequence's log-prob and what it cost."""
    if isinstance(result, list):
        return [_to_json(r) for r in result]
    if isinstance(result, LMQLResult):
        cost = None if result.cost is None else result.cost.to_dict()
        return {**result.to_dict(), "logprob": result.logprob, "cost": cost}
    return result


class _Commands(click.Group):
    """A command that needs a pip extra this install lacks says which one, not a traceback."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except MissingExtra as e:
            fail(str(e))


@click.group(cls=_Commands)
@click.version_option(package_name="cogql")
def main() -> None:
    """Run LMQL queries on models you host."""


def _read_query(path: str) -> str:
    """The query in the file at `path` (`-`: standard input), or exit with a clear error."""
    name = "standard input" if path == "-" else click.format_filename(path)
    try:
        with click.open_file(path, "rb") as stream:
            return read_query_source(stream, name)
    except OSError as e:  # opening it: missing, a folder, not allowed
        message = f"cannot read {name}: {e.strerror or e}"
    except QueryFileError as e:
        message = str(e)
    fail(message, EXIT_QUERY)


def exit_status(error: Exception) -> int:
    """`cogql run`'s status for an error: by its family; 1 for anything else (a bug)."""
    return {"query": EXIT_QUERY, "run": EXIT_RUN, "model": EXIT_MODEL}.get(family(error), 1)


@main.command()
@click.argument("file", type=click.Path(allow_dash=True))
@click.option("--model", "model_name", metavar="MODEL",
              help="Model to use instead of the query's from clause: a name cogql.model takes, "
                   "or an LMTP server (ws://host:port, wss://..., lmtp://...).")  # fmt: skip
@click.option("--set", "sets", multiple=True, metavar="NAME=VALUE", help="A query input.")
@click.option("--decoder", type=click.Choice(["argmax", "sample", "beam", "beam_sample", "best_k"]),
              help="Decoder, for a query without a decoder clause (default: argmax).")  # fmt: skip
@click.option("--max-len", type=click.IntRange(1), help="Most tokens of the whole prompt (2048).")
@click.option("--temperature", type=click.FloatRange(0), help="Sampling temperature.")
@click.option("--seed", type=int, help="Seed of sampling decoders: the same run again.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON only.")
@click.option(
    "--trace",
    is_flag=True,
    help="Print each model call, then the cost: predictions (ids, predict_time) and tokens.",
)
@click.option("-q", "--quiet", is_flag=True,
              help="Print the result only: no streamed text, progress or warnings.")  # fmt: skip
@click.option("--log-level", type=click.Choice(["debug", "info", "warning", "error"]),
              default="warning", show_default=True, help="cogql's log lines on stderr.")  # fmt: skip
@click.option("--engine", type=click.Choice(["cogql", "vllm", "llama.cpp"]), default=None,
              help="Run --model (default: the embedded model) in process on this engine.")  # fmt: skip
def run(
    file: str,
    model_name: str | None,
    sets: tuple[str, ...],
    decoder: str | None,
    max_len: int | None,
    temperature: float | None,
    seed: int | None,
    as_json: bool,
    trace: bool,
    quiet: bool,
    log_level: str,
    engine: str | None,
):
    """Run the query in FILE (use - for standard input; at most 1 MiB of UTF-8 text).

    One Ctrl-C stops the run, cancelling its model calls, and exits with status 130. Errors
    exit with 2 (the query or its inputs), 3 (the run: e.g. no value satisfies a constraint)
    or 4 (the model: not found, failed to load, unreachable).
    """
    source = _read_query(file)
    inputs = _parse_sets(sets)
    printer = _Printer(not (as_json or quiet), trace, status=not quiet)
    options = {"decoder": decoder, "max_len": max_len, "temperature": temperature, "seed": seed}
    runtime = {k: v for k, v in options.items() if v is not None}
    with _logging_to(printer, "error" if quiet else log_level):
        result = _run_query(source, inputs, runtime, printer, _run_model(model_name, engine))
    if as_json:
        click.echo(json.dumps(_to_json(result), indent=2))
    else:
        console = Console(soft_wrap=True)  # values are printed whole, piped or not
        if not quiet:
            console.print()
        for item in result if isinstance(result, list) else [result]:
            console.rule(style="dim")
            _print_result(item, console)
    if trace:
        _print_cost(result)
    gc.freeze()  # the process ends here: spare interpreter shutdown a collection over the model


main.add_command(playground)  # cogql playground: playground/command.py

# --------------------------------------------------------------------------- serve-model


class _ServeCommand(click.Command):
    """serve-model's command line: what follows `--` is kept apart (model arguments passed on
    unchecked), where click would mix it into the other extra arguments."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if "--" in args:
            cut = args.index("--")
            ctx.meta["passthrough"] = args[cut + 1 :]
            args = args[:cut]
        return super().parse_args(ctx, args)


@main.command(
    name="serve-model",
    cls=_ServeCommand,
    context_settings={"ignore_unknown_options": True, "allow_extra_args": True},
)
@click.argument("model_name", metavar="MODEL", required=False, default="default")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8080, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--dtype",
    default="auto",
    show_default=True,
    type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
    help="Weight precision (auto: float32 on CPU with float16 decode, float16 on CUDA).",
)
@click.option("--device", default=None, help="torch device: cpu (default), cuda, cuda:1, ...")
@click.option("--cuda", is_flag=True, help="LMQL's flag: same as --device cuda.")
@click.option("--engine", default=None, type=click.Choice(["cogql", "vllm", "llama.cpp"]),
              help="What runs the model: cogql's engine (default), vLLM (GPUs, big models; "
                   "`--key value` options then go to vLLM's engine arguments) or llama.cpp "
                   "(default for a .gguf file where llama-cpp-python is installed; options go "
                   "to its Llama: --n_ctx, --n_threads).")  # fmt: skip
@click.option("--tensor-parallel-size", type=click.IntRange(1), default=None,
              help="vLLM: GPUs to spread the model over (default: every GPU it fits).")  # fmt: skip
@click.option("--token", envvar="COGQL_SERVE_TOKEN", default=None, show_envvar=True,
              help="Require 'Authorization: Bearer TOKEN' at the handshake (HTTP 401 otherwise).")  # fmt: skip
@click.option("--allow-origin", "allow_origins", multiple=True, metavar="ORIGIN",
              help="A browser origin (https://host:port) allowed to connect; repeatable, * for "
                   "any. Browser requests from other origins get HTTP 403.")  # fmt: skip
@click.option("--certfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM certificate: serve wss:// (TLS).")  # fmt: skip
@click.option("--keyfile", type=click.Path(exists=True, dir_okay=False), default=None,
              help="PEM private key for --certfile (if not inside it).")  # fmt: skip
@click.option("--max-connections", default=256, show_default=True, type=click.IntRange(1),
              help="Open connections; beyond it handshakes get HTTP 503.")  # fmt: skip
@click.option("--idle-timeout", default=600.0, show_default=True, type=click.FloatRange(0),
              help="Seconds a connection with no streams and no frames stays open (0: forever).")  # fmt: skip
@click.option("--max-frame-mb", default=8.0, show_default=True, type=click.FloatRange(0.001, 1024),
              help="Largest incoming frame; a larger one closes its connection.")  # fmt: skip
@click.option("--max-backlog-mb", default=16.0, show_default=True,
              type=click.FloatRange(0.001, 4096),
              help="Unsent replies per connection; beyond it the connection is closed.")  # fmt: skip
@click.option("--max-top-logprobs", default=20, show_default=True, type=click.IntRange(1, 10**6),
              help="Largest top_logprobs a GENERATE may ask for.")  # fmt: skip
@click.option("--keep-serving-on-failure", is_flag=True,
              help="If the model fails to load, keep listening: GET / answers 503 and every "
                   "op gets the reason (default: exit with status 4).")  # fmt: skip
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]))  # fmt: skip
@click.pass_context
def serve_model(ctx: click.Context, **options: Any) -> None:
    """Serve MODEL over LMTP (LMQL's token protocol) on ws://HOST:PORT/.

    MODEL is a folder with config.json, local:PATH, a .gguf file (or llama.cpp:FILE.gguf), a
    cached hub id, `default` for the embedded SmolLM2, or `random` (LMQL's weightless test
    model: --seed N, --tokenizer PATH). LMQL's `--key value` options go to from_pretrained
    when it takes them (from_pretrained's arguments, the model's config.json keys; anything
    after `--` is passed on unchecked); with --engine vllm they go to vLLM's engine arguments,
    on llama.cpp (a .gguf file) to llama-cpp-python's Llama.
    LMQL's scheduler flags (--static, --layout, ...) are accepted and ignored. The model is
    checked before the server listens; if it fails to load, the command exits with status 4.
    """
    from .serve.access import AccessConfigError
    from .serve.command import ServeUsageError, run_server

    own = tuple(o for p in ctx.command.params for o in p.opts if o.startswith("--"))
    try:
        run_server(
            ctx.args, passthrough=ctx.meta.get("passthrough", []), own_options=own, **options
        )
    except (ServeUsageError, AccessConfigError) as e:
        raise click.UsageError(str(e)) from None
    except MissingExtra:
        raise  # the group's handler names the extra
    except ModelError as e:
        fail(f"{type(e).__name__}: {e}", EXIT_MODEL)
    except OSError as e:  # e.g. the port is taken
        fail(f"cannot listen on {options['host']}:{options['port']}: {e}")


# ---- cogql replicate: deploy models to Replicate as Cog projects ---------------------------


@main.group()
def replicate() -> None:
    """Package models as Cog projects for Replicate (LMTP over Cog)."""


@replicate.command("init")
@click.option(
    "--config", "config_path", default="config.toml", show_default=True, type=click.Path()
)
@click.option("--owner", help="Your Replicate username (fills in dest_prefix).")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def replicate_init(config_path: str, owner: str | None, force: bool) -> None:
    """Write a commented example config.toml."""
    from pathlib import Path

    from .replicate.deploy.build import init_config
    from .replicate.deploy.config import ConfigError

    try:
        path = init_config(Path(config_path), owner=owner, force=force)
    except (FileExistsError, ConfigError) as e:
        fail(str(e), 2 if isinstance(e, ConfigError) else 1)
    except OSError as e:
        fail(f"cannot write {config_path}: {e}")
    note(f"wrote {path}; edit it, then run: cogql replicate build")


@replicate.command("build")
@click.argument("models", nargs=-1)
@click.option(
    "--config", "config_path", default="config.toml", show_default=True, type=click.Path()
)
@click.option(
    "--out", default="work", show_default=True, type=click.Path(), help="Projects go to OUT/NAME."
)
@click.option("--force", is_flag=True, help="Overwrite files cogql made even if edited since.")
@click.option("--check", is_flag=True, help="Validate and find every file; write nothing.")
def replicate_build(
    models: tuple[str, ...], config_path: str, out: str, force: bool, check: bool
) -> None:
    """Build a Cog project per model in config.toml (or only the MODELS named)."""
    from pathlib import Path

    require("deploy", "cogql replicate build")
    from .replicate.deploy.build import BuildError, build
    from .replicate.deploy.config import ConfigError, load_config
    from .replicate.deploy.project import ProjectConflict
    from .replicate.deploy.requirements import RequirementsError

    try:
        config = load_config(config_path)
        results = build(config, Path(out).absolute(), models, force=force, check=check)
    except (ConfigError, BuildError, ProjectConflict, RequirementsError) as e:
        fail(str(e), 2 if isinstance(e, ConfigError) else 1)
    except OSError as e:  # the disk, not the input: full, read-only, permissions
        fail(f"the build stopped: {e}")
    for r in results:
        b = r.checkpoint_bytes
        size = f"{b / 1e9:.2f} GB" if b >= 1e9 else f"{b / 1e6:.1f} MB"
        if check:
            note(f"ok  {r.name}: {r.origin} ({size}) → {r.folder}")
            continue
        c = r.counts
        note(
            f"built {r.name} in {r.folder} from {r.origin} ({size}): {c['written']} written, "
            f"{c['linked']} linked, {c['copied']} copied, {c['kept']} unchanged, "
            f"{c['removed']} removed"
        )
        if r.image:
            note(f"  push: cogql replicate push {r.name}  (→ {r.image})")
        else:
            note("  no dest_prefix in the config: no push script")


@replicate.command("serve")
@click.argument("workdirs", nargs=-1, required=True, type=click.Path(exists=True, file_okay=False))
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on.")
@click.option("--port", default=8000, show_default=True, type=int, help="Port to listen on.")
@click.option("--token", help="The API token clients must send (default: a new random one).")
@click.option("--latency", default=0.0, show_default=True, type=click.FloatRange(min=0),
              help="Seconds each prediction stays starting (Replicate's queue and network).")  # fmt: skip
@click.option("--max-body-mb", default=8.0, show_default=True, type=click.FloatRange(min=0.001),
              help="Largest request body accepted (MiB); larger ones get a 413.")  # fmt: skip
@click.option("--keep", default=1000, show_default=True, type=click.IntRange(min=0),
              help="Finished predictions kept (with inputs, outputs, events); older ones are "
                   "forgotten, as are any finished over an hour ago.")  # fmt: skip
@click.option("--log-level", default="info", show_default=True,
              type=click.Choice(["debug", "info", "warning", "error"]),
              help="info: one line per request (method, path, status, ms, prediction id).")  # fmt: skip
def replicate_serve(
    workdirs: tuple[str, ...],
    host: str,
    port: int,
    token: str | None,
    latency: float,
    max_body_mb: float,
    keep: int,
    log_level: str,
) -> None:
    """Serve Replicate's HTTP API on HOST:PORT in front of the built projects WORKDIR...

    Each WORKDIR is a project (work/NAME) or a folder of them (work/). Every project runs on
    its own real Cog server; its model is OWNER/NAME from the config's dest_prefix (local/NAME
    without one). Prints REPLICATE_API_TOKEN and REPLICATE_BASE_URL for clients.
    """
    from pathlib import Path

    require("deploy", "cogql replicate serve")
    from .replicate.emulator import EmulatorError, ReplicateEmulator
    from .replicate.emulator.command import serve
    from .serve.logs import log_to_stderr

    log_to_stderr(log_level)
    emu = ReplicateEmulator([Path(w) for w in workdirs], token=token, latency=latency, host=host,
                   port=port, wait_ready=False, max_body_bytes=int(max_body_mb * 1024 * 1024),
                   max_kept=keep)  # fmt: skip
    try:
        serve(emu, click.echo, note)
    except EmulatorError as e:
        fail(str(e))


@replicate.command("push", context_settings={"ignore_unknown_options": True})
@click.argument("name")
@click.argument("cog_args", nargs=-1, type=click.UNPROCESSED)
@click.option("--out", default="work", show_default=True, type=click.Path())
def replicate_push(name: str, cog_args: tuple[str, ...], out: str) -> None:
    """Push the built project OUT/NAME to Replicate (runs its push script)."""
    from pathlib import Path

    from .replicate.deploy.push import PushError, project_folder, push

    try:
        code = push(project_folder(Path(out).absolute(), name), list(cog_args))
    except PushError as e:
        fail(str(e))
    sys.exit(code)
