"""`lmql.serve(...)`: `cogql serve-model` from Python, with LMQL's signature."""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from ..errors import ModelError
from ..extras import require
from .access import TOKEN_ENV, AccessPolicy, tls_context
from .command import IGNORED_FLAGS, IGNORED_VALUED, engine_factory, failing, prepare, resolve_args
from .logs import limit_repeats
from .server import LMTPServer, serve_until_signalled

log = logging.getLogger("cogql.serve")


def serve(
    model_name: str | None = None,
    host: str = "localhost",
    port: int = 8080,
    cuda: bool = False,
    dtype: str | None = None,
    static: bool = False,
    **kwargs: Any,
) -> None:
    """Serve a model over LMTP on ws://HOST:PORT/ until SIGINT/SIGTERM (blocking, as LMQL's).

    `model_name` is what `cogql serve-model` takes (None, "auto" or "default": the embedded
    model); `device=` picks a torch device; `token=` (or COGQL_SERVE_TOKEN), `certfile=`,
    `keyfile=` and `allow_origins=` are `cogql serve-model`'s access options; `engine="vllm"`
    runs vLLM; other keywords go to `from_pretrained` (names it or the model's config.json
    knows; or vLLM's engine arguments). LMQL's scheduler options (`static`, `single_thread`, `loader`,
    ...) are accepted and ignored: cogql always serves the one model it was started with."""
    del static
    require("serve", "serving a model (lmql.serve)")
    device = kwargs.pop("device", None)
    engine = kwargs.pop("engine", "cogql")
    token = kwargs.pop("token", None) or os.environ.get(TOKEN_ENV)
    access = AccessPolicy.build(token, kwargs.pop("allow_origins", ()))
    certfile, keyfile = kwargs.pop("certfile", None), kwargs.pop("keyfile", None)
    context = tls_context(certfile, keyfile) if certfile else None
    args = resolve_args(
        model_name, dtype=dtype or "auto", device=device, cuda=cuda, extra=[], engine=engine
    )
    for name, value in kwargs.items():
        if name in IGNORED_FLAGS or name in IGNORED_VALUED:
            args.ignored.append(name)
        else:
            args.model_kwargs[name] = value
    if args.ignored:
        log.info("ignoring LMQL options that do not apply to cogql: %s", ", ".join(args.ignored))
    limit_repeats()
    factory = engine_factory(args)
    try:
        prepare(args)
    except ModelError as e:  # LMQL's way: the server runs and reports the failure to clients
        factory = failing(e)
    server = LMTPServer(factory, host=host, port=port, access=access, ssl_context=context)
    asyncio.run(serve_until_signalled(server))
