"""Built Cog projects as Replicate models, versions and deployments.

A project folder from `cogql replicate build` becomes one model, `OWNER/NAME` from the image its
config's dest_prefix names (`r8.im/OWNER/NAME`; `local/NAME` when there is none), with one
version whose id is a content hash of the project (every file, weights included), so a rebuild
that changes anything is a new version, as a push is on Replicate, and one that changes nothing
keeps its id. Each model also has a deployment of the same name, so clients written against
deployments work unchanged. The version's `openapi_schema` is the project's own
.cog/openapi_schema.json: the document Replicate serves is the one Cog validates against.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from ...errors import DeployError
from ..deploy.project import MANIFEST, Manifest, ProjectConflict
from ..deploy.requirements import COG_VERSION

LOCAL_OWNER = "local"
SCHEMA_PATH = ".cog/openapi_schema.json"
_CONCURRENT = re.compile(r"@concurrent\(\s*max\s*=\s*(\d+)\s*\)")
_SKIPPED_PARTS = {"__pycache__", ".git"}
_hash_cache: dict[tuple[int, int, int, int], str] = {}
_hash_lock = threading.Lock()


class ProjectError(DeployError):
    """A folder given to the emulator is not a built Cog project (or two share a name)."""


def iso(t: float) -> str:
    """Replicate's timestamp form: ISO-8601 UTC with a Z."""
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def find_projects(paths: list[Path]) -> list[Path]:
    """Each path is a project (it has cog.yaml) or a folder of projects (`work/`)."""
    found: list[Path] = []
    for path in paths:
        path = Path(path).absolute()
        if (path / "cog.yaml").is_file():
            found.append(path)
        elif path.is_dir() and (inner := sorted(p.parent for p in path.glob("*/cog.yaml"))):
            found += inner
        else:
            raise ProjectError(
                f"{path} is not a Cog project (no cog.yaml) nor a folder of them; "
                "build one first: cogql replicate build"
            )
    return found


def _file_sha256(path: Path) -> str:
    st = path.stat()
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    with _hash_lock:
        if key in _hash_cache:
            return _hash_cache[key]
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    with _hash_lock:
        _hash_cache[key] = digest.hexdigest()
    return _hash_cache[key]


def _project_files(project: Path) -> list[Path]:
    return sorted(
        p
        for p in project.rglob("*")
        if p.is_file()
        and p.name != MANIFEST
        and p.suffix != ".pyc"
        and not _SKIPPED_PARTS.intersection(p.relative_to(project).parts)
    )


def content_hash(project: Path) -> tuple[str, float]:
    """(64-hex version id, newest file time): the hash covers every path and its bytes."""
    digest = hashlib.sha256()
    newest = 0.0
    for path in _project_files(project):
        rel = path.relative_to(project).as_posix()
        digest.update(rel.encode() + b"\0" + _file_sha256(path).encode() + b"\n")
        newest = max(newest, path.stat().st_mtime)
    return digest.hexdigest(), newest


def _model_name(project: Path) -> tuple[str, str]:
    try:
        info = Manifest.read(project).info
    except ProjectConflict as e:
        raise ProjectError(str(e)) from None
    image = info.get("image")
    if isinstance(image, str) and image.count("/") >= 2:
        owner, name = image.rstrip("/").split("/")[-2:]
        return owner, name
    return LOCAL_OWNER, str(info.get("model") or project.name)


def max_concurrency(project: Path) -> int:
    """What `cog build` would set as COG_MAX_CONCURRENCY, from predict.py's decorator."""
    try:
        match = _CONCURRENT.search((project / "predict.py").read_text(encoding="utf-8"))
    except OSError:
        return 1
    return int(match.group(1)) if match else 1


def _schema(project: Path) -> dict[str, Any]:
    path = project / SCHEMA_PATH
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ProjectError(
            f"{path}: cannot read the project's OpenAPI schema ({e}); rebuild it with "
            "cogql replicate build"
        ) from None
    if not isinstance(schema.get("components", {}).get("schemas", {}).get("Input"), dict):
        raise ProjectError(f"{path} has no components.schemas.Input")
    return schema


@dataclass(frozen=True)
class ModelEntry:
    """One built project as Replicate sees it."""

    owner: str
    name: str
    project: Path
    version_id: str
    created_at: str
    schema: dict[str, Any]
    max_concurrency: int

    @property
    def ref(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def streams(self) -> bool:
        """Whether predictions get `urls.stream` (Cog's flag for server-sent events)."""
        post = self.schema.get("paths", {}).get("/predictions", {}).get("post", {})
        return bool(post.get("x-cog-streaming"))

    def version_json(self) -> dict[str, Any]:
        return {
            "id": self.version_id,
            "created_at": self.created_at,
            "cog_version": COG_VERSION,
            "openapi_schema": self.schema,
        }

    def model_json(self) -> dict[str, Any]:
        return {
            "url": f"https://replicate.com/{self.ref}",
            "owner": self.owner,
            "name": self.name,
            "description": f"cogql project {self.project}",
            "visibility": "private",
            "github_url": None,
            "paper_url": None,
            "license_url": None,
            "cover_image_url": None,
            "run_count": 0,
            "default_example": None,
            "latest_version": self.version_json(),
            "is_official": False,
        }

    def deployment_json(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "name": self.name,
            "current_release": {
                "number": 1,
                "model": self.ref,
                "version": self.version_id,
                "created_at": self.created_at,
                "created_by": {
                    "type": "user",
                    "username": self.owner,
                    "name": self.owner,
                    "github_url": None,
                },
                "configuration": {
                    "hardware": "cpu",
                    "min_instances": 1,
                    "max_instances": 1,
                },
            },
        }


def load_entry(project: Path) -> ModelEntry:
    """Read a project (hashing its files: seconds for GB of weights, cached per process)."""
    owner, name = _model_name(project)
    version_id, newest = content_hash(project)
    return ModelEntry(
        owner=owner,
        name=name,
        project=project,
        version_id=version_id,
        created_at=iso(newest),
        schema=_schema(project),
        max_concurrency=max_concurrency(project),
    )


def check_unique(entries: list[ModelEntry]) -> None:
    seen: dict[str, Path] = {}
    for entry in entries:
        if entry.ref in seen:
            raise ProjectError(
                f"{seen[entry.ref]} and {entry.project} are both the model {entry.ref}; "
                "serve one of them"
            )
        seen[entry.ref] = entry.project
