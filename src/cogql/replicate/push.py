"""`cogql replicate push NAME`: run the project's push script, or say exactly what is missing.

Pushing needs the Go `cog` CLI (not the `cog` Python package, which is only the SDK) and a
Docker daemon. Where either is missing the user gets the command to run on a machine that has
them, instead of a shell's "command not found" halfway through.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
from pathlib import Path

from .layout import PUSH_SCRIPT
from .project import Manifest


class PushError(Exception):
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


def push_command(project: Path, args: list[str] | None = None) -> str:
    """The shell command that pushes `project`, for the user to run elsewhere."""
    image = Manifest.read(project).info.get("image")
    parts = ["cog", "push", "--separate-weights", str(image), *(args or [])]
    return f"cd {shlex.quote(str(project))} && {shlex.join(parts)}"


def push(project: Path, args: list[str] | None = None) -> int:
    """Run `project/push`; returns its exit status."""
    script = project / PUSH_SCRIPT
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
    return subprocess.run([str(script), *(args or [])], check=False).returncode
