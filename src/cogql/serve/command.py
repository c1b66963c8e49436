"""What `cogql serve-model` needs beyond click: LMQL's command line, mapped onto cogql's.

`lmql serve-model` takes flags and `--key value` pairs that it hands to `from_pretrained`; a
user switching servers should not have to rewrite the command. Flags that only make sense for
LMQL's scheduler are accepted and reported as ignored.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DeployError
from ..extras import require

if TYPE_CHECKING:
    from ..engine.protocol import LMTPEngine

log = logging.getLogger("cogql.serve")

# LMQL options that change its own scheduler or process layout, not the model
IGNORED_FLAGS = {"static", "single_thread", "docker_hide_port", "torch_compile", "silent"}
IGNORED_VALUED = {"loader", "layout", "batch_size"}


class ServeUsageError(DeployError, ValueError):
    """A command line that cannot be served as given (reported before anything starts)."""


@dataclass
class ServeArgs:
    model: str | None
    dtype: str = "auto"
    device: str = "cpu"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    engine: str = "cogql"


def _coerce(value: str) -> Any:
    """LMQL's order: True/False, then int, then float, then the string itself."""
    if value in ("True", "False"):
        return value == "True"
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value


def parse_extra_args(args: list[str]) -> tuple[dict[str, Any], list[str]]:
    """`--key value` / `--key=value` / `--flag` → (from_pretrained kwargs, ignored options)."""
    kwargs: dict[str, Any] = {}
    ignored: list[str] = []
    i = 0
    while i < len(args):
        token = args[i]
        if not token.startswith("--") or len(token) == 2:
            raise ServeUsageError(f"unexpected argument {token!r}")
        name, eq, value = token[2:].partition("=")
        has_value = bool(eq)
        takes_next = i + 1 < len(args) and not args[i + 1].startswith("--")
        if not has_value and name not in IGNORED_FLAGS and takes_next:
            value, has_value = args[i + 1], True
            i += 1
        i += 1
        name = name.replace("-", "_")
        if name in IGNORED_FLAGS or name in IGNORED_VALUED:
            ignored.append(f"--{name}")
        else:
            kwargs[name] = _coerce(value) if has_value else True
    return kwargs, ignored


def resolve_args(
    model: str | None,
    *,
    dtype: str,
    device: str | None,
    cuda: bool,
    extra: list[str],
    engine: str = "cogql",
    tensor_parallel_size: int | None = None,
) -> ServeArgs:
    if dtype in ("4bit", "8bit"):
        raise ServeUsageError(
            f"--dtype {dtype}: quantized loading is not supported; use auto, float32, "
            "float16 or bfloat16"
        )
    kwargs, ignored = parse_extra_args(extra)
    if tensor_parallel_size is not None:
        if engine != "vllm":
            raise ServeUsageError("--tensor-parallel-size needs --engine vllm")
        kwargs["tensor_parallel_size"] = tensor_parallel_size
    name = None if model in (None, "", "auto", "default") else model
    default_device = "auto" if engine == "vllm" else "cpu"
    chosen = device or ("cuda" if cuda else default_device)
    return ServeArgs(name, dtype, chosen, kwargs, ignored, engine)


def engine_factory(args: ServeArgs) -> Callable[[], LMTPEngine]:
    """Builds the chosen engine (cogql's loads its model on its own thread: torch's rule)."""

    def build() -> LMTPEngine:
        from ..engine.choice import open_engine

        return open_engine(
            args.model, engine=args.engine, dtype=args.dtype, device=args.device,
            **args.model_kwargs,
        )  # fmt: skip

    return build


def run_server(
    extra: list[str],
    *,
    model_name: str | None,
    host: str,
    port: int,
    dtype: str,
    device: str | None,
    cuda: bool,
    engine: str,
    tensor_parallel_size: int | None,
    token: str | None,
    allow_origins: tuple[str, ...],
    certfile: str | None,
    keyfile: str | None,
    max_connections: int,
    idle_timeout: float,
    max_frame_mb: float,
    max_backlog_mb: float,
    max_top_logprobs: int,
    log_level: str,
) -> None:
    """`cogql serve-model`, after click: configure logging and limits, serve until a signal."""
    import asyncio

    from .access import AccessPolicy, tls_context
    from .limits import Limits
    from .logs import limit_repeats
    from .server import LMTPServer, serve_until_signalled

    require("serve", "cogql serve-model")
    args = resolve_args(
        model_name, dtype=dtype, device=device, cuda=cuda, extra=extra, engine=engine,
        tensor_parallel_size=tensor_parallel_size,
    )  # fmt: skip
    if keyfile and not certfile:
        raise ServeUsageError("--keyfile needs --certfile")
    access = AccessPolicy.build(token, allow_origins)
    context = tls_context(certfile, keyfile) if certfile else None
    # cogql's own lines at the chosen level; libraries (websockets, torch) only warn
    logging.basicConfig(level="WARNING", format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("cogql").setLevel(log_level.upper())
    limit_repeats()
    if args.ignored:
        log.info("ignoring LMQL options that do not apply to cogql: %s", " ".join(args.ignored))
    limits = Limits(
        max_frame_bytes=int(max_frame_mb * 2**20),
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        max_backlog_bytes=int(max_backlog_mb * 2**20),
        max_top_logprobs=max_top_logprobs,
    )
    ensure_file_limit(max_connections)
    server = LMTPServer(
        engine_factory(args), host=host, port=port, limits=limits, access=access,
        ssl_context=context,
    )  # fmt: skip
    asyncio.run(serve_until_signalled(server))


FILES_BESIDES_CONNECTIONS = 256  # model files, handshakes in progress, the log


def ensure_file_limit(max_connections: int) -> None:
    """Raise the soft limit on open files to what `max_connections` needs, when the hard
    limit allows: past it, asyncio cannot even accept a connection to refuse it."""
    try:
        import resource
    except ImportError:  # not on POSIX
        return
    needed = max_connections + FILES_BESIDES_CONNECTIONS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError):
            target = soft
        if target < needed:
            log.warning(
                "only %d open files allowed (ulimit -n): --max-connections %d may not be "
                "reached; lower it or raise the limit",
                target,
                max_connections,
            )
