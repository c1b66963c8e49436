"""The one place tokenizers are loaded.

The client tokenizes prompts and the engine needs token bytes (stop strings, llguidance); both go
through `Tokenizer`, a thin wrapper over the Rust `tokenizers.Tokenizer`. Loading is offline only:
a folder on disk, or a Hugging Face hub name that is already in the local HF cache.
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

import tokenizers

from .errors import ModelError
from .locations import hf_hub_cache

if TYPE_CHECKING:
    import transformers

__all__ = [
    "Tokenizer",
    "TokenizerNotFound",
    "load_tokenizer",
]


class TokenizerNotFound(ModelError):
    """No tokenizer could be loaded from the given path or name; the message says where we looked."""


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table, used by every byte-level BPE vocabulary."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    ]
    table = {b: chr(b) for b in printable}
    shift = 0
    for b in range(256):
        if b not in table:
            table[b] = chr(256 + shift)
            shift += 1
    return table


_UNICODE_TO_BYTE: dict[str, int] = {c: b for b, c in _bytes_to_unicode().items()}


def _decoder_kind(tk: tokenizers.Tokenizer) -> str:
    """Classify the decoder, because token -> bytes differs per family and the token
    strings alone do not say which family they come from."""
    decoder = tk.decoder
    if decoder is None:
        return "plain"
    state = decoder.__getstate__()
    text = state.decode("utf-8") if isinstance(state, bytes) else str(state)
    if '"ByteLevel"' in text:
        return "byte_level"
    if '"ByteFallback"' in text or "\u2581" in text:
        return "metaspace"
    return "plain"


_PREFIX_MARKS = ('"Prepend"', '"Metaspace"', '"Strip"')


def _without_dummy_prefix(tk: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    """A copy of a SentencePiece-style tokenizer that encodes text as a piece of a longer text.

    Such tokenizers prepend '▁' to the text they encode (SentencePiece's dummy prefix) and strip
    the leading space of what they decode. A prompt is written and generated piece by piece, so
    with them every piece would gain a space and every hole lose one: its ids would no longer
    spell its text. The copy does neither, so that encoding is concatenative (ids of a + ids of
    b spell a + b) and decoding is the tokens' bytes. `tk` itself is returned when it has no
    dummy prefix (byte-level BPE, Gemma's SentencePiece without one)."""
    parts = (tk.normalizer, tk.pre_tokenizer, tk.decoder)
    states = [p.__getstate__() if p is not None else b"" for p in parts]
    texts = [st.decode("utf-8") if isinstance(st, bytes) else str(st) for st in states]
    if not any(mark in text for text in texts for mark in _PREFIX_MARKS):
        return tk
    data = json.loads(tk.to_str())
    data["normalizer"] = _drop_prefix(data.get("normalizer"))
    data["pre_tokenizer"] = _drop_prefix(data.get("pre_tokenizer"))
    data["decoder"] = _drop_prefix(data.get("decoder"))
    return tokenizers.Tokenizer.from_str(json.dumps(data))


def _drop_prefix(component: Any) -> Any:
    """`component` (a normalizer, pre-tokenizer or decoder as JSON) without its dummy-prefix
    steps: Prepend('▁'), a Strip of leading spaces, Metaspace's prepend scheme."""
    if not isinstance(component, dict):
        return component
    kind = component.get("type")
    if kind == "Sequence":
        key = next(k for k in ("normalizers", "pretokenizers", "decoders") if k in component)
        steps = [_drop_prefix(c) for c in component[key]]
        return {**component, key: [c for c in steps if c is not None]}
    if kind == "Prepend" and component.get("prepend") == "\u2581":
        return None
    if kind == "Strip" and component.get("content") == " " and component.get("start", 0) > 0:
        return None
    if kind == "Metaspace":
        fixed = {**component, "prepend_scheme": "never"}
        if "add_prefix_space" in fixed:
            fixed["add_prefix_space"] = False
        return fixed
    return component


def _special_content(value: Any) -> str | None:
    """Special tokens in tokenizer_config.json are either strings or AddedToken dicts."""
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) else None


class Tokenizer:
    """Wraps a `tokenizers.Tokenizer` (fast, Rust).

    Used by the client (prompt tokenization) and the engine (stop strings, llguidance), so that
    both agree on ids and bytes without going through transformers' Python code per call.
    Text is encoded and decoded as pieces of a longer text (see `_without_dummy_prefix`): only
    the very start of a prompt is encoded as the tokenizer encodes a whole text (`start=True`).
    """

    def __init__(
        self,
        tk: tokenizers.Tokenizer,
        *,
        name: str,
        bos_token_id: int | None,
        eos_token_id: int | None,
        chat_template: str | None = None,
    ) -> None:
        tk.no_padding()
        tk.no_truncation()
        self._tk = tk
        self._pieces = _without_dummy_prefix(tk)
        self.name = name
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.chat_template = chat_template
        self.vocab_size: int = tk.get_vocab_size(with_added_tokens=True)
        self._kind = _decoder_kind(tk)
        self._added: dict[int, str] = {
            i: t.content for i, t in tk.get_added_tokens_decoder().items()
        }
        self._hf: transformers.PreTrainedTokenizerFast | None = None
        self._all_bytes: list[bytes] | None = None

    def __repr__(self) -> str:
        return f"Tokenizer({self.name!r}, vocab_size={self.vocab_size})"

    @property
    def backend(self) -> tokenizers.Tokenizer:
        """The underlying Rust tokenizer, for callers that need batch APIs."""
        return self._tk

    def encode(self, text: str, *, start: bool = False) -> list[int]:
        """Token ids of `text` as a piece of a longer text, or, with `start`, as the start of
        one (a SentencePiece tokenizer then adds its dummy-prefix '▁', as transformers does).
        No BOS/EOS is added, but special-token text is matched as the special token (like HF
        with split_special_tokens=False), so chat templates round-trip."""
        backend = self._tk if start else self._pieces
        return backend.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        """Text of `ids` as a piece of a longer text: special tokens and spacing exactly as
        generated (a leading '▁' is a space, as in `token_bytes`)."""
        return self._pieces.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        """Id of a vocabulary entry (its raw string form, e.g. 'Ġpositive'), or None."""
        return self._tk.token_to_id(token)

    def token_bytes(self, token_id: int) -> bytes:
        """Raw bytes of one token: a byte-level token may hold half a UTF-8 character, so its
        text alone cannot be used for stop-string or grammar matching."""
        if self._all_bytes is not None:
            return self._all_bytes[token_id]
        return self._token_bytes(token_id)

    def all_token_bytes(self) -> list[bytes]:
        """Bytes of every token id, computed once; the engine indexes this per generated token."""
        if self._all_bytes is None:
            self._all_bytes = [self._token_bytes(i) for i in range(self.vocab_size)]
        return self._all_bytes

    def _token_bytes(self, token_id: int) -> bytes:
        if token_id in self._added:  # the decoder maps them too: Gemma's '▁▁' is two spaces
            text = self._pieces.decode([token_id], skip_special_tokens=False)
            return (text if "\ufffd" not in text else self._added[token_id]).encode("utf-8")
        piece = self._tk.id_to_token(token_id)
        if piece is None:
            raise IndexError(f"token id {token_id} is outside the vocabulary of {self.name}")
        if self._kind == "byte_level":
            try:
                return bytes(_UNICODE_TO_BYTE[c] for c in piece)
            except KeyError:
                return piece.encode("utf-8")
        if self._kind == "metaspace":
            if len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
                return bytes([int(piece[3:5], 16)])
            return piece.replace("\u2581", " ").encode("utf-8")
        return self._pieces.decode([token_id], skip_special_tokens=False).encode("utf-8")

    def to_hf(self) -> transformers.PreTrainedTokenizerFast:
        """A transformers fast tokenizer over the same Rust tokenizer (pieces, no dummy
        prefix), built once, for callers that want transformers' API: cogql itself renders chat
        templates and builds llguidance tokenizers without it (the light install has none)."""
        if self._hf is None:
            import transformers

            def text(tid: int | None) -> str | None:
                return None if tid is None else self._tk.id_to_token(tid)

            self._hf = transformers.PreTrainedTokenizerFast(
                tokenizer_object=tokenizers.Tokenizer.from_str(self._pieces.to_str()),
                bos_token=text(self.bos_token_id),
                eos_token=text(self.eos_token_id),
                chat_template=self.chat_template,
                clean_up_tokenization_spaces=False,
            )
        return self._hf

    def pieces_json(self) -> str:
        """tokenizer.json of the piece encoder (no dummy prefix, no padding or truncation):
        llguidance matches grammars on pieces."""
        return self._pieces.to_str()

    def to_json(self) -> str:
        """tokenizer.json content, so a server can hand its tokenizer to a remote client."""
        return self._tk.to_str()

    @classmethod
    def from_json(
        cls,
        data: str,
        *,
        bos_token_id: int | None,
        eos_token_id: int | None,
        chat_template: str | None = None,
        name: str = "<remote>",
    ) -> Tokenizer:
        """Rebuild a tokenizer received over the wire (see `to_json`)."""
        try:
            tk = tokenizers.Tokenizer.from_str(data)
        except Exception as exc:  # the Rust side raises a bare Exception
            raise TokenizerNotFound(f"invalid tokenizer.json data for {name}: {exc}") from exc
        return cls(
            tk,
            name=name,
            bos_token_id=bos_token_id,
            eos_token_id=eos_token_id,
            chat_template=chat_template,
        )


def hf_snapshot(repo_id: str, revision: str | None = None) -> Path | None:
    """Local snapshot folder of a hub repo, or None; never touches the network. A snapshot that
    holds only some of the repo's files (cogql downloads only what a model needs) counts:
    callers check for the files they need."""
    if not repo_id or repo_id.count("/") > 1 or repo_id.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import IncompleteSnapshotError

        try:
            folder = snapshot_download(
                repo_id, revision=revision, cache_dir=hf_hub_cache(), local_files_only=True
            )
        except IncompleteSnapshotError as partial:
            folder = partial.snapshot_path
    except Exception:  # not cached, or not a valid repo id: both mean "not here"
        return None
    return Path(folder)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _chat_template(folder: Path, tok_config: dict[str, Any]) -> str | None:
    """The chat template: transformers saves it as chat_template.jinja (preferred) or inside
    tokenizer_config.json, either as a string or a list of named templates."""
    jinja = folder / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    template = tok_config.get("chat_template")
    if isinstance(template, list):
        named = {t.get("name"): t.get("template") for t in template if isinstance(t, dict)}
        template = named.get("default") or next(iter(named.values()), None)
    return template if isinstance(template, str) else None


def _first_id(value: Any) -> int | None:
    if isinstance(value, list):
        value = value[0] if value else None
    return value if isinstance(value, int) else None


def _special_id(
    tk: tokenizers.Tokenizer, key: str, configs: list[dict[str, Any]], id_configs: list[dict]
) -> int | None:
    """Resolve bos/eos: token strings from the tokenizer configs first (they describe this
    tokenizer), then `<key>_id` from generation_config.json / config.json."""
    for config in configs:
        content = _special_content(config.get(key))
        if content is not None and tk.token_to_id(content) is not None:
            return tk.token_to_id(content)
    for config in id_configs:
        found = _first_id(config.get(f"{key}_id"))
        if found is not None:
            return found
    return None


def _tokenizer_folder(path_or_name: str | os.PathLike[str]) -> Path:
    """Map a folder, a tokenizer.json file or a cached hub name to a folder with tokenizer.json."""
    raw = os.fspath(path_or_name)
    if raw.startswith("local:"):
        raw = raw[len("local:") :]
    path = Path(raw).expanduser()
    tried = [str(path / "tokenizer.json")]
    if path.is_file() and path.name == "tokenizer.json":
        return path.parent
    if (path / "tokenizer.json").is_file():
        return path
    snapshot = hf_snapshot(raw)
    tried.append(f"Hugging Face cache {hf_hub_cache()} (offline) for {raw!r}")
    if snapshot is not None and (snapshot / "tokenizer.json").is_file():
        return snapshot
    if snapshot is not None:
        tried.append(f"{snapshot / 'tokenizer.json'} (snapshot has no tokenizer.json)")
    raise TokenizerNotFound(
        f"no tokenizer found for {raw!r}; tried: " + "; ".join(tried) + ". A tokenizer needs a "
        "tokenizer.json (fast tokenizer); hub names are only looked up in the local cache."
    )


@functools.lru_cache(maxsize=32)
def _load_folder(folder: str, mtime_ns: int) -> Tokenizer:
    """Cached per folder and tokenizer.json mtime: several layers load the same tokenizer."""
    del mtime_ns  # part of the cache key only
    root = Path(folder)
    try:
        tk = tokenizers.Tokenizer.from_file(str(root / "tokenizer.json"))
    except Exception as exc:
        raise TokenizerNotFound(f"cannot read {root / 'tokenizer.json'}: {exc}") from exc
    tok_config = _read_json(root / "tokenizer_config.json")
    configs = [tok_config, _read_json(root / "special_tokens_map.json")]
    id_configs = [_read_json(root / "generation_config.json"), _read_json(root / "config.json")]
    return Tokenizer(
        tk,
        name=folder,
        bos_token_id=_special_id(tk, "bos_token", configs, id_configs),
        eos_token_id=_special_id(tk, "eos_token", configs, id_configs),
        chat_template=_chat_template(root, tok_config),
    )


def load_tokenizer(path_or_name: str | os.PathLike[str]) -> Tokenizer:
    """Load a tokenizer from a folder (tokenizer.json + configs) or a hub name in the local HF
    cache. Never touches the network; the same folder is loaded once per process."""
    folder = _tokenizer_folder(path_or_name).resolve()
    mtime = (folder / "tokenizer.json").stat().st_mtime_ns
    return _load_folder(str(folder), mtime)
