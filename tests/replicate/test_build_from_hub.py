"""`cogql replicate build` of a Hugging Face repo downloaded for real, from a hub on loopback
(tests/hub_server.py): the project's checkpoints/ hold the files the shared model-files lists
choose (metadata and model card, one weight format, every shard of an index), byte for byte,
and nothing else is fetched."""

from __future__ import annotations

import json
from pathlib import Path

from cogql.replicate.deploy.build import BuildResult, build
from cogql.replicate.deploy.config import load_config
from tests.conftest import HUB_DECOYS, hub_repo_folder
from tests.hub_server import LoopbackHub
from tests.replicate.test_build import MODEL_FILES, TOKENIZER, write_config


def _build(tmp_path: Path, repo_id: str) -> BuildResult:
    config = write_config(tmp_path, f'[models.m]\nhuggingface.repo = "{repo_id}"\n')
    [result] = build(load_config(config), config.parent / "work", progress=False)
    return result


def _same_bytes(checkpoints: Path, repo: Path, names: set[str]) -> None:
    for name in names:
        assert (checkpoints / name).read_bytes() == (repo / name).read_bytes(), name


def test_build_takes_a_repo_from_the_hub(
    loopback_hub: LoopbackHub, tiny_model_path: Path, tmp_path: Path
) -> None:
    source = hub_repo_folder(tmp_path / "repo", tiny_model_path)
    repo = loopback_hub.add("acme/tiny-build", source)

    result = _build(tmp_path, "acme/tiny-build")
    checkpoints = result.folder / "checkpoints"

    expected = MODEL_FILES | TOKENIZER | {"README.md"}  # a project ships the model card
    assert {p.name for p in checkpoints.iterdir()} == expected
    _same_bytes(checkpoints, source, expected)
    assert set(loopback_hub.downloaded("acme/tiny-build")) == expected
    assert not set(HUB_DECOYS) & set(loopback_hub.downloaded("acme/tiny-build"))
    assert result.origin == f"acme/tiny-build@{repo.commit}"  # the one commit it serves
    assert json.loads((result.folder / "config.json").read_text()) == {"use_safetensors": True}


def test_build_takes_a_sharded_repo_whole(
    loopback_hub: LoopbackHub, tiny_sharded_path: Path, tmp_path: Path
) -> None:
    index = json.loads((tiny_sharded_path / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) >= 2
    source = hub_repo_folder(tmp_path / "repo", tiny_sharded_path)
    loopback_hub.add("acme/tiny-sharded-build", source)

    checkpoints = _build(tmp_path, "acme/tiny-sharded-build").folder / "checkpoints"

    expected = {"config.json", "generation_config.json", "README.md"} | TOKENIZER
    expected |= {"model.safetensors.index.json", *shards}
    assert {p.name for p in checkpoints.iterdir()} == expected
    _same_bytes(checkpoints, source, expected)
    assert not set(HUB_DECOYS) & set(loopback_hub.downloaded("acme/tiny-sharded-build"))
