"""Where requests go: the base URL, the model (or Azure deployment), the key and the endpoint
kind, from LMQL's `lmql.model("openai/<name>", endpoint=..., api_type=..., ...)` arguments and
the environment."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from .errors import OpenAIConfigError

OPENAI_BASE_URL = "https://api.openai.com/v1"
DEFAULT_AZURE_API_VERSION = "2024-02-01"
API_TYPES = ("openai", "azure", "azure-chat")

# LMQL's aliases for models on OpenAI's API
ALIASES = {"chatgpt": "openai/gpt-3.5-turbo", "gpt-4": "openai/gpt-4"}

# kwargs of `cogql.model("openai/...")` that this module reads
TARGET_OPTIONS = (
    "api_base", "api_type", "api_version", "api_deployment", "api_key", "chat",
)  # fmt: skip


@dataclass(frozen=True)
class OpenAITarget:
    """One model behind one API: `model` goes into every request body (for Azure, the
    deployment goes into the URL instead)."""

    model: str
    base_url: str  # without a trailing slash, e.g. https://api.openai.com/v1
    api_key: str | None = field(default=None, repr=False)
    azure: bool = False
    api_version: str | None = None
    chat: bool = False

    def url(self, path: str) -> str:
        """The URL of an endpoint (`completions`, `chat/completions`, `models`)."""
        if not self.azure:
            return f"{self.base_url}/{path}"
        if path == "models":
            return f"{self.base_url}/openai/models?api-version={self.api_version}"
        deployment = f"{self.base_url}/openai/deployments/{self.model}"
        return f"{deployment}/{path}?api-version={self.api_version}"

    def headers(self) -> dict[str, str]:
        if not self.api_key:
            return {}
        if self.azure:
            return {"api-key": self.api_key}
        return {"Authorization": f"Bearer {self.api_key}"}

    def redact(self, text: str) -> str:
        """`text` with the API key taken out (servers may echo it in error messages)."""
        return text.replace(self.api_key, "<api key>") if self.api_key else text


def is_openai_name(name: str) -> bool:
    """LMQL's routing: `openai/<model>` and its aliases `chatgpt` and `gpt-4`."""
    return ALIASES.get(name, name).startswith("openai/")


def is_chat_model(model: str) -> bool:
    """LMQL's rule for OpenAI's names: the gpt-3.5-turbo and gpt-4 families are chat models,
    gpt-3.5-turbo-instruct is not; cogql adds OpenAI's later chat families."""
    if "instruct" in model:
        return False
    return model.startswith(("gpt-3.5-turbo", "gpt-4", "gpt-5", "chatgpt", "o1", "o3", "o4"))


def target_from(name: str, endpoint: str | None, options: dict[str, Any]) -> OpenAITarget:
    """The target of `cogql.model(name, endpoint=..., **options)` for an OpenAI name."""
    model = ALIASES.get(name, name).removeprefix("openai/")
    if not model:
        raise OpenAIConfigError("an OpenAI model name needs a model: 'openai/<model>'")
    api_type = str(options.get("api_type") or os.environ.get("OPENAI_API_TYPE") or "openai")
    if api_type not in API_TYPES:
        raise OpenAIConfigError(
            f"api_type={api_type!r} is not one of {', '.join(API_TYPES)} (LMQL's names)"
        )
    azure = api_type.startswith("azure")
    base = _base_url(endpoint, options.get("api_base"), azure)
    key = options.get("api_key") or _env_key(azure)
    if not key and base == OPENAI_BASE_URL:
        raise OpenAIConfigError(
            f"OpenAI's API needs an API key for {name!r}: set OPENAI_API_KEY or pass api_key=; "
            "for another OpenAI-compatible server, pass endpoint='host:port' (or its URL)"
        )
    chat = options.get("chat")
    return OpenAITarget(
        model=str(options.get("api_deployment") or model) if azure else model,
        base_url=base,
        api_key=str(key) if key else None,
        azure=azure,
        api_version=str(options.get("api_version") or _azure_version()) if azure else None,
        chat=bool(chat) if chat is not None else api_type == "azure-chat" or is_chat_model(model),
    )


def _env_key(azure: bool) -> str | None:
    if azure:
        return os.environ.get("AZURE_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return os.environ.get("OPENAI_API_KEY")


def _azure_version() -> str:
    return os.environ.get("OPENAI_API_VERSION") or DEFAULT_AZURE_API_VERSION


def _base_url(endpoint: str | None, api_base: Any, azure: bool) -> str:
    """`endpoint` (LMQL: a custom OpenAI-compatible URL, `http://` added when missing; a bare
    host:port gets `/v1`), else `api_base`, else the environment, else OpenAI's."""
    if endpoint:
        return _normalised(endpoint, add_v1=not azure)
    if api_base:
        return _normalised(str(api_base), add_v1=False)
    env = "AZURE_OPENAI_ENDPOINT" if azure else "OPENAI_BASE_URL"
    value = os.environ.get(env) or (None if azure else os.environ.get("OPENAI_API_BASE"))
    if value:
        return _normalised(value, add_v1=False)
    if azure:
        raise OpenAIConfigError(
            "an Azure model needs api_base='https://<resource>.openai.azure.com' "
            "(or AZURE_OPENAI_ENDPOINT)"
        )
    return OPENAI_BASE_URL


def _normalised(url: str, *, add_v1: bool) -> str:
    url = url.strip()
    if "://" not in url:
        url = f"http://{url}"
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise OpenAIConfigError(f"{url!r} is not an http(s) URL of an OpenAI-compatible API")
    url = url.rstrip("/")
    for endpoint in ("/chat/completions", "/completions"):
        url = url.removesuffix(endpoint)
    if add_v1 and parts.path.strip("/") == "":
        url += "/v1"
    return url
