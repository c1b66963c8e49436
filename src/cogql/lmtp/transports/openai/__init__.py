"""LMTP over an OpenAI-compatible API: OpenAI, Azure OpenAI, vLLM's `vllm serve`, llama.cpp's
server and others that speak the Completions (and Chat Completions) endpoints.

The transport answers LMTP ops on the client side by calling the API over HTTP, so the whole
runtime above it runs unchanged: a GENERATE becomes one streamed completion of the prompt's
token ids (with `logit_bias` when the op carries a mask), a SCORE one completion that echoes the
prompt with its log-probs, a MODEL_INFO is answered here. It advertises no extension but `seed`,
so grammars, stop phrases and `min_tokens` are enforced by the client (lmtp/emulation.py):
LMQL's method of ±100 `logit_bias` masks and a new request whenever the mask changes.

Token ids come back as the API gives them: vLLM's `token_id:N` strings (asked for with
`return_tokens_as_token_ids`), else token strings mapped back through the client's tokenizer.
Chat models get the chat endpoint (`chat.py`): messages from the prompt's role tags, no masks.
"""

import typing as _typing

__all__ = [
    "OpenAIAPIError",
    "OpenAIAuthError",
    "OpenAIConfigError",
    "OpenAIConnectionError",
    "OpenAIModelNotFound",
    "OpenAITarget",
    "OpenAITransport",
    "OpenAIUnsupported",
    "target_from",
]

if _typing.TYPE_CHECKING:
    from .errors import (
        OpenAIAPIError,
        OpenAIAuthError,
        OpenAIConfigError,
        OpenAIConnectionError,
        OpenAIModelNotFound,
        OpenAIUnsupported,
    )
    from .settings import OpenAITarget, target_from
    from .transport import OpenAITransport
else:
    from ...._lazy import lazy_exports as _lazy_exports

    __getattr__ = _lazy_exports(
        __name__,
        {
            ".errors": (
                "OpenAIAPIError",
                "OpenAIAuthError",
                "OpenAIConfigError",
                "OpenAIConnectionError",
                "OpenAIModelNotFound",
                "OpenAIUnsupported",
            ),
            ".settings": ("OpenAITarget", "target_from"),
            ".transport": ("OpenAITransport",),
        },
    )
