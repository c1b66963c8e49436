"""The model a playground run uses, from the page's model field (as `cogql run --model`)."""

from __future__ import annotations

from ..runtime.model import Model, as_model, model

ENDPOINT_SCHEMES = ("ws://", "wss://", "lmtp://", "lmtp:")
SUGGESTED = ("default", "random", "local:/path/to/model", "ws://127.0.0.1:8080",
             "replicate:owner/name")  # fmt: skip


def chosen_model(name: str | None) -> Model | None:
    """None for an empty field (the query's from clause, else the default model); an LMTP
    server for ws://, wss://, lmtp://; any other name as cogql.model takes it."""
    name = (name or "").strip()
    if not name:
        return None
    if name.startswith(ENDPOINT_SCHEMES):
        return model(None, endpoint=name)
    return as_model(name)
