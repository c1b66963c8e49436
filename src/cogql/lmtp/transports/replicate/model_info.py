"""MODEL_INFO answers remembered per model version, so only the first query against a version
pays a prediction for them."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import Any, ClassVar

from ....locations import cache_dir

__all__ = ["ModelInfoCache"]

log = logging.getLogger("cogql.lmtp.replicate")


class ModelInfoCache:
    """MODEL_INFO answers per (API, version, request data): a version never changes, so its
    answer is fetched once. On disk under $COGQL_REPLICATE_CACHE (\"off\" disables the disk),
    else cogql's cache folder."""

    _memory: ClassVar[dict[str, dict[str, Any]]] = {}

    def __init__(self, folder: Path | None) -> None:
        self.folder = folder

    @classmethod
    def forget(cls) -> None:
        """Drop the answers held in memory (the disk keeps its own)."""
        cls._memory.clear()

    @staticmethod
    def default_folder() -> Path | None:
        env = os.environ.get("COGQL_REPLICATE_CACHE")
        if env is not None and env.strip().lower() in ("", "0", "off", "false", "no"):
            return None
        if env:
            return Path(env).expanduser()
        return cache_dir() / "replicate"

    @staticmethod
    def key(base_url: str, version: str, data: dict[str, Any]) -> str:
        raw = json.dumps([base_url, version, data], sort_keys=True)
        return hashlib.sha256(raw.encode()).hexdigest()[:40]

    def get(self, key: str) -> dict[str, Any] | None:
        if key in self._memory:
            return self._memory[key]
        if self.folder is None:
            return None
        try:
            info = json.loads((self.folder / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if isinstance(info, dict):
            self._memory[key] = info
            return info
        return None

    def put(self, key: str, info: dict[str, Any]) -> None:
        self._memory[key] = info
        if self.folder is None:
            return
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            tmp = self.folder / f".{key}.{secrets.token_hex(4)}.tmp"
            tmp.write_text(json.dumps(info), encoding="utf-8")
            tmp.replace(self.folder / f"{key}.json")
        except OSError as e:
            log.debug("cannot write the MODEL_INFO cache in %s: %s", self.folder, e)
