"""What a transport's batching and predictions read from the transport's settings; a Protocol,
so they need not import the transport that holds them."""

from __future__ import annotations

from typing import Protocol

import httpx

from .api import ReplicateTarget, RetryPolicy
from .model_info import ModelInfoCache

__all__ = ["TransportSettings"]


class TransportSettings(Protocol):
    target: ReplicateTarget
    token: str
    base_url: str
    batch_window: float
    wait: int | None
    idle_timeout: float
    max_ops: int
    cancel: bool
    info_cache: ModelInfoCache
    http_transport: httpx.AsyncBaseTransport | None
    retry: RetryPolicy | None
