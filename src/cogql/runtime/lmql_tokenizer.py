"""`lmql.tokenizer(name)`: LMQL's tokenizer object, over cogql's one tokenizer loader.

LMQL code tokenizes text to count or budget tokens (`tokenize`, `__call__` giving
`{"input_ids": ...}`, `decode`, `vocab_size`, BOS/EOS ids). The object wraps the same
`cogql.tokenizer.Tokenizer` that queries use, so ids agree with what the model sees.
"""

from __future__ import annotations

import weakref
from types import ModuleType
from typing import Any, overload

from ..model_names import ModelNotFound
from ..tokenizer import Tokenizer, TokenizerNotFound, load_tokenizer

INVALID_CHARACTER = "\ufffd"


class LMQLTokenizer:
    """LMQL's `LMQLTokenizer` interface. No BOS/EOS is added unless asked for, as in LMQL."""

    INVALID_CHARACTER = INVALID_CHARACTER

    def __init__(self, tokenizer: Tokenizer, model_identifier: str) -> None:
        self.tokenizer_impl = tokenizer
        self.model_identifier = model_identifier
        self._ids_of_bytes: dict[bytes, int] | None = None

    def __repr__(self) -> str:
        return f"<LMQLTokenizer {self.model_identifier!r} using {self.backend()}>"

    def backend(self) -> str:
        return "tokenizers (tokenizer.json)"

    @property
    def name(self) -> str:
        return self.tokenizer_impl.name

    @property
    def vocab_size(self) -> int:
        """Ids in the vocabulary, added tokens included (LMQL adds 100 ids it reserves for its
        own tag tokens, which cogql does not have)."""
        return self.tokenizer_impl.vocab_size

    @property
    def model_vocab_size(self) -> int:
        return self.tokenizer_impl.vocab_size

    @property
    def bos_token_id(self) -> int | None:
        return self.tokenizer_impl.bos_token_id

    @property
    def eos_token_id(self) -> int | None:
        return self.tokenizer_impl.eos_token_id

    @property
    def vocab(self) -> dict[str, int]:
        """Vocabulary entries (their raw strings, e.g. 'Ġworld') to ids."""
        return self.tokenizer_impl.backend.get_vocab(with_added_tokens=True)

    @overload
    def __call__(self, s: str, add_special_tokens: bool = False) -> dict[str, list[int]]: ...
    @overload
    def __call__(
        self, s: list[str], add_special_tokens: bool = False
    ) -> dict[str, list[list[int]]]: ...
    def __call__(self, s: str | list[str], add_special_tokens: bool = False) -> dict[str, Any]:
        """`{"input_ids": ids}` for a string, `{"input_ids": [ids, ...]}` for a list."""
        if isinstance(s, list):
            return {"input_ids": [self._ids(x, add_special_tokens) for x in s]}
        return {"input_ids": self._ids(s, add_special_tokens)}

    def _ids(self, text: str, add_special_tokens: bool) -> list[int]:
        if not isinstance(text, str):
            raise TypeError(f"the tokenizer takes a str or a list of str, got {text!r}")
        if not add_special_tokens:
            return self.tokenizer_impl.encode(text)
        return self.tokenizer_impl.backend.encode(text, add_special_tokens=True).ids

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        """The ids of `text` (transformers' name; LMQL spells it `tokenizer(text)`)."""
        return self._ids(text, add_special_tokens)

    def tokenize(self, s: str, asbytes: bool = False) -> list[str] | list[bytes]:
        """The tokens of `s` as vocabulary strings, or as the raw bytes each one stands for."""
        ids = self.tokenizer_impl.encode(s)
        if asbytes:
            return [self.tokenizer_impl.token_bytes(i) for i in ids]
        return self.convert_ids_to_tokens(ids)

    def decode(self, input_ids: Any) -> str:
        """Text of the ids (special tokens kept); a list of token bytes is joined instead."""
        ids = list(input_ids)
        if ids and isinstance(ids[0], bytes):
            return self.convert_bytes_to_string(ids)
        return self.tokenizer_impl.decode([int(i) for i in ids])

    def decode_bytes(self, input_ids: list[int]) -> list[bytes]:
        return [self.tokenizer_impl.token_bytes(int(i)) for i in input_ids]

    def convert_bytes_to_string(self, token_bytes: list[bytes]) -> str:
        return b"".join(token_bytes).decode("utf-8", errors="replace")

    def convert_bytes_to_ids(self, token_bytes: list[bytes]) -> list[int]:
        if self._ids_of_bytes is None:
            table: dict[bytes, int] = {}
            for i, b in enumerate(self.tokenizer_impl.all_token_bytes()):
                table.setdefault(b, i)
            self._ids_of_bytes = table
        try:
            return [self._ids_of_bytes[b] for b in token_bytes]
        except KeyError as e:
            raise ValueError(f"{e.args[0]!r} is not the bytes of a token of {self.name}") from None

    def convert_tokens_to_ids(self, tokens: str | list[str]) -> int | list[int]:
        """Ids of vocabulary strings; an unknown string raises ValueError."""
        if isinstance(tokens, str):
            return self._token_id(tokens)
        return [self._token_id(t) for t in tokens]

    def _token_id(self, token: str) -> int:
        found = self.tokenizer_impl.token_to_id(token)
        if found is None:
            raise ValueError(f"{token!r} is not a token of {self.name}")
        return found

    def convert_ids_to_tokens(self, ids: int | list[int]) -> Any:
        backend = self.tokenizer_impl.backend
        if isinstance(ids, int):
            return backend.id_to_token(ids)
        return [backend.id_to_token(int(i)) for i in ids]

    def convert_tokens_to_string(self, tokens: list[str]) -> str:
        return self.tokenizer_impl.decode([self._token_id(t) for t in tokens])


_wrappers: weakref.WeakKeyDictionary[Tokenizer, LMQLTokenizer] = weakref.WeakKeyDictionary()


def wrap(tok: Tokenizer, model_identifier: str) -> LMQLTokenizer:
    """The one LMQLTokenizer of a loaded tokenizer (LMQL hands out one instance per name)."""
    found = _wrappers.get(tok)
    if found is None:
        found = _wrappers[tok] = LMQLTokenizer(tok, model_identifier)
    return found


def tokenizer(model_identifier: str, type: str = "auto", **kwargs: Any) -> LMQLTokenizer:
    """LMQL's `lmql.tokenizer(name)`: a tokenizer folder, a tokenizer.json, a cached hub id, or
    any model name cogql loads (`default`, a model folder, a .gguf file). Offline only: an
    unknown name raises TokenizerNotFound saying where it looked. `type` and loader options
    are accepted for LMQL's signature; there is one backend (Hugging Face `tokenizers`)."""
    del type, kwargs
    if not isinstance(model_identifier, str) or not model_identifier:
        raise TokenizerNotFound(f"tokenizer() needs a name or path, got {model_identifier!r}")
    try:
        return wrap(load_tokenizer(model_identifier), model_identifier)
    except TokenizerNotFound as as_tokenizer:
        from ..engine.models import (
            gguf_file,
            gguf_tokenizer_path,
            names_gguf_file,
            resolve_model_path,
        )

        try:
            if names_gguf_file(model_identifier):  # its tokenizer alone, no weights converted
                folder = gguf_tokenizer_path(gguf_file(model_identifier))
            else:
                folder = resolve_model_path(model_identifier)
        except ModelNotFound as as_model:
            raise TokenizerNotFound(f"{as_tokenizer} As a model name: {as_model}") from None
        return wrap(load_tokenizer(folder), model_identifier)


class TokenizerModule(ModuleType):
    """The class of the `cogql.tokenizer` module: called, it is LMQL's `lmql.tokenizer(name)`,
    so code written `import cogql as lmql` can call `lmql.tokenizer("name")` as LMQL's does,
    while `cogql.tokenizer.Tokenizer` and the module's other names stay where they are."""

    def __call__(self, model_identifier: str, type: str = "auto", **kwargs: Any) -> LMQLTokenizer:
        return tokenizer(model_identifier, type, **kwargs)
