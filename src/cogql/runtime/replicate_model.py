"""`replicate:` endpoints: a model connection over the Replicate transport.

`cogql.model(name, endpoint="replicate:owner/model", tokenizer=...)` as in LMQL; the name may
also carry the endpoint (`cogql.model("replicate:owner/model")`), and bare `endpoint="replicate"`
takes the Replicate model from the name. Options of `cogql.model` that tune the transport:
`batch_window` (seconds ops wait to share a prediction), `wait` (Prefer: wait seconds for
batches without a GENERATE, 0 to always stream), `idle_timeout` (seconds a prediction may stay
silent), `max_ops` (ops per prediction; 1 sends one op per prediction, as LMQL does),
`cancel=False` (predictions nobody reads any more run on, as LMQL leaves them), `api_token`
(instead of REPLICATE_API_TOKEN), `base_url` (instead of REPLICATE_BASE_URL),
`extensions=False` (LMQL's method even against a cogql-built model).
"""

from __future__ import annotations

from typing import Any

from ..lmtp.client import LMTPClient
from ..lmtp.transports.replicate import (
    ReplicateConfigError,
    ReplicateTransport,
    parse_endpoint,
)
from .model import ConnectedModel, ModelConfigError, remote_connection, server_capabilities

LOAD_POLL_S = 2.0  # every MODEL_INFO is a prediction: ask a loading LMQL model gently
TRANSPORT_OPTIONS = (
    "batch_window", "wait", "idle_timeout", "max_ops", "cancel", "api_token", "base_url",
)  # fmt: skip


async def open_replicate(
    name: str, endpoint: str, tokenizer: str | None, options: dict[str, Any]
) -> ConnectedModel:
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
    client.speculate = True  # every round trip is a prediction
    caps = transport.advertised
    if caps is None:
        caps = await server_capabilities(client, transport.url, poll=LOAD_POLL_S)
    return await remote_connection(
        client, caps, name or target.ref, tokenizer, transport.url, options
    )
