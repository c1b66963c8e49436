"""Hub ids downloaded for real, from a Hugging Face hub on loopback (tests/hub_server.py) that
speaks the hub's HTTP API to the installed huggingface_hub client: which files are fetched,
the size line, the cache reused without asking the hub again, the hub's answers and offline
mode as `ModelNotFound` says them, and tiny random-weight models (one file, and sharded) that
load and run once downloaded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import cogql
from cogql.engine.models import ModelNotFound, load_model, resolve_model_path
from cogql.model_files import TOKENIZER_FILES
from tests.conftest import HUB_DECOYS, hub_repo_folder
from tests.hub_server import LoopbackHub

# what the tiny model folders hold besides tokenizer files
MODEL_META = ["config.json", "generation_config.json"]


def _tokenizer_names(folder: Path) -> list[str]:
    return [n for n in TOKENIZER_FILES if (folder / n).is_file()]


def _weightless_repo(dest: Path, tokenizer_dir: Path) -> Path:
    """A repo with a real (tiny) safetensors file, written without building a model: the fast
    tier checks what is downloaded, not what it computes."""
    from safetensors.numpy import save_file

    dest.mkdir()
    config = {"model_type": "llama", "hidden_size": 8, "vocab_size": 16}
    (dest / "config.json").write_text(json.dumps(config))
    (dest / "generation_config.json").write_text(json.dumps({"bos_token_id": 1}))
    save_file({"w": np.arange(64, dtype=np.float32)}, str(dest / "model.safetensors"))
    for name in _tokenizer_names(tokenizer_dir):
        shutil.copy(tokenizer_dir / name, dest / name)
    return hub_repo_folder(dest.with_name(dest.name + "-repo"), dest)


def test_a_hub_id_downloads_what_a_run_needs_once(
    loopback_hub: LoopbackHub,
    embedded_path: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    repo = loopback_hub.add("acme/needed", _weightless_repo(tmp_path / "needed", embedded_path))
    needed = sorted([*MODEL_META, "model.safetensors", *_tokenizer_names(embedded_path)])

    folder = resolve_model_path("acme/needed")

    assert loopback_hub.downloaded("acme/needed") == needed  # no card, no decoy weights
    assert folder.name == repo.commit and folder.parent.name == "snapshots"
    assert sorted(p.name for p in folder.iterdir()) == needed
    for name in needed:
        assert (folder / name).read_bytes() == repo.files[name].source.read_bytes()
    size = sum(repo.files[n].size for n in needed) / 1e6
    cache = tmp_path / "hf-cache"
    assert (
        f"cogql: downloading acme/needed from {loopback_hub.url} ({size:.1f} MB) into {cache}"
        in capfd.readouterr().err
    )

    loopback_hub.clear_log()
    assert resolve_model_path("acme/needed") == folder
    assert loopback_hub.requests == []  # the cache answers; the hub is not asked again
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve_model_path("acme/needed") == folder  # and offline too
    assert "downloading" not in capfd.readouterr().err


def test_a_snapshot_that_lacks_its_weights_is_completed_online_and_refused_offline(
    loopback_hub: LoopbackHub,
    embedded_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A download stopped after the config and tokenizer (or a tokenizer fetched alone) leaves
    a snapshot without weights: it never passes for the model. Online the missing file is
    fetched, and only it; offline the error says the snapshot is incomplete."""
    loopback_hub.add("acme/cut", _weightless_repo(tmp_path / "cut", embedded_path))
    folder = resolve_model_path("acme/cut")
    blob = (folder / "model.safetensors").resolve()
    (folder / "model.safetensors").unlink()
    blob.unlink()  # never finished: neither the snapshot's link nor the bytes are there

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as err:
        resolve_model_path("acme/cut")
    assert "its snapshot lacks weight files" in str(err.value)
    assert "incomplete; not downloaded because HF_HUB_OFFLINE is set" in str(err.value)

    monkeypatch.delenv("HF_HUB_OFFLINE")
    loopback_hub.clear_log()
    assert resolve_model_path("acme/cut") == folder
    assert (folder / "model.safetensors").is_file()
    assert loopback_hub.downloaded("acme/cut") == ["model.safetensors"]


def test_a_repo_the_hub_does_not_have_is_the_hubs_answer(loopback_hub: LoopbackHub) -> None:
    with pytest.raises(ModelNotFound) as err:
        resolve_model_path("acme/missing")
    message = str(err.value)
    assert f"the hub at {loopback_hub.url} (reachable): no model 'acme/missing' there" in message
    assert "unreachable" not in message and "because HF_HUB_OFFLINE is set" not in message
    assert [r.path for r in loopback_hub.requests] == ["/api/models/acme/missing"]


def test_offline_the_hub_is_not_contacted(
    loopback_hub: LoopbackHub,
    embedded_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    loopback_hub.add("acme/there", _weightless_repo(tmp_path / "there", embedded_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as err:
        resolve_model_path("acme/there")
    assert "not downloaded because HF_HUB_OFFLINE is set: unset it to download" in str(err.value)
    assert loopback_hub.requests == []


def test_a_repo_without_a_config_is_refused_before_any_download(
    loopback_hub: LoopbackHub, tmp_path: Path
) -> None:
    repo = tmp_path / "gguf-only"
    repo.mkdir()
    (repo / "tiny.Q4_0.gguf").write_bytes(b"GGUF")
    (repo / "README.md").write_text("# weights in GGUF only\n")
    loopback_hub.add("acme/gguf-only", repo)
    with pytest.raises(ModelNotFound, match=r"'acme/gguf-only' has no config\.json: not a transf"):
        resolve_model_path("acme/gguf-only")
    assert loopback_hub.downloaded("acme/gguf-only") == []


def test_an_index_naming_a_shard_the_repo_lacks_is_refused(
    loopback_hub: LoopbackHub, tmp_path: Path
) -> None:
    repo = tmp_path / "broken-index"
    repo.mkdir()
    (repo / "config.json").write_text(json.dumps({"model_type": "llama"}))
    index = {"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "gone.safetensors"}}
    (repo / "model.safetensors.index.json").write_text(json.dumps(index))
    (repo / "model-00001-of-00002.safetensors").write_bytes(b"shard one")
    loopback_hub.add("acme/broken-index", repo)
    with pytest.raises(ModelNotFound, match=r"shards the repo does not have: 'gone\.safetensors'"):
        resolve_model_path("acme/broken-index")
    assert loopback_hub.downloaded("acme/broken-index") == ["model.safetensors.index.json"]


# --------------------------------------------------------------------------- with weights


def test_a_downloaded_model_runs_a_query(
    loopback_hub: LoopbackHub,
    tiny_model_path: Path,
    tmp_path: Path,
    capfd: pytest.CaptureFixture[str],
) -> None:
    repo = loopback_hub.add("acme/tiny-run", hub_repo_folder(tmp_path / "repo", tiny_model_path))
    model = cogql.model("local:acme/tiny-run")
    result = cogql.run_sync(
        'argmax\n    "Once upon a time[X]"\nwhere len(TOKENS(X)) < 4', model=model
    )
    assert result.prompt == "Once upon a time" + result["X"] and result["X"]
    assert "cogql: downloading acme/tiny-run from" in capfd.readouterr().err
    fetched = loopback_hub.downloaded("acme/tiny-run")
    assert "model.safetensors" in fetched and "README.md" not in fetched
    assert not set(HUB_DECOYS) & set(fetched)

    loopback_hub.clear_log()
    assert resolve_model_path("acme/tiny-run").name == repo.commit
    assert loopback_hub.requests == []


def test_a_sharded_model_is_downloaded_whole_and_computes_as_the_original(
    loopback_hub: LoopbackHub, tiny_sharded_path: Path, tmp_path: Path
) -> None:
    index = json.loads((tiny_sharded_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    loopback_hub.add("acme/tiny-sharded", hub_repo_folder(tmp_path / "repo", tiny_sharded_path))

    downloaded = load_model("acme/tiny-sharded")

    fetched = loopback_hub.downloaded("acme/tiny-sharded")
    assert {"model.safetensors.index.json", *shards} <= set(fetched)
    assert not {"README.md", *HUB_DECOYS} & set(fetched)
    original = load_model(str(tiny_sharded_path))
    ids = torch.tensor([[1, 17, 305, 2048, 9]])
    assert torch.equal(downloaded.model(ids).logits, original.model(ids).logits)
