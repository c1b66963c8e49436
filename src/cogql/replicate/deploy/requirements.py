"""requirements.txt for a project: every package cogql needs, pinned to the version it was
built and tested with here.

LMQL's projects pinned nothing (`lmql@main`, `transformers>=4.28.1`), so each rebuild could
change the protocol and the numbers. Here the pins are the transitive closure of cogql's own
requirements, read from this environment's installed distributions and evaluated for the
image's platform (Linux x86_64, the configured Python). Local version labels are dropped
(`torch 2.13.0+cpu` here → `torch==2.13.0`, which is the CUDA build on Linux). The Cog SDK is
left out: cog.yaml pins it with `build.sdk_version`, and Cog installs it itself.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, distribution
from typing import Any

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ...errors import DeployError

COG_VERSION = "0.23.1"
BITSANDBYTES = "bitsandbytes==0.50.2"  # not installable here (no GPU); pinned to a release
SKIP = {"cog", "coglet", "cogql"}
IMAGE_EXTRAS = {"engine"}  # the image runs the engine; cogql's other extras stay out of it


class RequirementsError(DeployError):
    """cogql's own dependencies are not installed, so nothing can be pinned."""


def _environment(python_version: str) -> dict[str, str]:
    env = {key: str(value) for key, value in default_environment().items()}
    env.update(
        python_version=python_version,
        python_full_version=f"{python_version}.0",
        sys_platform="linux",
        platform_system="Linux",
        platform_machine="x86_64",
        os_name="posix",
        implementation_name="cpython",
        platform_python_implementation="CPython",
    )
    return env


def _applies(req: Requirement, env: dict[str, str], extras: set[str]) -> bool:
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in extras | {""})


def pinned(python_version: str, *, quantized: bool = False) -> list[str]:
    """`name==version` lines, sorted case-insensitively, for cogql's runtime closure."""
    env = _environment(python_version)
    try:
        roots = distribution("cogql").requires or []
    except PackageNotFoundError:
        raise RequirementsError(
            "cogql is not installed as a package, so its dependencies cannot be pinned; "
            "install it (pip install -e .) in the environment that runs the build"
        ) from None
    pins: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    queue: list[tuple[Requirement, set[str]]] = [(Requirement(r), IMAGE_EXTRAS) for r in roots]
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        req, parent_extras = queue.pop()
        if not _applies(req, env, parent_extras):
            continue
        name = canonicalize_name(req.name)
        if name in SKIP:
            continue
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            dist = distribution(req.name)
        except PackageNotFoundError:
            unresolved.setdefault(name, str(req.specifier))
            continue
        pins[name] = f"{dist.metadata['Name']}=={Version(dist.version).public}"
        queue += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    lines = list(pins.values())
    # platform-only packages (e.g. CUDA libraries) that their parent pins itself
    lines += [f"{n}{spec}" for n, spec in unresolved.items() if n not in pins and spec]
    if quantized:
        lines.append(BITSANDBYTES)
    return sorted(lines, key=str.lower)


def render(python_version: str, *, quantized: bool, header: list[str]) -> str:
    body: list[Any] = [*header, *pinned(python_version, quantized=quantized)]
    return "\n".join(body) + "\n"
