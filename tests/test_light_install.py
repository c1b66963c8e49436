"""The light install: `pip install cogql` into a fresh venv brings no torch, names the extra a
feature needs instead of failing on an import, and runs queries against an LMTP server that the
full install serves (`cogql serve-model random` on loopback).

The venv is built once per session from a copy of this working tree, with requirements.lock as
constraints (the tested versions, which pip's cache usually holds): about half a minute here.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.replicate.cog.cogserver import free_port
from tests.conftest import running_server

REPO = Path(__file__).resolve().parents[1]
SOURCE = Path(cogql.__file__).resolve().parents[1]  # the src/ folder these tests import
QUERY = '"Count: [N]" where INT(N) and len(TOKENS(N)) < 6'
LEFT_OUT = (
    "torch",
    "transformers",
    "accelerate",
    "gguf",
    "safetensors",
    "cog",
    "coglet",
    "starlette",
    "uvicorn",
)

pytestmark = [pytest.mark.slow, pytest.mark.install]

# a plain query, a chat query (the template renders client-side) and the INT constraint applied
# by the client, as against an LMQL server (extensions=False: llguidance runs in the client)
CASES: list[tuple[str, dict[str, Any]]] = [
    (QUERY, {}),
    ('"{:user}Pick a number.{:assistant}[N]" where INT(N) and len(TOKENS(N)) < 6', {}),
    (QUERY, {"extensions": False}),
]
CLIENT = """
import json, sys
import cogql
out = []
for query, options in json.loads(sys.argv[2]):
    model = cogql.model("random", endpoint=sys.argv[1], **options)
    result = cogql.run_sync(query, model=model)
    out.append({"prompt": result.prompt, "N": result.variables["N"]})
print(json.dumps({"results": out, "loaded": [m for m in ("torch", "transformers") if m in sys.modules]}))
"""


def _bare_env() -> dict[str, str]:
    """The environment without anything that would let the bare venv see the full install."""
    drop = {"PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP"}
    return {k: v for k, v in os.environ.items() if k not in drop}


@pytest.fixture(scope="module")
def bare_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with `pip install cogql` (no extras). The wheel is built from a copy of the
    working tree (the build leaves nothing in the repository) by this venv's setuptools, and
    this venv's pip installs it: no build environment and no pip to set up first."""
    root = tmp_path_factory.mktemp("light-install")
    source = root / "source"
    shutil.copytree(SOURCE, source / "src", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    env = _bare_env()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheel = [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(root), str(source)]
    done = subprocess.run(wheel, capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-4000:]
    [built] = root.glob("cogql-*.whl")
    venv = root / "venv"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120
    )
    target = ["--python", str(venv / "bin" / "python")]
    install = [*pip, *target, "install", "-c", str(REPO / "requirements.lock"), str(built)]
    done = subprocess.run(install, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-4000:]
    return venv


def _bare(venv: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run a program of the bare venv (python, cogql) outside the repository."""
    return subprocess.run(
        [str(venv / "bin" / args[0]), *args[1:]],
        input=stdin,
        capture_output=True,
        text=True,
        env=_bare_env(),
        cwd=venv,
        timeout=300,
    )


@pytest.fixture(scope="module")
def served_random(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`cogql serve-model random` from the full install; yields its endpoint."""
    port = free_port()
    log = tmp_path_factory.mktemp("serve-random") / "serve.log"
    cmd = [sys.executable, "-m", "cogql", "serve-model", "random", "--seed", "7",
           "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(SOURCE)}
    with running_server(cmd, port, log, env=env):
        yield f"localhost:{port}"


def test_the_bare_install_has_no_torch_and_imports_cogql(bare_venv: Path) -> None:
    probe = (
        "import importlib.util, json, sys; import cogql, cogql.cli;"
        f"print(json.dumps({{'found': [m for m in {LEFT_OUT!r} if importlib.util.find_spec(m)],"
        "'file': cogql.__file__, 'torch': 'torch' in sys.modules}))"
    )
    done = _bare(bare_venv, "python", "-c", probe)
    assert done.returncode == 0, done.stderr
    seen = json.loads(done.stdout)
    assert seen["found"] == []
    assert seen["torch"] is False
    assert Path(seen["file"]).is_relative_to(bare_venv)  # the installed copy, not the tree's
    helped = _bare(bare_venv, "cogql", "--help")
    assert helped.returncode == 0 and "serve-model" in helped.stdout, helped.stderr


@pytest.mark.parametrize(
    ("args", "extra", "status"),
    [
        (("serve-model", "random"), "serve", 1),
        # `cogql run` exits by error family: MissingExtra is a ModelError
        (("run", "-", "--model", "random"), "engine", 4),
        (("run", "-", "--model", "local:/no/such/model"), "engine", 4),
        (("replicate", "build", "--check"), "deploy", 1),
        (("replicate", "serve", "."), "deploy", 1),
        (("playground", "--no-browser"), "playground", 1),
    ],
)
def test_a_feature_without_its_extra_names_the_extra(
    bare_venv: Path, args: tuple[str, ...], extra: str, status: int
) -> None:
    done = _bare(bare_venv, "cogql", *args, stdin=QUERY)
    assert done.returncode == status
    assert f"pip install 'cogql[{extra}]'" in done.stderr
    missing = "starlette" if extra == "playground" else "torch"
    assert missing in done.stderr  # what is missing is named too
    assert "Traceback" not in done.stderr


def test_the_python_api_raises_missing_extra_for_an_in_process_model(bare_venv: Path) -> None:
    code = (
        "import cogql\n"
        "from cogql.extras import MissingExtra\n"
        "try:\n"
        f"    cogql.run_sync({QUERY!r}, model=cogql.model('local:/some/model'))\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    done = _bare(bare_venv, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingExtra the in-process model 'local:/some/model' needs")
    assert "pip install 'cogql[engine]'" in done.stdout


def test_importing_the_emulator_names_the_deploy_extra(bare_venv: Path) -> None:
    code = (
        "try:\n"
        "    import cogql.replicate.emulator\n"
        "except ImportError as e:\n"
        "    print(type(e).__name__, e)\n"
    )
    done = _bare(bare_venv, "python", "-c", code)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("MissingExtra cogql.replicate.emulator needs")
    assert "pip install 'cogql[deploy]'" in done.stdout


def test_the_bare_client_runs_queries_against_serve_model(
    bare_venv: Path, served_random: str
) -> None:
    done = _bare(bare_venv, "python", "-c", CLIENT, served_random, json.dumps(CASES))
    assert done.returncode == 0, done.stderr[-4000:]
    remote = json.loads(done.stdout.splitlines()[-1])
    assert remote["loaded"] == []
    for (query, options), got in zip(CASES, remote["results"], strict=True):
        assert isinstance(got["N"], int)
        assert got["prompt"].endswith(str(got["N"]))
        # the full install's client gets the same text from the same server
        model = cogql.model("random", endpoint=served_random, **options)
        assert cogql.run_sync(query, model=model).prompt == got["prompt"]
    assert remote["results"][1]["prompt"].startswith("<|im_start|>")  # SmolLM2's template
