"""Where cogql keeps things on disk (its own cache root, the Hugging Face hub cache) and
whether it draws progress on the terminal.

Both are read from the environment on every call, not at import time, so variables set after
import are honoured; every layer may use them (they import nothing of cogql's).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

__all__ = ["cache_dir", "hf_endpoint", "hf_hub_cache", "hub_offline", "progress_shown"]

DEFAULT_HF_ENDPOINT = "https://huggingface.co"


def cache_dir() -> Path:
    """cogql's cache root: $COGQL_CACHE, else ~/.cache/cogql; created on demand."""
    env = os.environ.get("COGQL_CACHE")
    root = Path(env).expanduser() if env else Path.home() / ".cache" / "cogql"
    root.mkdir(parents=True, exist_ok=True)
    return root


def hf_hub_cache() -> Path:
    """The Hugging Face hub cache folder (HF_HUB_CACHE, HUGGINGFACE_HUB_CACHE, HF_HOME, then
    XDG_CACHE_HOME, as huggingface_hub resolves it)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]).expanduser() / "hub"
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read at call time (huggingface_hub reads it once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def hf_endpoint() -> str:
    """The hub's address: HF_ENDPOINT (a mirror), else huggingface.co; read at call time."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_HF_ENDPOINT).rstrip("/")


def progress_shown() -> bool:
    """Whether progress is drawn on stderr: on a terminal, or with COGQL_PROGRESS=1; never
    with COGQL_PROGRESS=0 (a log in CI stays readable)."""
    forced = os.environ.get("COGQL_PROGRESS")
    return forced != "0" and (forced == "1" or sys.stderr.isatty())
