"""What `cogql serve-model` needs beyond click: LMQL's command line, mapped onto cogql's.

`lmql serve-model` takes flags and `--key value` pairs that it hands to `from_pretrained`; a
user switching servers should not have to rewrite the command. Flags that only make sense for
LMQL's scheduler are accepted and reported as ignored. A `--key` must be a name the model can
take (from_pretrained's, the model's config.json's, the random model's, llama-cpp-python's
`Llama`'s for a GGUF file on llama.cpp), so a typo such as `--hots` is an error rather than an
argument; anything after `--` is passed on unchecked.
"""

from __future__ import annotations

import difflib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import DeployError, ModelError
from ..extras import require

if TYPE_CHECKING:
    from ..engine.protocol import LMTPEngine

log = logging.getLogger("cogql.serve")

# LMQL options that change its own scheduler or process layout, not the model
IGNORED_FLAGS = {"static", "single_thread", "docker_hide_port", "torch_compile", "silent"}
IGNORED_VALUED = {"loader", "layout", "batch_size"}
# from_pretrained's keyword arguments (transformers 5) a command line may sensibly set; the
# model's config.json keys are accepted too (from_pretrained overrides the config with them)
FROM_PRETRAINED_ARGUMENTS = frozenset({
    "attn_implementation", "cache_dir", "device_map", "force_download", "key_mapping",
    "local_files_only", "low_cpu_mem_usage", "max_memory", "offload_buffers", "offload_folder",
    "quantization_config", "revision", "subfolder", "token", "torch_dtype", "trust_remote_code",
    "use_safetensors", "variant", "weights_only",
})  # fmt: skip
RANDOM_MODEL_ARGUMENTS = frozenset({"seed", "tokenizer", "vocab", "verbose"})


class ServeUsageError(DeployError, ValueError):
    """A command line that cannot be served as given (reported before anything starts)."""


class ModelLoadFailed(ModelError, RuntimeError):
    """The model cannot be served: not found, no such device, or its load failed (the server
    exits with this reason unless told to keep serving)."""


@dataclass
class ServeArgs:
    model: str | None
    dtype: str = "auto"
    device: str = "cpu"
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)
    engine: str = "cogql"
    passthrough: dict[str, Any] = field(default_factory=dict)  # after `--`: unchecked


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
    engine: str | None = None,
    tensor_parallel_size: int | None = None,
    passthrough: list[str] | None = None,
) -> ServeArgs:
    """The command line as `ServeArgs`; no engine named: `pick_engine`'s (llama.cpp for a GGUF
    file where it is installed, else cogql's)."""
    if dtype in ("4bit", "8bit"):
        raise ServeUsageError(
            f"--dtype {dtype}: quantized loading is not supported; use auto, float32, "
            "float16 or bfloat16"
        )
    kwargs, ignored = parse_extra_args(extra)
    unchecked, _ = parse_extra_args(passthrough or [])
    if tensor_parallel_size is not None:
        if engine != "vllm":
            raise ServeUsageError("--tensor-parallel-size needs --engine vllm")
        kwargs["tensor_parallel_size"] = tensor_parallel_size
    name = None if model in (None, "", "auto", "default") else model
    if engine is None:
        from ..engine.choice import pick_engine

        engine = pick_engine(name)
    default_device = "auto" if engine == "vllm" else "cpu"
    chosen = device or ("cuda" if cuda else default_device)
    return ServeArgs(name, dtype, chosen, kwargs, ignored, engine, unchecked)


def prepare(args: ServeArgs, own_options: tuple[str, ...] = ()) -> None:
    """What can fail before the server listens, checked before it does: the model's name
    resolves, the device exists, every `--key` is one the model takes (`own_options`, the
    command's flags as click spells them, are offered as did-you-means). vLLM checks its own."""
    if args.engine == "vllm":
        return
    known, what = _known_arguments(args)
    for name in args.model_kwargs:
        if name not in known:
            raise ServeUsageError(_unknown_argument(name, known, own_options, what))
    _check_device(args.device)
    args.model_kwargs.update(args.passthrough)
    args.passthrough = {}


def _known_arguments(args: ServeArgs) -> tuple[frozenset[str], str]:
    """The `--key` names the model takes on its engine, and how to call them in an error
    (resolving the model on the way: a missing one fails here, before the server listens)."""
    from ..engine.models import RANDOM_MODEL, gguf_file, is_random_model, resolve_model_path

    if args.engine == "llama.cpp":
        from ..engine.choice import check_llama_cpp, llama_cpp_argument_names

        check_llama_cpp(args.model, args.dtype, args.device)
        gguf_file(args.model)
        return (
            llama_cpp_argument_names(),
            "llama-cpp-python's Llama arguments (n_ctx, n_threads, ...)",
        )
    if is_random_model(args.model):
        return RANDOM_MODEL_ARGUMENTS, f"the {RANDOM_MODEL} model's arguments"
    path = resolve_model_path(args.model)
    known = FROM_PRETRAINED_ARGUMENTS | _config_keys(path)
    return known, "from_pretrained's arguments or the model's config.json keys"


def _unknown_argument(
    name: str, known: frozenset[str], own_options: tuple[str, ...], what: str
) -> str:
    spelled = {f"--{k}": k for k in known} | {o: o for o in own_options}
    close = difflib.get_close_matches(f"--{name}", sorted(spelled), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    return (
        f"--{name} is neither a serve-model option nor one of {what}; {hint}(arguments it "
        "does not know go after `--`: cogql serve-model MODEL -- --name value)"
    )


def _config_keys(path: Any) -> frozenset[str]:
    try:
        return frozenset(json.loads((path / "config.json").read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return frozenset()


def _check_device(device: str) -> None:
    if not device.startswith("cuda"):
        return
    import torch

    if not torch.cuda.is_available():
        raise ModelLoadFailed(
            f"--device {device}: this machine has no CUDA device torch can use "
            f"(torch {torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
            "serve on --device cpu"
        )


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
    passthrough: Sequence[str] = (),
    own_options: tuple[str, ...] = (),
    keep_serving_on_failure: bool = False,
    model_name: str | None,
    host: str,
    port: int,
    dtype: str,
    device: str | None,
    cuda: bool,
    engine: str | None,
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
    """`cogql serve-model`, after click: check the model, configure logging and limits, serve
    until a signal; a failed load stops the server with `ModelLoadFailed` unless
    `keep_serving_on_failure` (then every op gets the reason, and `GET /` a 503)."""
    import asyncio

    from .access import AccessPolicy, tls_context
    from .limits import Limits
    from .logs import limit_repeats, log_to_stderr
    from .server import LMTPServer, serve_until_signalled

    require("serve", "cogql serve-model")
    args = resolve_args(
        model_name, dtype=dtype, device=device, cuda=cuda, extra=extra, engine=engine,
        tensor_parallel_size=tensor_parallel_size, passthrough=list(passthrough),
    )  # fmt: skip
    if keyfile and not certfile:
        raise ServeUsageError("--keyfile needs --certfile")
    access = AccessPolicy.build(token, allow_origins)
    context = tls_context(certfile, keyfile) if certfile else None
    log_to_stderr(log_level)
    limit_repeats()
    if args.ignored:
        log.info("ignoring LMQL options that do not apply to cogql: %s", " ".join(args.ignored))
    factory = engine_factory(args)
    try:
        prepare(args, own_options)
    except ModelError as e:  # served as the load's failure, if asked to keep serving
        if not keep_serving_on_failure:
            raise
        factory = failing(e)
    limits = Limits(
        max_frame_bytes=int(max_frame_mb * 2**20),
        max_connections=max_connections,
        idle_timeout=idle_timeout,
        max_backlog_bytes=int(max_backlog_mb * 2**20),
        max_top_logprobs=max_top_logprobs,
    )
    ensure_file_limit(max_connections)
    server = LMTPServer(
        factory, host=host, port=port, limits=limits, access=access, ssl_context=context
    )
    failure = asyncio.run(
        serve_until_signalled(server, stop_on_failure=not keep_serving_on_failure)
    )
    if failure is not None:
        raise ModelLoadFailed(
            f"{failure} (the server stopped; --keep-serving-on-failure keeps it answering "
            "every op with this error)"
        )


def failing(error: Exception) -> Callable[[], LMTPEngine]:
    def fail() -> LMTPEngine:
        raise error

    return fail


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
