"""What goes wrong talking to an OpenAI-compatible API, one class per thing to do about it."""

from __future__ import annotations

from ....errors import ModelError, TransportError
from ....model_names import ModelNotFound


class OpenAIConfigError(ModelError, ValueError):
    """The model's settings cannot make a request: no API key for OpenAI's own API, a base
    URL that is no URL, an unknown `api_type`."""


class OpenAIAPIError(TransportError, RuntimeError):
    """The API answered with an error (`status`); retryable for 408, 429 and 5xx."""

    def __init__(self, message: str, status: int | None = None, *, retryable: bool = False):
        super().__init__(message, retryable=retryable)
        self.status = status


class OpenAIConnectionError(OpenAIAPIError):
    """No answer: the server is not running, not reachable, or too slow (always retryable)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, None, retryable=True)


class OpenAIAuthError(OpenAIAPIError):
    """HTTP 401/403: the API key is missing, wrong, or lacks access to the model."""


class OpenAIModelNotFound(ModelNotFound):
    """The server does not serve a model of that name (HTTP 404, or absent from /models)."""


class OpenAIUnsupported(ModelError, RuntimeError):
    """The API cannot do what the query asks: scoring without prompt log-probs, a token mask
    on a chat endpoint, tokens it does not identify."""
