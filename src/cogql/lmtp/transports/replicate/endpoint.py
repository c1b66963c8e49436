"""Endpoint strings (`replicate:owner/name`, ...), the API base URL and the API token, each
read from its argument or the environment, with an error that says how to fix it."""

from __future__ import annotations

import os
import re

from .api import API_BASE, ReplicateConfigError, ReplicateTarget

__all__ = ["api_token_from", "base_url_from", "parse_endpoint"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_endpoint(endpoint: str, model: str | None = None) -> ReplicateTarget:
    """`replicate:owner/name`, `replicate:owner/name/version` (or Replicate's own
    `owner/name:version`), `replicate:deployment/owner/name`, or bare `replicate`, which takes
    the Replicate name from the model's name (LMQL: `lmql.model("owner/name", endpoint="replicate")`)."""
    raw = endpoint.strip()
    if raw in ("replicate", "replicate:"):
        desc = (model or "").strip().removeprefix("replicate:")
        if not desc:
            raise ReplicateConfigError(
                f"endpoint {endpoint!r} takes the Replicate model from the model's name, and "
                "none was given: use cogql.model('owner/name', endpoint='replicate') or "
                "endpoint='replicate:owner/name'"
            )
    elif raw.startswith("replicate:"):
        desc = raw.removeprefix("replicate:").strip()
    else:
        raise ReplicateConfigError(f"endpoint {endpoint!r} is not a replicate: endpoint")
    base, colon, pinned = desc.partition(":")
    parts = base.split("/")
    if colon and len(parts) == 2:
        target = ReplicateTarget(parts[0], parts[1], version=pinned)
    elif not colon and len(parts) == 2:
        target = ReplicateTarget(parts[0], parts[1])
    elif not colon and len(parts) == 3 and parts[0] == "deployment":
        target = ReplicateTarget(parts[1], parts[2], deployment=True)
    elif not colon and len(parts) == 3:
        target = ReplicateTarget(parts[0], parts[1], version=parts[2])
    else:
        target = None
    fields = [] if target is None else [target.owner, target.name]
    fields += [] if target is None or target.version is None else [target.version]
    if target is None or not all(_NAME.match(f) for f in fields):
        raise ReplicateConfigError(
            f"endpoint {endpoint!r}: expected replicate:owner/name, replicate:owner/name/version "
            "(or owner/name:version), replicate:deployment/owner/name, or bare replicate with "
            "the Replicate name as the model's name"
        )
    return target


def base_url_from(value: str | None) -> str:
    """REPLICATE_BASE_URL as the 1.x client wants it: no trailing slash, no `/v1` (the 2.x
    client's form, which users may have set)."""
    url = (value or os.environ.get("REPLICATE_BASE_URL") or API_BASE).strip().rstrip("/")
    return url.removesuffix("/v1")


def api_token_from(value: str | None) -> str:
    token = value if value is not None else os.environ.get("REPLICATE_API_TOKEN", "")
    if not token.strip():
        raise ReplicateConfigError(
            "REPLICATE_API_TOKEN is not set: running a model on Replicate needs an API token "
            "(https://replicate.com/account/api-tokens); export REPLICATE_API_TOKEN=r8_... "
            "(for `cogql replicate serve`, the token it prints)"
        )
    return token.strip()
