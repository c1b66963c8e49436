"""`cogql replicate build`: config.toml → one Cog project per model, in work/NAME/.

Order of work: validate the config (config.py), find every model's files (sources.py), render
each project and plan its writes (project.py), and only when no model has a problem and no
file is in the way, write. A project holds:

    cog.yaml  predict.py  requirements.txt  config.json  .dockerignore  push (with dest_prefix)
    .cog/openapi_schema.json   checkpoints/   cogql/ (vendored)   .cogql-manifest.json

How cogql gets into the image: its source is vendored into the project as the package folder
`cogql/`, with the exact bytes that built the project (recorded in cogql/BUILD.json and in
MODEL_INFO). Cog copies the project to /src, the working directory, so `import cogql` finds it
on every Cog version, with no package index and no wheel to host. A wheel line in
requirements.txt would need Cog to stage local files before its `pip install` layer, which
Cog does not do consistently across versions. The dependencies are pinned in requirements.txt.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from string import Template
from typing import Any

from ...errors import DeployError
from ...locations import progress_shown
from ..cog.layout import BUILD_INFO, CHECKPOINTS, MODEL_ARGS, PUSH_SCRIPT, VENDOR_DIR
from ..cog.modelargs import ENGINE_KEY, VLLM_KEY, is_quantized
from . import requirements, schema
from .config import BuildConfig, ConfigError, ConfigIssue, ConfiguredModel, name_problem, select
from .project import GeneratedFile, Link, Output, Plan, ProjectConflict, apply, plan
from .requirements import ImagePackages
from .sources import ModelFiles, SourceError, collect

TEMPLATES = Path(__file__).parent / "templates"


class BuildError(DeployError):
    """One or more models cannot be built; nothing was written."""


@dataclass(frozen=True)
class BuildResult:
    name: str
    folder: Path
    origin: str
    checkpoint_bytes: int
    counts: dict[str, int]
    image: str | None

    @property
    def push_script(self) -> Path | None:
        return self.folder / PUSH_SCRIPT if self.image else None


def cogql_version() -> str:
    try:
        return version("cogql")
    except PackageNotFoundError:
        return "0.0.0"


def _template(template: str, **values: Any) -> str:
    return Template((TEMPLATES / template).read_text(encoding="utf-8")).substitute(values)


def _quoted(value: str) -> str:
    """A double-quoted scalar that is valid JSON, YAML and TOML, and always one line: control
    characters (and all non-ASCII) are escaped, so no value can add a key or a line."""
    return json.dumps(value, ensure_ascii=True)


def vendored_files() -> list[GeneratedFile]:
    """The running cogql package, file by file, plus BUILD.json naming its exact source."""
    root = Path(__file__).resolve().parents[2]  # the cogql package folder
    files = sorted(
        p
        for p in root.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and p.suffix not in (".pyc", ".pyo")
        and p.relative_to(root).as_posix() != BUILD_INFO
    )
    digest = hashlib.sha256()
    out = []
    for path in files:
        rel = path.relative_to(root).as_posix()
        content = path.read_bytes()
        digest.update(rel.encode() + b"\0" + hashlib.sha256(content).digest())
        out.append(GeneratedFile(f"{VENDOR_DIR}/{rel}", content))
    sha = digest.hexdigest()
    info = {"cogql": f"{cogql_version()}+{sha[:12]}", "source_sha256": sha}
    out.append(
        GeneratedFile(f"{VENDOR_DIR}/{BUILD_INFO}", (json.dumps(info, indent=2) + "\n").encode())
    )
    return out


def _predict_py(model: ConfiguredModel) -> str:
    n = model.spec.max_concurrency
    description = json.dumps(schema.OPS_BATCH_DESCRIPTION)
    if n > 1:
        imports = "AsyncConcatenateIterator, Input, concurrent, streaming"
        method = _template("run_async.tmpl", description=description, max_concurrency=n)
    else:
        imports = "ConcatenateIterator, Input, streaming"
        method = _template("run_sync.tmpl", description=description)
    return _template(
        "predict.py.tmpl",
        cogql_version=cogql_version(),
        name=_quoted(model.name),
        cog_imports=imports,
        run_method=method.rstrip("\n"),
    )


def _cog_yaml(
    model: ConfiguredModel, files: ModelFiles, image: str | None, packages: ImagePackages
) -> str:
    """Every value is pasted as a quoted one-line scalar (comments included), never raw."""
    cuda = (
        f"\n  cuda: {_quoted(packages.cuda)}  # the CUDA requirements.txt's torch is built for"
        if packages.cuda
        else ""
    )
    environment = "".join(
        f"\n  - {_quoted(e)}  # for requirements.txt (see its header)" for e in packages.environment
    )
    return (
        _template(
            "cog.yaml.tmpl",
            cogql_version=cogql_version(),
            name=_quoted(model.name),
            source=_quoted(files.origin),
            gpu="true" if model.spec.gpu else "false",
            cuda_line=cuda,
            python_version=_quoted(model.spec.python_version),
            cog_version=_quoted(requirements.COG_VERSION),
            environment_lines=environment,
            image_line=f"image: {_quoted(image)}" if image else "",
        ).rstrip("\n")
        + "\n"
    )


def _packages(model: ConfiguredModel, vendor_info: dict[str, Any]) -> ImagePackages:
    header = [
        f"# Generated by cogql {cogql_version()} (`cogql replicate build`): the exact versions",
        "# cogql was built and tested with. cogql itself is vendored in ./cogql",
        f"# ({vendor_info['cogql']}); the Cog SDK is pinned by cog.yaml (build.sdk_version).",
    ]
    return requirements.for_image(
        model.spec.python_version,
        engine=model.engine,
        gpu=model.spec.gpu,
        quantized=is_quantized(model.args),
        header=header,
    )


def _model_args(model: ConfiguredModel, files: ModelFiles) -> str:
    """config.json: the model arguments, and the engine choice when it is vLLM."""
    args = model.args
    if model.engine == "vllm":
        args.update({ENGINE_KEY: model.engine, VLLM_KEY: model.vllm_options})
    else:
        args.setdefault("use_safetensors", files.safetensors)
    return json.dumps(args, indent=2, sort_keys=True) + "\n"


def render(
    model: ConfiguredModel, config: BuildConfig, files: ModelFiles, vendor: list[GeneratedFile]
) -> list[Output]:
    """Every file of one project, in memory."""
    image = config.image(model.name)
    vendor_info = json.loads(vendor[-1].content)
    version_ = cogql_version()
    packages = _packages(model, vendor_info)
    outputs: list[Output] = [
        GeneratedFile("cog.yaml", _cog_yaml(model, files, image, packages).encode()),
        GeneratedFile("predict.py", _predict_py(model).encode()),
        GeneratedFile("requirements.txt", packages.text.encode()),
        GeneratedFile(MODEL_ARGS, _model_args(model, files).encode()),
        GeneratedFile(".cog/openapi_schema.json", schema.render(version_).encode()),
        GeneratedFile(
            ".dockerignore", _template("dockerignore.tmpl", cogql_version=version_).encode()
        ),
        *vendor,
        *(Link(f"{CHECKPOINTS}/{f.name}", f.source, f.size) for f in files.files),
    ]
    if image:
        push = _template("push.tmpl", cogql_version=version_, image=shlex.quote(image))
        outputs.append(GeneratedFile(PUSH_SCRIPT, push.encode(), executable=True))
    return outputs


@contextlib.contextmanager
def _progress(total: int, show: bool) -> Iterator[Callable[[int], None]]:
    """A bytes progress bar for linking/copying weights (copies across filesystems take a
    while for multi-GB checkpoints; links finish at once)."""
    if not show or total == 0:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    with Progress(
        TextColumn("checkpoints"),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    ) as bar:
        task = bar.add_task("link", total=total)
        yield lambda n: bar.advance(task, n)


def _collect_all(models: list[ConfiguredModel], base: Path) -> dict[str, ModelFiles]:
    found: dict[str, ModelFiles] = {}
    errors: list[str] = []
    for model in models:
        try:
            found[model.name] = collect(model, base)
        except SourceError as e:
            errors.append(str(e))
    if errors:
        raise BuildError(
            f"{len(errors)} model(s) cannot be built; nothing was written:\n"
            + "\n".join(f"  {e}" for e in errors)
        )
    return found


def _check_out(out: Path) -> None:
    """--out must be a folder, or a path whose nearest existing ancestor is one."""
    existing = out
    while not existing.exists() and not existing.is_symlink() and existing != existing.parent:
        existing = existing.parent
    if existing.is_dir():
        return
    what = "a broken link" if existing.is_symlink() else "a file"
    place = f"--out {out}" if existing == out else f"{existing} (above --out {out})"
    raise BuildError(
        f"{place} is {what}, not a folder; nothing was written. Pass --out a folder (it is "
        "created if missing)"
    )


def build(
    config: BuildConfig,
    out: Path,
    names: tuple[str, ...] | list[str] = (),
    *,
    force: bool = False,
    check: bool = False,
    progress: bool | None = None,
) -> list[BuildResult]:
    """Build the named models (all when none are named); with `check`, stop before writing."""
    _check_out(out)
    models = select(config, names)
    files = _collect_all(models, config.path.parent)
    vendor = vendored_files()
    plans: list[tuple[ConfiguredModel, Plan]] = []
    conflicts: list[str] = []
    for model in models:
        root = out / model.name
        p = plan(root, render(model, config, files[model.name], vendor), force=force)
        p.manifest.info = {
            "model": model.name,
            "image": config.image(model.name),
            "origin": files[model.name].origin,
            "cogql": cogql_version(),
        }
        conflicts += p.conflicts
        plans.append((model, p))
    if conflicts:
        raise ProjectConflict(conflicts)
    if check:
        return [
            BuildResult(m.name, p.root, files[m.name].origin, files[m.name].total_bytes, {}, None)
            for m, p in plans
        ]
    total = sum(p.bytes_to_link for _, p in plans)
    results = []
    with _progress(total, progress_shown() if progress is None else progress) as advance:
        for model, p in plans:
            counts = apply(p, advance)
            results.append(
                BuildResult(
                    model.name,
                    p.root,
                    files[model.name].origin,
                    files[model.name].total_bytes,
                    counts,
                    config.image(model.name),
                )
            )
    return results


def init_config(path: Path, *, owner: str | None = None, force: bool = False) -> Path:
    """Write the commented example config.toml; never over an existing file unless forced."""
    if path.exists() and not force:
        raise FileExistsError(f"{path} exists; pass --force to replace it")
    problem = name_problem(owner, "owner") if owner is not None else None
    if problem:
        raise ConfigError(path, [ConfigIssue("--owner", problem, "pass your Replicate username")])
    prefix = f"r8.im/{owner}/" if owner else "r8.im/YOURACCOUNT/"
    path.parent.mkdir(parents=True, exist_ok=True)
    text = _template("config.toml.tmpl", dest_prefix=_quoted(prefix))
    path.write_text(text, encoding="utf-8")
    return path
