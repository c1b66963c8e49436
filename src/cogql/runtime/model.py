"""`cogql.model(...)`: a model reference, resolved to an LMTP client on first use.

Names and endpoints follow LMQL: `openai/<model>` (and `chatgpt`, `gpt-4`) is a model behind
an OpenAI-compatible API (runtime/openai_model.py); otherwise no endpoint (or a `local:` name)
runs the model in this process, and other endpoints are remote LMTP servers or Replicate.
"""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..extras import require
from ..lmtp.client import LMTPClient, LMTPError
from ..lmtp.transports.openai.settings import is_openai_name
from ..locations import progress_shown
from ..model_names import EMBEDDED_ALIASES, EMBEDDED_MODEL, RANDOM_MODEL
from ..tokenizer import Tokenizer, load_tokenizer

if TYPE_CHECKING:
    from .scoring import ScoringResult

log = logging.getLogger("cogql.runtime")


class ModelConfigError(ModelError, ValueError):
    """A model reference that cannot be used as given."""


@dataclass
class ConnectedModel:
    """A live client plus the tokenizer the client uses for prompts and options."""

    client: LMTPClient
    tokenizer: Tokenizer
    capabilities: frozenset[str]
    bos_token_id: int | None
    # role tags as LMQL's `<lmql:role/>` markers, which a chat endpoint splits into messages
    chat_markers: bool = False


@dataclass
class Model:
    """LMQL's `lmql.model(name, endpoint=..., tokenizer=...)` (named LLM there)."""

    name: str | None = None
    endpoint: str | None = None
    tokenizer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _connection: ConnectedModel | None = field(default=None, repr=False)
    token: str | None = field(default=None, repr=False)  # an LMTP server's bearer token

    @property
    def model_identifier(self) -> str:
        return self.name or EMBEDDED_IDENTIFIER

    async def connect(self) -> ConnectedModel:
        if self._connection is None:
            self._connection = await self._open()
        return self._connection

    async def score(self, prompt: str, values: str | list[str]) -> ScoringResult:
        """LMQL's `LLM.score`: `cogql.score` on this model."""
        from .scoring import score

        return await score(prompt, values, model=self)

    def score_sync(self, prompt: str, values: str | list[str]) -> ScoringResult:
        from .scoring import score_sync

        return score_sync(prompt, values, model=self)

    async def generate(self, prompt: str, max_tokens: int | None = None, **kwargs: Any) -> Any:
        """LMQL's `LLM.generate`: `cogql.generate` on this model."""
        from .functions import generate

        return await generate(prompt, max_tokens, model=self, **kwargs)

    def generate_sync(self, prompt: str, max_tokens: int | None = None, **kwargs: Any) -> Any:
        from .functions import generate_sync

        return generate_sync(prompt, max_tokens, model=self, **kwargs)

    @classmethod
    def from_descriptor(cls, model_identifier: str | Model | None, **kwargs: Any) -> Model:
        """LMQL's `LLM.from_descriptor`: `model(name, **kwargs)`; a Model is returned as is."""
        if isinstance(model_identifier, Model) or (model_identifier is None and not kwargs):
            return as_model(model_identifier)
        return model(model_identifier, **kwargs)

    @property
    def configuration(self) -> dict[str, Any]:
        """The keyword arguments the model was made with (LMQL's `LLM.configuration`)."""
        extra = {"endpoint": self.endpoint, "tokenizer": self.tokenizer}
        return {**{k: v for k, v in extra.items() if v is not None}, **self.options}

    def get_tokenizer(self) -> Any:
        """LMQL's `LLM.get_tokenizer()`: the model's tokenizer as an `lmql.tokenizer` object
        (the connected one, else loaded by `tokenizer=` or the model's name)."""
        from .lmql_tokenizer import tokenizer, wrap

        if self._connection is not None:
            return wrap(self._connection.tokenizer, self.model_identifier)
        return tokenizer(self.tokenizer or self.name or EMBEDDED_IDENTIFIER)

    async def _open(self) -> ConnectedModel:
        endpoint = self.endpoint or ""
        name = self.name or ""
        if is_replicate(name, endpoint):  # the Replicate client is only imported when needed
            from .replicate_model import open_replicate

            return await open_replicate(name, endpoint, self.tokenizer, self.options)
        if is_openai_name(name):
            from .openai_model import open_openai

            return await open_openai(name, endpoint, self.tokenizer, self.options)
        if endpoint and not endpoint.startswith("local:"):
            return await _open_remote(name, endpoint, self.tokenizer, self.options, self.token)
        require("engine", f"the in-process model {name or 'default'!r}")
        local_name = name.removeprefix("local:") or None
        from ..lmtp.transports.inprocess import InProcessTransport, local_engine

        engine_name = self.options.get("engine")  # None: llama.cpp for a GGUF, else cogql's
        dtype = str(self.options.get("dtype", "auto"))
        device = str(self.options.get("device", "auto" if engine_name == "vllm" else "cpu"))
        with announce_slow_load(local_name or EMBEDDED_MODEL):
            engine = await asyncio.to_thread(
                local_engine,
                local_name,
                engine=engine_name,
                dtype=dtype,
                device=device,
                **self._model_kwargs(),
            )
        tok = load_tokenizer(self.tokenizer) if self.tokenizer else engine.tokenizer
        # extensions=False makes the client use LMQL's method, as against an LMQL server
        use_ext = bool(self.options.get("extensions", True))
        client = LMTPClient(
            InProcessTransport(engine), model=name, tokenizer=tok, use_extensions=use_ext
        )
        caps = await client.capabilities()
        return ConnectedModel(client, tok, caps, tok.bos_token_id)

    def _model_kwargs(self) -> dict[str, Any]:
        """What the in-process engine's model is made of beyond its name: for `random`, its
        seed and tokenizer (the same tokenizer then serves the client); for vLLM, the engine
        arguments given as `engine_options`."""
        options = self.options.get("engine_options") or {}
        if not isinstance(options, dict):
            raise ModelConfigError("engine_options must be a dict of the engine's arguments")
        if self.name not in (RANDOM, f"local:{RANDOM}"):
            return dict(options)
        kwargs = {"seed": self.options.get("seed"), "tokenizer": self.tokenizer}
        kwargs["verbose"] = bool(self.options.get("verbose", False)) or None
        return {k: v for k, v in kwargs.items() if v is not None}


RANDOM = RANDOM_MODEL  # LMQL's weightless test model (engine/random_model.py)
SLOW_LOAD_S = 1.0  # a load longer than this is announced, so a terminal is not left blank


@contextlib.contextmanager
def announce_slow_load(name: str) -> Iterator[None]:
    """A line on stderr once loading `name` has taken over a second, and one when it is done:
    on a terminal (or with COGQL_PROGRESS=1; never with COGQL_PROGRESS=0), else in the log."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    announced = False

    def announce() -> None:
        nonlocal announced
        announced = True
        _progress_line(f"cogql: loading model {name}...")

    timer = loop.call_later(SLOW_LOAD_S, announce)
    try:
        yield
    finally:
        timer.cancel()
        if announced:
            _progress_line(f"cogql: model {name} loaded in {loop.time() - started:.1f} s")


def _progress_line(text: str) -> None:
    if progress_shown():
        print(text, file=sys.stderr, flush=True)
    else:
        log.info("%s", text)


# every keyword option `cogql.model(...)` takes besides endpoint= and tokenizer= (README,
# "Python API"): cogql's own, the Replicate transport's, and LMQL's, which cogql accepts and
# ignores (they tune LMQL's own backends); anything else is a typo until proven otherwise
COGQL_MODEL_OPTIONS = frozenset({
    "engine", "engine_options", "dtype", "device", "seed", "verbose", "vocab", "extensions",
    "load_timeout", "token",
})  # fmt: skip
REPLICATE_MODEL_OPTIONS = frozenset({
    "batch_window", "wait", "idle_timeout", "max_ops", "cancel", "api_token", "base_url",
})  # fmt: skip
LMQL_MODEL_OPTIONS = frozenset({
    "inprocess", "cuda", "silent", "api_config", "chunk_timeout", "trust_remote_code",
    "load_in_8bit", "load_in_4bit", "device_map", "torch_dtype", "low_cpu_mem_usage",
})  # fmt: skip
OPENAI_MODEL_OPTIONS = frozenset({
    "api_key", "api_base", "api_type", "api_version", "api_deployment", "chat", "timeout",
})  # fmt: skip
MODEL_OPTIONS = (
    COGQL_MODEL_OPTIONS | REPLICATE_MODEL_OPTIONS | LMQL_MODEL_OPTIONS | OPENAI_MODEL_OPTIONS
)


# a query's arguments, often passed to the model by mistake
QUERY_ARGUMENTS = frozenset({"temperature", "max_len", "decoder", "top_k", "top_p", "n"})


def _check_options(options: dict[str, Any]) -> None:
    for key in options:
        if key in MODEL_OPTIONS:
            continue
        known = sorted({*MODEL_OPTIONS, *QUERY_ARGUMENTS, "endpoint", "tokenizer", "name"})
        close = difflib.get_close_matches(key, known, n=1)
        hint = f"did you mean {close[0]}=? " if close else ""
        if close and close[0] in QUERY_ARGUMENTS:
            hint = (
                f"did you mean {close[0]}=? That is an argument of the query, not the model: "
                f"cogql.run(..., {close[0]}=...) or the decoder clause. "
            )
        raise ModelConfigError(
            f"cogql.model() got an unknown option {key}=; {hint}(the options are listed "
            'in README.md, "Python API"; a model\'s own arguments go in engine_options=)'
        )


def model(name: str | None = None, *, endpoint: str | None = None,
          tokenizer: str | None = None, **options: Any) -> Model:  # fmt: skip
    """A model reference for `from` clauses and `model=` arguments (loaded lazily). For
    `random`, LMQL's `vocab=` is another name for `tokenizer=`; `token=` is the bearer token
    of a `cogql serve-model --token` endpoint (default: $COGQL_SERVE_TOKEN). An option not in
    `MODEL_OPTIONS` is an error with a did-you-mean."""
    if name is not None and not isinstance(name, str):
        raise ModelConfigError(f"model name must be a string, got {type(name).__name__}")
    _check_options(options)
    if name in (RANDOM, f"local:{RANDOM}") and "vocab" in options:
        vocab = options.pop("vocab")
        if tokenizer is not None and vocab is not None and vocab != tokenizer:
            raise ModelConfigError(
                f"tokenizer={tokenizer!r} and vocab={vocab!r} disagree (vocab is LMQL's name "
                "for the random model's tokenizer): give one of them"
            )
        tokenizer = tokenizer if tokenizer is not None else vocab
    token = options.pop("token", None)  # kept out of options: `configuration` shows those
    return Model(name, endpoint, tokenizer, dict(options), token=token)


def as_model(value: Any) -> Model:
    """Accept what LMQL accepts in `from` / `model=`: a Model or a name string; none (or
    LMQL's "<dynamic>") is the default model."""
    if value is None or value in ("", "<dynamic>"):
        value = _default_model
    if isinstance(value, Model):
        return value
    if value is None or isinstance(value, str):
        return _shared(value)
    raise ModelConfigError(f"expected a model name or cogql.model(...), got {value!r}")


# how an LMTP server's address begins, where a name could be either (a CLI flag, a form field)
ENDPOINT_SCHEMES = ("ws://", "wss://", "lmtp://", "lmtp:")


def typed_model(text: str | None) -> Model | None:
    """A model as a person types it (`cogql run --model`, the playground's model field): an
    LMTP server's address, or any name a `from` clause takes; None when nothing is typed (the
    query's own `from`, else the default model)."""
    text = (text or "").strip()
    if not text:
        return None
    if text.startswith(ENDPOINT_SCHEMES):
        return model(None, endpoint=text)
    return as_model(text)


_models: dict[str | None, Model] = {}


def _shared(name: str | None) -> Model:
    if name in ("", "<dynamic>"):
        name = None
    if name not in _models:
        _models[name] = model(name)
    return _models[name]


# --------------------------------------------------------------------------- default model

EMBEDDED_IDENTIFIER = f"local:{EMBEDDED_MODEL}"

# LMQL reads LMQL_DEFAULT_MODEL too; unset, cogql's default is the embedded model
_default_model: str | Model | None = os.environ.get("LMQL_DEFAULT_MODEL") or None


def set_default_model(model: str | Model | None) -> None:
    """LMQL's `lmql.set_default_model`: the model of queries without a `from` clause or
    `model=`, and of `generate`/`score` without `model=`, process-wide. None restores the
    embedded model."""
    global _default_model
    if model is not None and not isinstance(model, str | Model):
        raise ModelConfigError(
            f"set_default_model() takes a model name or cogql.model(...), got {model!r}"
        )
    _default_model = model or None


def get_default_model() -> str | Model:
    """The model set by `set_default_model` (or LMQL_DEFAULT_MODEL), else the embedded one's
    identifier."""
    return EMBEDDED_IDENTIFIER if _default_model is None else _default_model


def get_default_scoring_model() -> str | Model:
    """LMQL has a separate one only because of an OpenAI restriction; here it is the same."""
    return get_default_model()


# --------------------------------------------------------------------------- remote LMTP

LOAD_WAIT_S = 600.0  # how long to wait for a server that is still loading its model
LOAD_NOTICE_S = 10.0  # after this long, say why the wait may never end


class RemoteModelNotLoaded(ModelError, TimeoutError):
    """An LMTP server did not load the model within the wait (`load_timeout=`): still loading,
    or an LMQL server trying to load a model it cannot get, because the client named it."""


async def _open_remote(
    name: str,
    endpoint: str,
    tokenizer: str | None,
    options: dict[str, Any],
    token: str | None = None,
) -> ConnectedModel:
    """A websocket LMTP server: wait for its model, learn its capabilities, get a tokenizer
    (which the client also needs to emulate extensions an LMQL server lacks)."""
    from ..lmtp.transports.websocket import EndpointError, WebSocketTransport

    wait = _load_timeout(options)
    try:
        transport = WebSocketTransport(endpoint, token=token)
    except EndpointError as e:
        raise ModelConfigError(str(e)) from None
    await transport.open()
    client = LMTPClient(transport, model=name)
    try:
        caps = await server_capabilities(client, transport.url, poll=0.25, wait=wait)
    except LMTPError as e:
        raise LMTPError(f"LMTP server at {transport.url}: {e}", retryable=e.retryable) from None
    if caps:  # cogql's server, which names the one model it serves
        _check_served_name(await client.model_info(), name, transport.url)
    return await remote_connection(client, caps, name, tokenizer, transport.url, options)


async def remote_connection(
    client: LMTPClient,
    caps: frozenset[str],
    name: str,
    tokenizer: str | None,
    url: str,
    options: dict[str, Any],
) -> ConnectedModel:
    """A connection through a remote server's client, once its capabilities are known."""
    client.known_capabilities = caps
    tok = await _remote_tokenizer(client, caps, name, tokenizer, url)
    client.tokenizer = tok
    client.use_extensions = bool(options.get("extensions", True))
    return ConnectedModel(client, tok, caps, tok.bos_token_id)


async def server_capabilities(
    client: LMTPClient, url: str, *, poll: float, wait: float = LOAD_WAIT_S
) -> frozenset[str]:
    """The capabilities in the server's MODEL_INFO, asked every `poll` seconds while it loads
    its model (for at most `wait` seconds); none from an LMQL server that predates MODEL_INFO."""

    try:
        info = await _loaded_info(client, url, poll, wait)
    except LMTPError as e:
        if "Unknown command" not in str(e):
            raise
        info = {}
    return frozenset(info.get("capabilities", ()))


def _load_timeout(options: dict[str, Any]) -> float:
    value = options.get("load_timeout", LOAD_WAIT_S)
    if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
        raise ModelConfigError(f"load_timeout must be a positive number of seconds, got {value!r}")
    return float(value)


async def _loaded_info(client: LMTPClient, url: str, poll: float, wait: float) -> dict[str, Any]:
    """MODEL_INFO once the server has its model. An LMQL server loads whatever model the
    client names: naming one it cannot get leaves it "<unavailable>" for good, so the wait
    is bounded and, once it is long, says so."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    noticed = False
    info = await client.model_info()
    if info.get("model_info") == "<unavailable>":
        log.info("the model at %s is still loading its weights; waiting", url)
    while info.get("model_info") == "<unavailable>":
        waited = loop.time() - started
        if waited > wait:
            raise RemoteModelNotLoaded(
                f"the LMTP server at {url} has not loaded {client.model or 'its model'!r} "
                f"after {waited:.0f} s. {_lmql_loads_by_name(client.model)} (load_timeout= "
                "sets this wait)"
            )
        if waited > LOAD_NOTICE_S and not noticed:
            noticed = True
            log.warning(
                "still waiting for the LMTP server at %s to load %r (%.0f s). %s",
                url, client.model, waited, _lmql_loads_by_name(client.model),
            )  # fmt: skip
        await asyncio.sleep(poll)
        info = await client.model_info()
    return info


def _lmql_loads_by_name(name: str) -> str:
    return (
        f"An LMQL server (lmql serve-model) loads whatever model its client names: if it "
        f"serves another model than {name!r}, name that one, exactly as it was started."
    )


def _check_served_name(info: dict[str, Any], name: str, url: str) -> None:
    """A server that names its model (cogql's does) serves that one whatever the client
    asks: a different name is most likely a mistake, so say which model answers."""
    served = info.get("model")
    if not name or not isinstance(served, str) or _same_model(name, served):
        return
    log.warning(
        "the LMTP server at %s serves %r, not %r as named; the queries run on %r",
        url, served, name, served,
    )  # fmt: skip


def _same_model(asked: str, served: str) -> bool:
    """Whether `asked` names `served` (a server names a folder by its last part, the embedded
    model by its name)."""
    raw = asked.removeprefix("local:").strip().rstrip("/\\")
    if raw.lower() in EMBEDDED_ALIASES:
        raw = EMBEDDED_MODEL
    return served in (raw, os.path.basename(raw)) or raw.endswith(f"/{served}")


async def _remote_tokenizer(
    client: LMTPClient, caps: frozenset[str], name: str, tokenizer: str | None, url: str
) -> Tokenizer:
    """`tokenizer=` first; then the server's own (extension `tokenizer`); then, as LMQL does,
    a tokenizer named like the model (a folder or a cached hub id). A `tokenizer=` that cannot
    be had here (not cached, offline) gives way to the server's own, with a note: the query is
    written for a model, and the server has that model's tokenizer."""
    from ..lmtp.messages import TOKENIZER, tokenizer_from_wire
    from ..tokenizer import TokenizerNotFound

    if tokenizer:
        try:
            return load_tokenizer(tokenizer)
        except TokenizerNotFound as e:
            if TOKENIZER not in caps:
                raise TokenizerNotFound(
                    f"{e} Nor does the model at {url} hand out its tokenizer (an LMQL "
                    "server cannot): put the tokenizer's files in a folder and pass that as "
                    "tokenizer=, or fetch it into the Hugging Face cache (hf download ORG/NAME "
                    "tokenizer.json tokenizer_config.json)"
                ) from None
            log.warning(
                "tokenizer=%r is not on this machine (not a folder, not in the Hugging Face "
                "cache); using the tokenizer that the model at %s hands out",
                tokenizer, url,
            )  # fmt: skip
    if TOKENIZER in caps:
        info = await client.request_info({TOKENIZER: True})
        return tokenizer_from_wire(info.get(TOKENIZER), name=f"tokenizer of {url}")
    try:
        return load_tokenizer(name.removeprefix("local:")) if name else _no_tokenizer(url)
    except TokenizerNotFound:
        return _no_tokenizer(url)


def _no_tokenizer(url: str) -> Tokenizer:
    raise ModelConfigError(
        f"the LMTP server at {url} does not hand out its tokenizer and none was found under the "
        "model's name; pass tokenizer= (a folder with tokenizer.json or a cached hub id)"
    )


def is_replicate(name: str, endpoint: str) -> bool:
    """LMQL's routing: an endpoint `replicate[:...]`, or a name `replicate:...` alone."""
    if endpoint:
        return endpoint == "replicate" or endpoint.startswith("replicate:")
    return name.startswith("replicate:")
