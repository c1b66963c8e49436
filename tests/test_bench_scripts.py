"""The benchmark scripts that only run elsewhere (bench/gpu.sh needs a CUDA GPU) stay runnable:
the shell parses, the script refuses a machine without CUDA with its reason, and the Python
benchmarks it calls accept the arguments it passes."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"

pytestmark = pytest.mark.slow  # subprocesses that import torch


def test_gpu_script_parses() -> None:
    done = subprocess.run(["bash", "-n", str(BENCH / "gpu.sh")], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_gpu_script_says_why_it_cannot_run_on_a_cpu() -> None:
    env = {"PATH": "/usr/bin:/bin", "PY": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(BENCH / "gpu.sh")], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 2
    assert "torch sees no CUDA device" in done.stderr


@pytest.mark.parametrize(
    ("script", "flags"),
    [
        ("engines.py", ["--device", "--engines", "--streams", "--repeats", "--model"]),
        ("serve.py", ["--device", "--engine", "--streams", "--repeats", "--model"]),
    ],
)
def test_the_benchmarks_take_the_flags_gpu_sh_passes(script: str, flags: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, script, "--help"], cwd=BENCH, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    for flag in flags:
        assert flag in done.stdout
