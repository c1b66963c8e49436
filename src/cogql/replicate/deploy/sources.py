"""Which files go into a project's checkpoints/, and where they come from.

A model is a local folder, a GGUF file (converted once by `engine.models`), or a Hugging Face
repo. Hub repos are read from the local cache first; the network is used only for files the
cache lacks, never when HF_HUB_OFFLINE is set, and both downloads are pinned to one commit
(LMQL re-listed a different snapshot after its second download). Exactly one weight format is
picked: safetensors when present (a single model.safetensors counts: LMQL missed that case),
with index files honoured, else PyTorch .bin files.

Nothing is read from outside the model folder: every file must resolve inside it (for a Hugging
Face snapshot, inside the snapshot or its repo's blobs, where the snapshot's links point), and
shard names in index files are checked like user input. A folder of links to elsewhere would
otherwise put any readable file of the machine into checkpoints/ (and into the pushed image).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ...engine.models import ModelNotFound, resolve_model_path
from ...errors import DeployError
from ...locations import hf_endpoint, hf_hub_cache, hub_offline
from ...model_files import (
    BIN_INDEX,
    META_PATTERNS,
    SAFETENSORS_INDEX,
    TOKENIZER_FILES,
    matching,
    shard_names,
    weight_files,
)
from ...tokenizer import hf_snapshot
from .config import ConfiguredModel
from .untrusted import inside, relative_name_problem


class SourceError(DeployError):
    """A model's files cannot be found or are incomplete; the message says what to do."""


class UnsafeSource(SourceError):
    """A model folder names or links to a file outside itself; nothing of it is used."""


@dataclass(frozen=True)
class CheckpointFile:
    name: str  # path inside checkpoints/ (posix)
    source: Path  # the real file (symlinks resolved, e.g. a blob in the HF cache)
    size: int


@dataclass(frozen=True)
class ModelFiles:
    origin: str  # for messages: where the files come from
    files: tuple[CheckpointFile, ...]
    safetensors: bool

    @property
    def total_bytes(self) -> int:
        return sum(f.size for f in self.files)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise SourceError(f"cannot read {path}: {e}") from None
    return data if isinstance(data, dict) else {}


def _index_shards(index: Path, origin: str) -> list[str]:
    try:
        names = shard_names(_read_json(index))
    except ValueError:
        raise SourceError(f"{index} has no weight_map; the download may be incomplete") from None
    shards = set()
    for name in names:
        problem = relative_name_problem(name)
        if problem:
            raise UnsafeSource(
                f"{origin}: {index} names the shard {name!r}, which {problem}; shard names "
                "must be relative file names inside the model folder (no '..', no absolute "
                "paths, no backslashes or control characters)"
            )
        assert isinstance(name, str)  # relative_name_problem refuses anything else
        shards.add(name)
    return sorted(shards)


def _meta_names(names: set[str], trust_remote_code: bool) -> list[str]:
    patterns = (*META_PATTERNS, "*.py") if trust_remote_code else META_PATTERNS
    return matching(names, patterns)


def _top_level(folder: Path) -> set[str]:
    return {p.name for p in folder.iterdir() if p.is_file()}


def allowed_roots(folder: Path) -> tuple[Path, ...]:
    """Where the files of `folder` may resolve to: the folder itself and, for a Hugging Face
    snapshot (models--ORG--NAME/snapshots/COMMIT), its repo's blobs folder and nothing else."""
    real = folder.resolve()
    repo = real.parent.parent
    if real.parent.name == "snapshots" and repo.name.startswith("models--"):
        blobs = repo / "blobs"
        if blobs.is_dir():
            return real, blobs.resolve()
    return (real,)


def _resolve_inside(folder: Path, name: str, roots: tuple[Path, ...], origin: str) -> Path:
    """The real file behind `folder/name`, which must stay inside `roots`."""
    problem = relative_name_problem(name)
    if problem:
        raise UnsafeSource(f"{origin}: the file name {name!r} in {folder} {problem}")
    real = (folder / name).resolve()
    if not inside(real, roots):
        where = "the snapshot and its cache blobs" if len(roots) > 1 else "the model folder"
        raise UnsafeSource(
            f"{origin}: {folder / name} leads to {real}, outside {where}; cogql reads nothing "
            f"from outside it. Put the file itself into {folder} (not a link to elsewhere)"
        )
    return real


def plan_folder(folder: Path, args: dict[str, Any], origin: str) -> tuple[list[str], bool]:
    """File names (relative to `folder`) to link, with index shards expanded; checks that every
    one of them is there."""
    names = _top_level(folder)
    if "config.json" not in names:
        raise SourceError(f"{origin}: no config.json in {folder}")
    weights, safetensors = weight_files(names, args.get("use_safetensors"))
    if not weights:
        use = args.get("use_safetensors")
        fmt = "safetensors " if use is True else ".bin " if use is False else ""
        raise SourceError(
            f"{origin}: no {fmt}weights in {folder} (looked for model.safetensors, "
            f"{SAFETENSORS_INDEX}, pytorch_model.bin, {BIN_INDEX})"
        )
    if weights[0].endswith(".index.json"):
        index = _resolve_inside(folder, weights[0], allowed_roots(folder), origin)
        weights += _index_shards(index, origin)
    wanted = sorted(set(_meta_names(names, args.get("trust_remote_code") is True)) | set(weights))
    missing = [n for n in wanted if not (folder / n).is_file()]
    if missing:
        raise SourceError(f"{origin}: missing in {folder}: {', '.join(missing)}")
    return wanted, safetensors


def _files(folder: Path, names: list[str], origin: str) -> list[CheckpointFile]:
    roots = allowed_roots(folder)
    out = []
    for name in names:
        real = _resolve_inside(folder, name, roots, origin)
        out.append(CheckpointFile(name, real, real.stat().st_size))
    return out


# --------------------------------------------------------------------------- hub


def _hub_local(repo: str, revision: str | None) -> Path | None:
    """The cached snapshot, partial or not (`plan_folder` says what it lacks)."""
    return hf_snapshot(repo, revision)


def _hub_download(repo: str, revision: str | None, origin: str) -> Path:
    """Metadata first, then exactly the weight files it names, both from one commit, from the
    hub HF_ENDPOINT names at call time (huggingface_hub reads it once, at import)."""
    from huggingface_hub import HfApi, snapshot_download

    endpoint = hf_endpoint()
    meta = [*META_PATTERNS, "*.index.json"]
    try:
        first = Path(
            snapshot_download(
                repo,
                revision=revision,
                cache_dir=hf_hub_cache(),
                allow_patterns=meta,
                endpoint=endpoint,
            )
        )
        commit = first.name
        listing = set(HfApi(endpoint=endpoint).list_repo_files(repo, revision=commit))
        top = {n for n in listing if "/" not in n}
        weights, _ = weight_files(top, None)
        if weights and weights[0].endswith(".index.json"):
            index = _resolve_inside(first, weights[0], allowed_roots(first), origin)
            weights += _index_shards(index, origin)
        folder = Path(
            snapshot_download(
                repo,
                revision=commit,
                cache_dir=hf_hub_cache(),
                allow_patterns=weights or meta,
                endpoint=endpoint,
            )
        )
    except SourceError:
        raise
    except Exception as e:
        raise SourceError(
            f"{origin}: download failed: {type(e).__name__}: {e}. For gated repos log in "
            "(`hf auth login`) or set HF_TOKEN; to build offline, put the repo in the "
            "Hugging Face cache first and set HF_HUB_OFFLINE=1"
        ) from None
    return folder


def _hub_folder(model: ConfiguredModel, args: dict[str, Any]) -> tuple[Path, list[str], bool]:
    hf = model.spec.huggingface
    assert hf is not None
    origin = f"models.{model.name}: {hf.repo}" + (f"@{hf.version}" if hf.version else "")
    cached = _hub_local(hf.repo, hf.version)
    if cached is not None:
        try:
            names, safetensors = plan_folder(cached, args, origin)
            return cached, names, safetensors
        except UnsafeSource:
            raise
        except SourceError as e:
            if hub_offline():
                raise SourceError(
                    f"{e}. HF_HUB_OFFLINE is set, so nothing is downloaded: fetch the repo "
                    f"once online (`hf download {hf.repo}`) or unset HF_HUB_OFFLINE"
                ) from None
    elif hub_offline():
        raise SourceError(
            f"{origin}: not in the Hugging Face cache {hf_hub_cache()} and HF_HUB_OFFLINE is "
            f"set; fetch it once online (`hf download {hf.repo}`), or point HF_HUB_CACHE / "
            "HF_HOME at the cache that has it"
        )
    folder = _hub_download(hf.repo, hf.version, origin)
    names, safetensors = plan_folder(folder, args, origin)
    return folder, names, safetensors


# --------------------------------------------------------------------------- entry points


def _local_folder(model: ConfiguredModel, args: dict[str, Any]) -> tuple[Path, list[str], bool]:
    path = model.local_path
    assert path is not None
    origin = f"models.{model.name}: {path}"
    if path.is_dir() and not (path / "config.json").is_file():  # a folder with a .gguf
        for gguf in path.glob("*.gguf"):
            _resolve_inside(path, gguf.name, (path.resolve(),), origin)
    try:
        folder = resolve_model_path(path)  # converts a GGUF once, into cogql's cache
    except ModelNotFound as e:
        raise SourceError(f"{origin}: {e}") from None
    except Exception as e:  # conversion errors name the file and the cause
        raise SourceError(f"{origin}: {type(e).__name__}: {e}") from None
    names, safetensors = plan_folder(folder, args, origin)
    return folder, names, safetensors


def _tokenizer_folder(spec: str, base: Path, name: str) -> Path:
    path = (base / Path(spec).expanduser()) if not spec.startswith(("/", "~")) else Path(spec)
    path = path.expanduser()
    if path.is_file() and path.name == "tokenizer.json":
        return path.parent
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return path
        raise SourceError(f"models.{name}.tokenizer: {path} has no tokenizer.json")
    cached = _hub_local(spec, None)
    if cached is None and not hub_offline() and "/" in spec:
        from huggingface_hub import snapshot_download

        try:
            cached = Path(
                snapshot_download(
                    spec,
                    cache_dir=hf_hub_cache(),
                    allow_patterns=list(TOKENIZER_FILES),
                    endpoint=hf_endpoint(),
                )
            )
        except Exception as e:
            raise SourceError(
                f"models.{name}.tokenizer: download of {spec!r} failed: {e}"
            ) from None
    if cached is None or not (cached / "tokenizer.json").is_file():
        raise SourceError(
            f"models.{name}.tokenizer: {spec!r} is neither a folder or tokenizer.json file "
            f"(relative to {base}) nor a hub repo with tokenizer.json in the cache"
        )
    return cached


def collect(model: ConfiguredModel, base: Path) -> ModelFiles:
    """Plan a model's checkpoints/ without writing anything."""
    args = model.args
    if model.spec.local is not None:
        folder, names, safetensors = _local_folder(model, args)
        origin = str(model.local_path)
    else:
        folder, names, safetensors = _hub_folder(model, args)
        hf = model.spec.huggingface
        assert hf is not None
        origin = f"{hf.repo}@{folder.name}"  # the snapshot folder is named by its commit
    files = _files(folder, names, f"models.{model.name}: {origin}")
    if model.spec.tokenizer:
        tok_folder = _tokenizer_folder(model.spec.tokenizer, base, model.name)
        present = [n for n in TOKENIZER_FILES if (tok_folder / n).is_file()]
        tok_files = _files(tok_folder, present, f"models.{model.name}.tokenizer")
        files = [f for f in files if f.name not in TOKENIZER_FILES] + tok_files
    if not any(f.name == "tokenizer.json" for f in files):
        raise SourceError(
            f"models.{model.name}: {origin} has no tokenizer.json (a fast tokenizer); cogql's "
            'engine needs one. Set tokenizer = "FOLDER or org/name" to a tokenizer that has it'
        )
    files.sort(key=lambda f: f.name)
    return ModelFiles(origin, tuple(files), safetensors)
