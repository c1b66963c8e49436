"""config.toml: LMQL's build schema plus cogql's keys, validated before anything is written.

LMQL's build script discovers mistakes one at a time, halfway through a build (a `/` in a name
crashes mkdir after other folders were made; a missing repo is a KeyError). Here the whole file
is checked first and every mistake is reported at once, each with its key path and a fix.

Schema (one table per model; relative paths are relative to the config file, not the cwd):

    dest_prefix = "r8.im/OWNER/"            # optional: without it no push script is written
    [models.NAME]
    huggingface.repo = "org/name"           # or local.path = "folder or .gguf"
    huggingface.version = "main"            # optional revision: branch, tag or commit
    tokenizer = "folder or hub id"          # optional: tokenizer files from elsewhere
    gpu = true                              # cog.yaml build.gpu; also where the model loads
    python_version = "3.11"                 # 3.11, 3.12 or 3.13
    max_concurrency = 1                     # >1 makes the predictor async (see README)
    config.torch_dtype = "float16"          # model arguments (config.json)
    engine = "vllm"                         # optional: "cogql" (the default) or "vllm"
    vllm.max_model_len = 4096               # vLLM's engine arguments (engine = "vllm" only)

Model and owner names follow Replicate's rule, which is Docker's rule for image names (Replicate
validates owner and model names with it): lowercase letters and digits, joined by single
separators ('.', '_', '__' or a run of '-'), no separator first or last, and the whole image
name REGISTRY/OWNER/NAME at most 255 characters. No string may hold a control character: they
reach cog.yaml, predict.py and the push script.
"""

from __future__ import annotations

import difflib
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from ...errors import DeployError
from ..cog.modelargs import DEFAULT_ENGINE, ENGINES, check_model_args
from ..cog.vllm_options import check_vllm_options, normalized
from .untrusted import control_character

EXAMPLE_OWNER = "YOURACCOUNT"
_COMPONENT = r"[a-z0-9]+(?:(?:\.|__?|-+)[a-z0-9]+)*"  # Docker's image name component
_HOST = r"[a-z0-9](?:[a-z0-9.-]*[a-z0-9])?(?::[0-9]+)?"
NAME_RE = re.compile(rf"^{_COMPONENT}$")
REPO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$")
PREFIX_RE = re.compile(rf"^{_HOST}(?:/{_COMPONENT})+$")
IMAGE_NAME_MAX = 255  # Docker's limit on a whole image name, registry included
NAME_RULE = (
    "lowercase letters and digits, joined by single separators ('.', '_', '__' or dashes), "
    "with no separator first or last (Docker's image-name rule, which Replicate follows)"
)
PYTHON_VERSIONS = ("3.11", "3.12", "3.13")


class ConfigError(DeployError):
    """config.toml is missing, unreadable or wrong; `issues` lists every mistake found."""

    def __init__(self, path: Path, issues: list[ConfigIssue]) -> None:
        self.path, self.issues = path, issues
        n = len(issues)
        head = f"{path}: {n} mistake{'s' if n != 1 else ''}; nothing was written"
        super().__init__("\n".join([head, *(f"  {i}" for i in issues)]))


@dataclass(frozen=True)
class ConfigIssue:
    key: str
    problem: str
    fix: str

    def __str__(self) -> str:
        return f"{self.key}: {self.problem}\n    fix: {self.fix}"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


def _one_line(value: str) -> str:
    char = control_character(value)
    if char:
        raise ValueError(f"contains the control character {char} (a line break, tab or the like)")
    return value


OneLine = Annotated[str, AfterValidator(_one_line)]  # config strings: no control characters


class HuggingFace(_Strict):
    repo: OneLine
    version: OneLine | None = None


class Local(_Strict):
    path: OneLine


class ModelSpec(_Strict):
    """One `[models.NAME]` table."""

    huggingface: HuggingFace | None = None
    local: Local | None = None
    tokenizer: OneLine | None = None
    gpu: bool = True
    python_version: Literal["3.11", "3.12", "3.13"] = "3.11"
    max_concurrency: int = Field(default=1, ge=1, le=64)
    config: dict[str, Any] = Field(default_factory=dict)
    engine: str = DEFAULT_ENGINE
    vllm: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class ConfiguredModel:
    """A validated model, with `local.path` resolved against the config file's folder."""

    name: str
    spec: ModelSpec
    local_path: Path | None

    @property
    def args(self) -> dict[str, Any]:
        return dict(self.spec.config)

    @property
    def engine(self) -> str:
        return self.spec.engine

    @property
    def vllm_options(self) -> dict[str, Any]:
        """The `vllm` table, names as vLLM spells them."""
        return normalized(self.spec.vllm)


@dataclass(frozen=True)
class BuildConfig:
    path: Path
    dest_prefix: str | None
    models: dict[str, ConfiguredModel]

    def image(self, name: str) -> str | None:
        """`r8.im/OWNER/NAME` when a dest_prefix is set."""
        return f"{self.dest_prefix}/{name}" if self.dest_prefix else None


# --------------------------------------------------------------------------- checks


def slug(name: str) -> str:
    """A suggestion for a valid model name: lowercase, other characters become dashes."""
    s = re.sub(r"[^a-z0-9._-]+", "-", name.lower())
    s = re.sub(r"[._-]{2,}", lambda m: m[0] if re.fullmatch(r"__|-+", m[0]) else "-", s)
    return s[:IMAGE_NAME_MAX].strip("-._") or "my-model"


def name_problem(name: str, what: str = "model") -> str | None:
    """Why `name` cannot name a Replicate model (or owner); None when it can."""
    a = "an" if what[0] in "aeiou" else "a"
    if "/" in name:
        why = " (it names a folder and a Replicate model)" if what == "model" else ""
        return f"{a} {what} name cannot contain '/'{why}"
    if name.startswith("."):
        return f"{a} {what} name cannot start with '.' (it would be a hidden folder)"
    if len(name) > IMAGE_NAME_MAX:
        return (
            f"{len(name)} characters is too long: the whole image name (r8.im/OWNER/NAME) "
            f"may have at most {IMAGE_NAME_MAX} characters (Docker's limit, which Replicate "
            "follows)"
        )
    if not NAME_RE.match(name):
        return f"Replicate {what} names are {NAME_RULE}"
    return None


def image_problem(image: object, name: str) -> str | None:
    """Why `image` is not a push destination REGISTRY/OWNER/NAME for the model `name`."""
    if not isinstance(image, str):
        return f"{image!r} is not an image name"
    if not PREFIX_RE.match(image) or image.count("/") < 2:
        return f"{image!r} is not REGISTRY/OWNER/NAME ({NAME_RULE})"
    if image.rsplit("/", 1)[1] != name:
        return f"{image!r} is not an image for the model {name!r}"
    if len(image) > IMAGE_NAME_MAX:
        return f"{image!r} is longer than {IMAGE_NAME_MAX} characters"
    return None


def _check_name(name: str) -> list[ConfigIssue]:
    problem = name_problem(name)
    if problem is None:
        return []
    return [ConfigIssue(_table_key(name), problem, f"rename the table to [models.{slug(name)}]")]


def _check_image_lengths(prefix: str | None, names: list[str]) -> list[ConfigIssue]:
    if prefix is None:
        return []
    issues = []
    for name in names:
        image = f"{prefix}/{name}"
        if len(image) > IMAGE_NAME_MAX and len(name) <= IMAGE_NAME_MAX:
            room = IMAGE_NAME_MAX - len(prefix) - 1
            issues.append(
                ConfigIssue(
                    _table_key(name),
                    f"the image name {prefix}/NAME would be {len(image)} characters; Docker "
                    f"(and so Replicate) allows at most {IMAGE_NAME_MAX}",
                    f"shorten the model name to at most {room} characters",
                )
            )
    return issues


def _check_prefix(value: Any) -> tuple[str | None, list[ConfigIssue]]:
    if value is None:
        return None, []
    fix_example = 'dest_prefix = "r8.im/your-replicate-username/"'
    if not isinstance(value, str):
        return None, [ConfigIssue("dest_prefix", f"must be a string, not {value!r}", fix_example)]
    prefix = value.strip().rstrip("/")
    if prefix.split("/")[-1].upper() == EXAMPLE_OWNER:
        return None, [
            ConfigIssue(
                "dest_prefix",
                f"still the example's {value!r}",
                f"put your Replicate username in place of {EXAMPLE_OWNER}, or delete the "
                "line to build without a push script",
            )
        ]
    if not PREFIX_RE.match(prefix):
        problem = (
            "image names must be lowercase"
            if PREFIX_RE.match(prefix.lower())
            else f"{value!r} is not REGISTRY/OWNER"
        )
        fix = f'dest_prefix = "{prefix.lower()}/"' if prefix.lower() != prefix else fix_example
        return None, [ConfigIssue("dest_prefix", problem, fix)]
    return prefix, []


_TYPE_WORDS = {
    "bool_type": "true or false",
    "int_type": "a whole number",
    "string_type": "a string (in quotes)",
    "dict_type": "a table",
    "model_type": "a table",
}


def _pydantic_issue(prefix: str, err: Mapping[str, Any]) -> ConfigIssue:
    loc = [str(p) for p in err["loc"]]
    key = ".".join([prefix, *loc])
    kind, value = err["type"], err.get("input")
    if kind == "extra_forbidden":
        allowed = _allowed_keys(loc[:-1])
        close = difflib.get_close_matches(loc[-1], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        return ConfigIssue(key, "unknown key", f"{hint}allowed here: {', '.join(allowed)}")
    if kind == "missing":
        return ConfigIssue(key, "missing", f"add {'.'.join(loc)} = ...")
    if kind == "literal_error" and loc[-1] == "python_version":
        versions = ", ".join(f'"{v}"' for v in PYTHON_VERSIONS)
        if not isinstance(value, str):
            problem = f"must be a quoted string, not the number {value!r}"
        else:
            problem = f"unsupported Python {value!r} (cogql needs 3.11+, Cog supports up to 3.13)"
        return ConfigIssue(key, problem, f"use one of {versions}, in quotes")
    if kind == "value_error":
        return ConfigIssue(
            key,
            str(err.get("ctx", {}).get("error", err["msg"])),
            "write the value on one line, without control characters",
        )
    if kind in _TYPE_WORDS:
        want = _TYPE_WORDS[kind]
        return ConfigIssue(key, f"must be {want}, not {value!r}", f"write {loc[-1]} as {want}")
    return ConfigIssue(key, err["msg"], "see the example from `cogql replicate init`")


def _allowed_keys(loc: list[str]) -> list[str]:
    model: type[BaseModel] = ModelSpec
    for part in loc:
        field = model.model_fields.get(part)
        ann = field.annotation if field else None
        inner = next((a for a in getattr(ann, "__args__", ()) if isinstance(a, type)), ann)
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            model = inner
    return list(model.model_fields)


def _table_key(name: str) -> str:
    return f"models.{name}" if re.match(r"^[A-Za-z0-9_-]+$", name) else f'models."{name}"'


def _check_model(
    name: str, table: Any, base: Path
) -> tuple[ConfiguredModel | None, list[ConfigIssue]]:
    issues = _check_name(name)
    prefix = _table_key(name)
    if not isinstance(table, dict):
        return None, [*issues, ConfigIssue(prefix, "must be a table", f"[models.{slug(name)}]")]
    spec = None
    try:
        spec = ModelSpec.model_validate(table)
    except ValidationError as e:
        issues += [_pydantic_issue(prefix, err) for err in e.errors()]
    # the checks below read the raw table, so they report even when the schema check failed
    hf, local = table.get("huggingface"), table.get("local")
    if hf is None and local is None:
        issues.append(
            ConfigIssue(
                prefix,
                "no model source",
                f'add huggingface.repo = "org/name" or local.path = "/path/to/model" to [{prefix}]',
            )
        )
    if hf is not None and local is not None:
        issues.append(
            ConfigIssue(prefix, "both huggingface and local are set", "keep only one of them")
        )
    repo = hf.get("repo") if isinstance(hf, dict) else None
    # a string with control characters has its issue from the schema check: one per key
    if isinstance(repo, str) and not control_character(repo) and not REPO_RE.match(repo):
        issues.append(
            ConfigIssue(
                f"{prefix}.huggingface.repo",
                f"{repo!r} is not a hub id",
                'use the id from the model page, like "HuggingFaceTB/SmolLM2-135M-Instruct"',
            )
        )
    raw_path = local.get("path") if isinstance(local, dict) else None
    local_path = None
    if isinstance(raw_path, str) and not control_character(raw_path):
        local_path = (base / Path(raw_path).expanduser()).absolute()
        if not local_path.exists():
            issues.append(
                ConfigIssue(
                    f"{prefix}.local.path",
                    f"{local_path} does not exist",
                    "point it at a model folder (with config.json) or a .gguf file; relative "
                    f"paths are relative to {base}",
                )
            )
    engine_issues, engine = _check_engine(prefix, table)
    issues += engine_issues
    args = table.get("config")
    if isinstance(args, dict):
        gpu = table.get("gpu", True) is not False
        issues += [
            ConfigIssue(f"{prefix}.config.{i.key}", i.problem, i.fix)
            for i in check_model_args(args, gpu=gpu, engine=engine)
        ]
    if spec is None or issues:
        return None, issues
    return ConfiguredModel(name, spec, local_path), issues


def _check_engine(prefix: str, table: dict[str, Any]) -> tuple[list[ConfigIssue], str]:
    """Issues with `engine` and the `vllm` table, and the engine to check `config` for."""
    engine = table.get("engine", DEFAULT_ENGINE)
    if not isinstance(engine, str):
        return [], DEFAULT_ENGINE  # the schema check reports it
    if engine == "llama.cpp":
        why = (
            "llama.cpp runs .gguf files in process and on `cogql serve-model`, not in a deployment"
        )
        fix = 'use engine = "cogql" (a GGUF file is converted to float32) or "vllm"'
        return [ConfigIssue(f"{prefix}.engine", why, fix)], DEFAULT_ENGINE
    if engine not in ENGINES:
        close = difflib.get_close_matches(engine.lower(), ENGINES, n=1, cutoff=0.5)
        hint = f"did you mean {close[0]!r}? " if close else ""
        fix = f'{hint}use "cogql" (the default: cogql\'s own engine) or "vllm"'
        return [ConfigIssue(f"{prefix}.engine", f"unknown engine {engine!r}", fix)], DEFAULT_ENGINE
    options = table.get("vllm")
    if "vllm" in table and engine != "vllm":
        return [
            ConfigIssue(
                f"{prefix}.vllm",
                "vLLM's engine arguments, but the model runs on cogql's engine",
                'add engine = "vllm" to the table, or remove the vllm.* keys',
            )
        ], engine
    if not isinstance(options, dict):
        return [], engine  # none, or not a table (the schema check reports it)
    return [
        ConfigIssue(f"{prefix}.vllm.{i.key}", i.problem, i.fix) for i in check_vllm_options(options)
    ], engine


def parse_config(text: str, path: Path) -> BuildConfig:
    """Validate config text; raises ConfigError with every mistake."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(path, [ConfigIssue("(syntax)", str(e), "fix the TOML syntax")]) from None
    issues: list[ConfigIssue] = []
    for key in data:
        if key not in ("dest_prefix", "models"):
            close = difflib.get_close_matches(key, ["dest_prefix", "models"], n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            issues.append(
                ConfigIssue(key, "unknown top-level key", f"{hint}allowed: dest_prefix, models")
            )
    prefix, prefix_issues = _check_prefix(data.get("dest_prefix"))
    issues += prefix_issues
    tables = data.get("models")
    models: dict[str, ConfiguredModel] = {}
    if not isinstance(tables, dict) or not tables:
        issues.append(
            ConfigIssue(
                "models",
                "no models",
                'add a table like [models.my-model] with huggingface.repo = "org/name"',
            )
        )
    else:
        for name, table in tables.items():
            model, model_issues = _check_model(name, table, path.parent)
            issues += model_issues
            if model is not None:
                models[name] = model
    if isinstance(tables, dict):
        issues += _check_image_lengths(prefix, [str(n) for n in tables])
    if issues:
        raise ConfigError(path, issues)
    return BuildConfig(path=path, dest_prefix=prefix, models=models)


def load_config(path: str | Path) -> BuildConfig:
    path = Path(path).expanduser().absolute()
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(
            path, [ConfigIssue("(file)", "not found", "create one with `cogql replicate init`")]
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(
            path, [ConfigIssue("(file)", f"unreadable: {e}", "check the file")]
        ) from None
    return parse_config(text, path)


def select(config: BuildConfig, names: tuple[str, ...] | list[str]) -> list[ConfiguredModel]:
    """The models named on the command line (all when none are named)."""
    if not names:
        return list(config.models.values())
    unknown = [n for n in names if n not in config.models]
    if unknown:
        raise ConfigError(
            config.path,
            [
                ConfigIssue(
                    f"models.{n}",
                    "not in the config",
                    f"use one of: {', '.join(config.models)}",
                )
                for n in unknown
            ],
        )
    return [config.models[n] for n in dict.fromkeys(names)]
