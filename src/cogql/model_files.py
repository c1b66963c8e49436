"""Which files of a model folder or hub repo make the model: the one answer that both the
runtime download (engine/models/names.py) and `cogql replicate build` (replicate/deploy/
sources.py) use, so a model that runs after one runs after the other.

A model is its config, its tokenizer files and exactly one weight format: safetensors when
present (a single file, or an index and the shards it names), else PyTorch .bin. Documents
(model card, license) go into a deployed project, which ships them, but a run does not need
them. Names here are top-level file names of the model folder; nothing here touches the disk.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable

__all__ = [
    "BIN_INDEX",
    "DOC_PATTERNS",
    "META_PATTERNS",
    "RUN_META_PATTERNS",
    "SAFETENSORS_INDEX",
    "TOKENIZER_FILES",
    "matching",
    "shard_names",
    "weight_files",
]

TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "added_tokens.json",
    "tokenizer.model",
    "vocab.json",
    "vocab.txt",
    "merges.txt",
    "chat_template.jinja",
)
# what loading a model reads besides its weights
RUN_META_PATTERNS = (
    "config.json",
    "generation_config.json",
    *TOKENIZER_FILES,
    "chat_template.json",
    "*.tiktoken",
)
# what a deployed project ships along (its license and model card)
DOC_PATTERNS = ("LICENSE*", "*.md")
# files that describe a model or its tokenizer (copied whatever the weight format)
META_PATTERNS = (*RUN_META_PATTERNS, *DOC_PATTERNS)
SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


def matching(names: Iterable[str], patterns: Iterable[str]) -> list[str]:
    """The names (sorted) that match any of the shell-style patterns."""
    patterns = tuple(patterns)
    return sorted(n for n in names if any(fnmatch.fnmatch(n, p) for p in patterns))


def weight_files(names: set[str], use_safetensors: bool | None) -> tuple[list[str], bool]:
    """(weight file names incl. their index, is_safetensors) from a folder's top-level names;
    an index comes first and stands for the shards it names (see `shard_names`)."""
    if use_safetensors is not False:
        if SAFETENSORS_INDEX in names:
            return [SAFETENSORS_INDEX], True
        if "model.safetensors" in names:
            return ["model.safetensors"], True
    if use_safetensors is not True:
        if BIN_INDEX in names:
            return [BIN_INDEX], False
        if "pytorch_model.bin" in names:
            return ["pytorch_model.bin"], False
    return [], use_safetensors is not False


def shard_names(index: object) -> list[object]:
    """The shard names a parsed index file lists, each once, in order and as found: callers
    check each like any name from outside. ValueError when it has no weight_map."""
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError("no weight_map")
    names: list[object] = []
    for name in weight_map.values():
        if name not in names:  # few distinct shards, many tensors
            names.append(name)
    return names
