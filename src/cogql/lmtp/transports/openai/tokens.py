"""Token ids from what the API says of its tokens: vLLM's `token_id:N` strings, or token text
(OpenAI writes bytes that are no UTF-8 on their own as `bytes:\\xNN...`) looked up in the
client's tokenizer."""

from __future__ import annotations

import ast

from ....tokenizer import Tokenizer
from .errors import OpenAIUnsupported

TOKEN_ID_PREFIX = "token_id:"


class TokenIds:
    """Maps the API's token strings to the tokenizer's ids."""

    def __init__(self, tokenizer: Tokenizer | None, where: str) -> None:
        self.tokenizer = tokenizer
        self.where = where
        self._by_bytes: dict[bytes, int] | None = None

    def id_of(self, token: str) -> int:
        if token.startswith(TOKEN_ID_PREFIX) and token[len(TOKEN_ID_PREFIX) :].isdigit():
            return int(token[len(TOKEN_ID_PREFIX) :])
        table = self._table()
        found = table.get(_token_bytes(token))
        if found is None:
            raise OpenAIUnsupported(
                f"{self.where} returned the token {token!r}, which the tokenizer does not have; "
                "pass the served model's tokenizer as tokenizer= (a folder or a cached hub id)"
            )
        return found

    def _table(self) -> dict[bytes, int]:
        if self._by_bytes is None:
            if self.tokenizer is None:
                raise OpenAIUnsupported(
                    f"{self.where} names its tokens by text, and cogql needs their ids: pass "
                    "the served model's tokenizer as tokenizer= (a folder or a cached hub id)"
                )
            table: dict[bytes, int] = {}
            for token_id, data in enumerate(self.tokenizer.all_token_bytes()):
                table.setdefault(data, token_id)  # the lowest id of a duplicate, as BPE merges
            self._by_bytes = table
        return self._by_bytes


def _token_bytes(token: str) -> bytes:
    if token.startswith("bytes:"):
        try:
            value = ast.literal_eval(f"b'{token[len('bytes:') :]}'")
            if isinstance(value, bytes):
                return value
        except (ValueError, SyntaxError):
            pass
    return token.encode()
