"""`openai/<model>` names: a model connection over the OpenAI-compatible transport.

`cogql.model("openai/gpt-3.5-turbo-instruct")` calls OpenAI's API with OPENAI_API_KEY, as in
LMQL; `endpoint="host:port"` (or a URL, or `api_base=`) points at any OpenAI-compatible server
(vLLM, llama.cpp, Ollama, ...); `api_type="azure"`/`"azure-chat"` with `api_base`,
`api_version` and `api_deployment` at Azure. `tokenizer=` names the served model's tokenizer;
without it, a vLLM server's model folder (when it is on this machine) or the model's name is
tried. `timeout=` bounds each request's silences (seconds), `chat=` overrides whether the
chat endpoint is used.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..lmtp.client import LMTPClient
from ..lmtp.transports.openai import OpenAIConfigError, OpenAITransport, target_from
from ..tokenizer import Tokenizer, TokenizerNotFound, load_tokenizer
from .model import ConnectedModel, ModelConfigError


async def open_openai(
    name: str, endpoint: str | None, tokenizer: str | None, options: dict[str, Any]
) -> ConnectedModel:
    """Check the server (reachable, key accepted, model served), then find a tokenizer."""
    try:
        target = target_from(name, endpoint, options)
    except OpenAIConfigError as e:
        raise ModelConfigError(str(e)) from None
    timeout = float(options.get("timeout", 120.0))
    transport = OpenAITransport(target, timeout=timeout)
    await transport.open()
    tok = _tokenizer(tokenizer, target.model, transport)
    transport.use_tokenizer(tok)
    client = LMTPClient(transport, model=target.model, tokenizer=tok)
    caps = frozenset(transport.model_info()["capabilities"])
    client.known_capabilities = caps
    conn = ConnectedModel(client, tok, caps, tok.bos_token_id)
    conn.chat_markers = target.chat
    return conn


def _tokenizer(given: str | None, model: str, transport: OpenAITransport) -> Tokenizer:
    if given:
        return load_tokenizer(given)
    for candidate in (transport.served_root, model):
        if candidate and (Path(candidate).is_dir() or "/" in candidate):
            try:
                return load_tokenizer(candidate)
            except TokenizerNotFound:
                continue
    raise ModelConfigError(
        f"no tokenizer for {model!r} at {transport.url}: cogql needs the model's tokenizer "
        "(for token ids, masks and stop phrases); pass tokenizer= (a folder with "
        "tokenizer.json or a cached Hugging Face id, e.g. 'Xenova/gpt-4o' for OpenAI's models)"
    )
