"""Safe, idempotent writes into a project folder, tracked by a manifest of what cogql made.

Rules: a file cogql did not make is never modified or deleted (the build stops and names it);
a file cogql made and the user edited since is not overwritten either, unless forced; stale
files cogql made are removed; unchanged files are left alone, so a rebuild with nothing new does
no I/O beyond hashing the small generated files. Weights are hardlinked from their source
(instant, no extra disk), copied when linking is impossible (another filesystem), and relinked
when the source changes. The manifest is saved after every operation, so an interrupted build
leaves a folder the next build can finish.

Nothing is written through a symbolic link: a project folder that is a link, or a link where a
parent folder should be, stops the build; every path, the manifest's included, must be a plain
relative path, so no write or removal lands outside the project folder.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ...errors import DeployError
from .untrusted import relative_name_problem

MANIFEST = ".cogql-manifest.json"
FORMAT = 1
_LINK_ERRORS = {errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP, errno.EACCES}


class ProjectConflict(DeployError):
    """Files in the way that cogql must not touch; nothing was written."""

    def __init__(self, conflicts: list[str]) -> None:
        self.conflicts = conflicts
        lines = "\n".join(f"  {c}" for c in conflicts)
        super().__init__(
            f"{len(conflicts)} file(s) in the way; nothing was written:\n{lines}\n"
            "Move them away, or pass --force to let cogql overwrite files it made earlier "
            "(files cogql did not make are never overwritten)."
        )


@dataclass(frozen=True)
class GeneratedFile:
    """A generated file."""

    path: str
    content: bytes
    executable: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()


@dataclass(frozen=True)
class Link:
    """A weight or tokenizer file taken from `source` (hardlink, else copy)."""

    path: str
    source: Path
    size: int


Output = GeneratedFile | Link


def _stat_id(st: os.stat_result) -> dict[str, int]:
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "ino": st.st_ino, "dev": st.st_dev}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _source_id(path: Path) -> dict[str, Any]:
    st = path.stat()
    return {"source": str(path), "source_size": st.st_size, "source_mtime_ns": st.st_mtime_ns}


@dataclass
class Manifest:
    files: dict[str, dict[str, Any]] = field(default_factory=dict)
    info: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path) -> Manifest:
        if (root / MANIFEST).is_symlink():
            raise ProjectConflict([f"{root / MANIFEST}: a link, not the file cogql made"])
        try:
            data = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
        except FileNotFoundError:
            return cls()
        except (OSError, ValueError) as e:
            raise ProjectConflict([f"{root / MANIFEST}: unreadable ({e}); delete it"]) from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ProjectConflict([f"{root / MANIFEST}: unknown format; delete it"])
        files, info = data.get("files", {}), data.get("info", {})
        if not isinstance(files, dict) or not isinstance(info, dict):
            raise ProjectConflict([f"{root / MANIFEST}: unknown format; delete it"])
        for path, record in files.items():
            problem = relative_name_problem(path)
            if problem or not isinstance(record, dict):
                why = f"the path {path!r} {problem}" if problem else f"{path!r} has no record"
                raise ProjectConflict([f"{root / MANIFEST}: {why}; delete the manifest"])
        return cls(dict(files), dict(info))

    def write(self, root: Path) -> None:
        data = {"format": FORMAT, "info": self.info, "files": dict(sorted(self.files.items()))}
        content = (json.dumps(data, indent=1) + "\n").encode()
        path = root / MANIFEST
        if path.is_file() and path.read_bytes() == content:
            return  # a rebuild with nothing new leaves the folder exactly as it was
        _atomic_write(path, content, 0o644)


def _atomic_write(path: Path, content: bytes, mode: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(content)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


@dataclass
class Plan:
    """What a build will do in one project folder; computed before anything is written."""

    root: Path
    manifest: Manifest
    write: list[Output] = field(default_factory=list)
    keep: list[Output] = field(default_factory=list)
    adopt: list[Output] = field(default_factory=list)
    remove: list[str] = field(default_factory=list)
    conflicts: list[str] = field(default_factory=list)

    @property
    def bytes_to_link(self) -> int:
        return sum(o.size for o in self.write if isinstance(o, Link))


def _unchanged(path: Path, record: dict[str, Any]) -> bool:
    """Is the file still what cogql left there?"""
    try:
        st = path.lstat()
    except FileNotFoundError:
        return True  # gone is fine: nothing of the user's to protect
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISREG(st.st_mode):
        return False
    if "sha256" in record:
        return st.st_size == record.get("size") and _sha256(path) == record["sha256"]
    return all(st_value == record.get(k) for k, st_value in _stat_id(st).items())


def _matches(path: Path, out: Output, record: dict[str, Any] | None) -> bool:
    """Does the file already hold exactly what `out` would write?"""
    st = path.lstat()
    if not stat.S_ISREG(st.st_mode):
        return False
    if isinstance(out, GeneratedFile):
        executable = bool(st.st_mode & stat.S_IXUSR)
        return (
            st.st_size == len(out.content)
            and executable == out.executable
            and path.read_bytes() == out.content
        )
    src = out.source.stat()
    if (st.st_ino, st.st_dev) == (src.st_ino, src.st_dev):
        return True  # the hardlink is in place
    # a copy is current if it was made from this very version of the source, and kept as is
    if record is None or record.get("method") != "copy":
        return False
    same_source = all(record.get(k) == v for k, v in _source_id(out.source).items())
    return same_source and _unchanged(path, record)


def _root_problem(root: Path) -> str | None:
    if root.is_symlink():
        return (
            f"{root}: the project folder is a symbolic link; cogql never writes through links. "
            "Remove the link (or build into another --out)"
        )
    if root.exists() and not root.is_dir():
        return f"{root}: a file is where the project folder goes"
    return None


def plan(root: Path, outputs: list[Output], *, force: bool = False) -> Plan:
    problem = _root_problem(root)
    if problem:
        return Plan(root, Manifest(), conflicts=[problem])
    manifest = Manifest.read(root) if root.is_dir() else Manifest()
    p = Plan(root, manifest)
    wanted = {o.path for o in outputs}
    for out in outputs:
        dest = root / out.path
        record = manifest.files.get(out.path)
        unsafe = relative_name_problem(out.path)
        if unsafe:
            p.conflicts.append(f"{dest}: cogql writes only inside {root}, and this path {unsafe}")
        elif _blocked_by_parent(root, out.path):
            p.conflicts.append(f"{dest}: a parent folder is a file or link cogql did not make")
        elif dest.is_dir() and not dest.is_symlink():
            p.conflicts.append(f"{dest}: a folder is where cogql writes a file")
        elif not dest.exists() and not dest.is_symlink():
            p.write.append(out)
        elif not dest.is_symlink() and _matches(dest, out, record):
            (p.keep if record is not None else p.adopt).append(out)
        elif record is not None and (force or _unchanged(dest, record)):
            p.write.append(out)
        elif record is not None:
            p.conflicts.append(f"{dest}: made by cogql, then edited")
        else:
            p.conflicts.append(f"{dest}: not made by cogql")
    for path, record in manifest.files.items():
        if path in wanted:
            continue
        dest = root / path
        if _blocked_by_parent(root, path):
            p.conflicts.append(f"{dest}: a parent folder is a file or link cogql did not make")
        elif dest.is_dir() and not dest.is_symlink():
            p.conflicts.append(f"{dest}: a folder is where cogql had made a file")
        elif force or _unchanged(dest, record):
            p.remove.append(path)
        else:
            p.conflicts.append(f"{dest}: made by cogql, then edited (no longer needed)")
    return p


def _blocked_by_parent(root: Path, rel: str) -> bool:
    parent = root
    for part in Path(rel).parts[:-1]:
        parent = parent / part
        if parent.is_symlink() or (parent.exists() and not parent.is_dir()):
            return True
    return False


def _link_or_copy(source: Path, dest: Path, progress: Callable[[int], None]) -> str:
    """Hardlink `source` to `dest` (atomically replacing it); copy across filesystems."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.cogql-tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
        method = "link"
        progress(source.stat().st_size)
    except OSError as e:
        if e.errno not in _LINK_ERRORS:
            raise
        method = "copy"
        try:
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
            with source.open("rb") as src, os.fdopen(os.open(tmp, flags, 0o644), "wb") as dst:
                for block in iter(lambda: src.read(8 << 20), b""):
                    dst.write(block)
                    progress(len(block))
            shutil.copystat(source, tmp)
            os.chmod(tmp, 0o644)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
    os.replace(tmp, dest)
    return method


def apply(p: Plan, progress: Callable[[int], None] = lambda n: None) -> dict[str, int]:
    """Carry out a plan with no conflicts; returns counts by operation."""
    root, manifest = p.root, p.manifest
    problem = _root_problem(root)  # again: the folder may have changed since the plan
    if problem:
        p.conflicts.append(problem)
    if p.conflicts:
        raise ProjectConflict(p.conflicts)
    root.mkdir(parents=True, exist_ok=True)
    counts = {"written": 0, "linked": 0, "copied": 0, "kept": len(p.keep), "removed": 0}
    for out in p.adopt:
        manifest.files[out.path] = _record(root, out, method="link")
    for out in p.write:
        dest = root / out.path
        if dest.is_symlink():  # replaced a file cogql made (and --force): drop the link only
            dest.unlink()
        if isinstance(out, GeneratedFile):
            _atomic_write(dest, out.content, 0o755 if out.executable else 0o644)
            counts["written"] += 1
            manifest.files[out.path] = _record(root, out)
        else:
            method = _link_or_copy(out.source, dest, progress)
            counts["linked" if method == "link" else "copied"] += 1
            manifest.files[out.path] = _record(root, out, method=method)
        manifest.write(root)
    for path in p.remove:
        (root / path).unlink(missing_ok=True)
        manifest.files.pop(path, None)
        counts["removed"] += 1
        _prune_empty(root, Path(path).parent)
        manifest.write(root)
    manifest.write(root)
    return counts


def _record(root: Path, out: Output, method: str | None = None) -> dict[str, Any]:
    dest = root / out.path
    if isinstance(out, GeneratedFile):
        return {"size": len(out.content), "sha256": out.sha256}
    st = dest.stat()
    link_method = method
    if (st.st_ino, st.st_dev) == ((s := out.source.stat()).st_ino, s.st_dev):
        link_method = "link"
    return {"method": link_method, **_stat_id(st), **_source_id(out.source)}


def _prune_empty(root: Path, rel: Path) -> None:
    """Remove folders emptied by removals (up to, not including, the project root)."""
    folder = root / rel
    while folder != root and folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()
        folder = folder.parent
