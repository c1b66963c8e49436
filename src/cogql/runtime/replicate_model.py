"""`replicate:` endpoints: a model connection over the Replicate transport.

`cogql.model(name, endpoint="replicate:owner/model", tokenizer=...)` as in LMQL; the name may
also carry the endpoint (`cogql.model("replicate:owner/model")`), and bare `endpoint="replicate"`
takes the Replicate model from the name. Options of `cogql.model` that tune the transport:
`batch_window` (seconds ops wait to share a prediction), `wait` (Prefer: wait seconds for
batches without a GENERATE, 0 to always stream), `idle_timeout` (seconds a prediction may stay
silent), `max_ops` (ops per prediction; 1 sends one op per prediction, as LMQL does),
`api_token` (instead of REPLICATE_API_TOKEN), `base_url` (instead of REPLICATE_BASE_URL),
`extensions=False` (LMQL's method even against a cogql-built model).
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..lmtp.client import LMTPClient, LMTPError
from ..lmtp.transports.replicate import (
    ReplicateConfigError,
    ReplicateTransport,
    parse_endpoint,
)
from .model import LOAD_WAIT_S, Connection, ModelConfigError, _remote_tokenizer

log = logging.getLogger("cogql.runtime")

LOAD_POLL_S = 2.0  # every MODEL_INFO is a prediction: ask a loading LMQL model gently
TRANSPORT_OPTIONS = ("batch_window", "wait", "idle_timeout", "max_ops", "api_token", "base_url")


async def open_replicate(
    name: str, endpoint: str, tokenizer: str | None, options: dict[str, Any]
) -> Connection:
    """Look the model up, learn its capabilities (from the version's schema where a cogql build
    advertises them, else MODEL_INFO, remembered per version), and find a tokenizer:
    `tokenizer=`, else the model's own (cogql-built), else the model name."""
    endpoint = endpoint or name
    name = name.removeprefix("replicate:")
    try:
        target = parse_endpoint(endpoint, name)
        kwargs = {k: options[k] for k in TRANSPORT_OPTIONS if options.get(k) is not None}
        transport = ReplicateTransport(target, **kwargs)
    except ReplicateConfigError as e:
        raise ModelConfigError(str(e)) from None
    await transport.open()
    client = LMTPClient(transport, model=name or target.ref)
    caps = transport.advertised
    if caps is None:
        caps = await _capabilities(client, transport.url)
    client.known_capabilities = caps
    tok = await _remote_tokenizer(client, caps, name or target.ref, tokenizer, transport.url)
    client.tokenizer = tok
    client.use_extensions = bool(options.get("extensions", True))
    return Connection(client, tok, caps, tok.bos_token_id)


async def _capabilities(client: LMTPClient, url: str) -> frozenset[str]:
    try:
        info = await _loaded_info(client, url)
    except LMTPError as e:
        if "Unknown command" not in str(e):  # an LMQL image from before MODEL_INFO existed
            raise
        info = {}
    return frozenset(info.get("capabilities", ()))


async def _loaded_info(client: LMTPClient, url: str) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + LOAD_WAIT_S
    info = await client.model_info()
    while info.get("model_info") == "<unavailable>":
        if loop.time() > deadline:
            raise ModelConfigError(f"the model at {url} did not load its weights in time")
        log.info("the model at %s is still loading its weights; waiting", url)
        await asyncio.sleep(LOAD_POLL_S)
        info = await client.model_info()
    return info
