"""`cogql replicate push NAME`: run the project's push script, or say exactly what is missing.

Pushing needs the Go `cog` CLI (not the `cog` Python package, which is only the SDK) and a
Docker daemon. Where either is missing the user gets the command to run on a machine that has
them, instead of a shell's "command not found" halfway through.

Everything is checked before anything runs: NAME must be a model name (so `../../x` cannot
pick a folder elsewhere), the project folder and its push script must not be links, and the
destination the build recorded must be REGISTRY/OWNER/NAME for that very model.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from ...errors import DeployError
from ..cog.layout import PUSH_SCRIPT
from .config import image_problem, name_problem
from .project import Manifest, ProjectConflict


class PushError(DeployError):
    """The project cannot be pushed from here; the message says why and what to run."""


def _docker_running() -> tuple[bool, str]:
    if shutil.which("docker") is None:
        return False, "the docker command is not installed"
    try:
        done = subprocess.run(
            ["docker", "info"], capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return False, f"`docker info` failed: {e}"
    if done.returncode != 0:
        reason = (done.stderr or done.stdout).strip().splitlines()
        return (
            False,
            f"the Docker daemon is not reachable ({reason[-1] if reason else 'no output'})",
        )
    return True, ""


def project_folder(out: Path, name: str) -> Path:
    """OUT/NAME, once NAME is known to be a model name and not a path."""
    problem = name_problem(name)
    if problem:
        raise PushError(
            f"{name!r} is not a model name: {problem}. Pass the NAME of a model in config.toml; "
            "its project is OUT/NAME (--out, default work)"
        )
    return out / name


def _destination(project: Path) -> str:
    """The image the build recorded for this project, checked."""
    try:
        image = Manifest.read(project).info.get("image")
    except ProjectConflict as e:
        raise PushError(
            f"{e.conflicts[0]}; then rebuild: cogql replicate build {project.name}"
        ) from None
    problem = image_problem(image, project.name)
    if problem:
        raise PushError(
            f"{project}: the recorded destination {problem}; rebuild the project: "
            f"cogql replicate build {project.name}"
        )
    return str(image)


def push_command(project: Path, args: list[str] | None = None) -> str:
    """The shell command that pushes `project`, for the user to run elsewhere."""
    parts = ["cog", "push", "--separate-weights", _destination(project), *(args or [])]
    return f"cd {shlex.quote(str(project))} && {shlex.join(parts)}"


def push(project: Path, args: list[str] | None = None) -> int:
    """Run `project/push`; returns its exit status."""
    project_folder(project.parent, project.name)
    script = project / PUSH_SCRIPT
    if project.is_symlink() or script.is_symlink():
        link = project if project.is_symlink() else script
        raise PushError(f"{link} is a symbolic link; cogql runs only the push script it built")
    if not project.is_dir():
        raise PushError(
            f"no project at {project}; build it first: cogql replicate build {project.name}"
        )
    if not script.is_file():
        raise PushError(
            f"{project} has no push script because config.toml has no dest_prefix; add "
            f'dest_prefix = "r8.im/<your Replicate username>/" and run: '
            f"cogql replicate build {project.name}"
        )
    _destination(project)
    missing = []
    if shutil.which("cog") is None:
        missing.append(
            "the cog CLI is not on PATH (the `cog` Python package is only the SDK; install "
            "the cog command-line tool, version 0.20 or newer)"
        )
    ok, why = _docker_running()
    if not ok:
        missing.append(why)
    if missing:
        raise PushError(
            "cannot push from this machine: "
            + "; ".join(missing)
            + ".\nOn a machine with the cog CLI and Docker (after `cog login`), run:\n  "
            + push_command(project, args)
        )
    try:
        return subprocess.run([str(script), *(args or [])], check=False).returncode
    except OSError as e:
        raise PushError(f"cannot run {script}: {e}") from None
