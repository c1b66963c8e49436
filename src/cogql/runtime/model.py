"""`cogql.model(...)`: a model reference, resolved to an LMTP client on first use.

Names and endpoints follow LMQL: no endpoint (or a `local:` name) runs the model in this
process; other endpoints are remote LMTP servers or Replicate.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from ..lmtp.client import LMTPClient
from ..tokenizer import Tokenizer, load_tokenizer


class ModelConfigError(ValueError):
    """A model reference that cannot be used as given."""


@dataclass
class Connection:
    """A live client plus the tokenizer the client uses for prompts and options."""

    client: LMTPClient
    tokenizer: Tokenizer
    capabilities: frozenset[str]
    bos_token_id: int | None


@dataclass
class Model:
    """LMQL's `lmql.model(name, endpoint=..., tokenizer=...)` (named LLM there)."""

    name: str | None = None
    endpoint: str | None = None
    tokenizer: str | None = None
    options: dict[str, Any] = field(default_factory=dict)
    _connection: Connection | None = field(default=None, repr=False)

    @property
    def model_identifier(self) -> str:
        return self.name or "local:SmolLM2-135M-Instruct"

    async def connect(self) -> Connection:
        if self._connection is None:
            self._connection = await self._open()
        return self._connection

    async def _open(self) -> Connection:
        endpoint = self.endpoint or ""
        name = self.name or ""
        if endpoint and not endpoint.startswith("local:"):
            raise ModelConfigError(
                f"endpoint {endpoint!r}: remote LMTP and Replicate endpoints are not available in "
                "this build yet; omit endpoint= to run the model in-process"
            )
        from ..lmtp.transports.inprocess import InProcessTransport, local_engine

        local_name = name.removeprefix("local:") or None
        dtype = str(self.options.get("dtype", "auto"))
        device = str(self.options.get("device", "cpu"))
        engine = await asyncio.to_thread(local_engine, local_name, dtype=dtype, device=device)
        tok = load_tokenizer(self.tokenizer) if self.tokenizer else engine.tokenizer
        client = LMTPClient(InProcessTransport(engine), model=name)
        caps = await client.capabilities()
        return Connection(client, tok, caps, tok.bos_token_id)


def model(name: str | None = None, *, endpoint: str | None = None,
          tokenizer: str | None = None, **options: Any) -> Model:  # fmt: skip
    """A model reference for `from` clauses and `model=` arguments (loaded lazily)."""
    if name is not None and not isinstance(name, str):
        raise ModelConfigError(f"model name must be a string, got {type(name).__name__}")
    return Model(name, endpoint, tokenizer, dict(options))


def as_model(value: Any) -> Model:
    """Accept what LMQL accepts in `from` / `model=`: a Model or a name string."""
    if isinstance(value, Model):
        return value
    if value is None or isinstance(value, str):
        return _shared(value)
    raise ModelConfigError(f"expected a model name or cogql.model(...), got {value!r}")


_models: dict[str | None, Model] = {}


def _shared(name: str | None) -> Model:
    if name in ("", "<dynamic>"):
        name = None
    if name not in _models:
        _models[name] = model(name)
    return _models[name]
