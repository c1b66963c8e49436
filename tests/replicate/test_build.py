"""`cogql replicate build`: project layout, sources (local folder, embedded model, Hugging Face
cache), safe and idempotent rebuilds, and `push` without Docker."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from cogql.cli import main
from cogql.replicate.deploy.build import BuildError, BuildResult, build
from cogql.replicate.deploy.config import load_config
from cogql.replicate.deploy.project import MANIFEST, ProjectConflict
from cogql.replicate.deploy.push import PushError, push
from cogql.replicate.deploy.schema import openapi_schema

MODEL_FILES = {"config.json", "generation_config.json", "model.safetensors"}
TOKENIZER = {"special_tokens_map.json", "tokenizer.json", "tokenizer_config.json"}


def write_config(tmp: Path, body: str, prefix: str | None = "r8.im/alice") -> Path:
    head = f'dest_prefix = "{prefix}"\n' if prefix else ""
    path = tmp / "config.toml"
    path.write_text(head + body)
    return path


def run_build(config: Path, **kw: Any) -> list[BuildResult]:
    return build(load_config(config), config.parent / "work", progress=False, **kw)


def local_model(tmp: Path, source: Path, name: str = "tiny") -> Path:
    """A private copy of a model folder, so tests may change its files."""
    folder = tmp / f"src-{name}"
    shutil.copytree(source, folder)
    return folder


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file with (inode, mtime_ns): equal snapshots mean nothing was touched."""
    return {
        p.relative_to(folder).as_posix(): (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
        if p.is_file()
    }


@pytest.fixture
def tiny_project(tmp_path: Path, tiny_model_path: Path) -> tuple[Path, Path]:
    """(config.toml, model folder) for a private copy of the tiny model."""
    model = local_model(tmp_path, tiny_model_path)
    config = write_config(tmp_path, f'[models.tiny]\nlocal.path = "{model.name}"\ngpu = false\n')
    return config, model


# ---- layout -----------------------------------------------------------------------------------


def test_project_layout_from_a_local_folder(tiny_project: tuple[Path, Path]) -> None:
    config, model = tiny_project
    [result] = run_build(config)
    root = result.folder
    assert root == config.parent / "work" / "tiny"
    assert result.counts["linked"] == len(MODEL_FILES | TOKENIZER) and result.counts["copied"] == 0

    cog = yaml.safe_load((root / "cog.yaml").read_text())
    assert cog["build"] == {
        "gpu": False,
        "python_version": "3.11",
        "python_requirements": "requirements.txt",
        "sdk_version": "0.23.1",
    }
    assert cog["run"] == "predict.py:Predictor" and cog["image"] == "r8.im/alice/tiny"
    assert "HF_HUB_OFFLINE=1" in cog["environment"]

    # checkpoints are hardlinks of the source files
    assert {p.name for p in (root / "checkpoints").iterdir()} == MODEL_FILES | TOKENIZER
    for name in MODEL_FILES | TOKENIZER:
        assert (root / "checkpoints" / name).stat().st_ino == (model / name).stat().st_ino

    assert json.loads((root / "config.json").read_text()) == {"use_safetensors": True}
    assert json.loads((root / ".cog/openapi_schema.json").read_text()) == openapi_schema("0.1.0")
    assert "__pycache__" in (root / ".dockerignore").read_text()

    push_script = root / "push"
    assert push_script.stat().st_mode & stat.S_IXUSR
    assert "cog push --separate-weights r8.im/alice/tiny" in push_script.read_text()


def test_requirements_pin_every_package_exactly(tiny_project: tuple[Path, Path]) -> None:
    config, _ = tiny_project
    [result] = run_build(config)
    lines = [
        line
        for line in (result.folder / "requirements.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    pins = dict(line.split("==") for line in lines)
    assert all("==" in line for line in lines)
    assert pins["torch"] == "2.13.0"  # the CPU build's local label is dropped
    assert pins["transformers"] == "5.19.0" and pins["llguidance"] == "1.7.6"
    assert "cog" not in pins and "coglet" not in pins  # cog.yaml's sdk_version pins Cog
    assert lines == sorted(lines, key=str.lower)


def test_cogql_is_vendored_with_its_source_hash(tiny_project: tuple[Path, Path]) -> None:
    import cogql

    config, _ = tiny_project
    [result] = run_build(config)
    vendored = result.folder / "cogql"
    source = Path(cogql.__file__).parent
    for rel in ("__init__.py", "replicate/cog/predictor.py", "engine/engine.py"):
        assert (vendored / rel).read_bytes() == (source / rel).read_bytes()
    assert not list(vendored.rglob("__pycache__"))
    build_info = json.loads((vendored / "BUILD.json").read_text())
    assert build_info["cogql"].startswith("0.1.0+")
    assert build_info["cogql"] in (result.folder / "requirements.txt").read_text()


def test_cog_reads_the_same_interface_from_predict_py(tiny_project: tuple[Path, Path]) -> None:
    """Cog's own inspector on the generated predict.py agrees with the schema we write."""
    from cog._adt import OutputKind
    from cog._inspector import create_predictor

    config, _ = tiny_project
    [result] = run_build(config)
    sys.path.insert(0, str(result.folder))
    try:
        info = create_predictor("predict", "Predictor")
    finally:
        sys.path.remove(str(result.folder))
        sys.modules.pop("predict", None)
    schema = openapi_schema("0.1.0")["components"]["schemas"]
    [(name, field)] = info.inputs.items()
    prop = schema["Input"]["properties"][name]
    assert name == "ops_batch_json" and schema["Input"]["required"] == [name]
    assert field.type.json_type() == {"type": prop["type"]}
    assert field.description == prop["description"] and field.order == prop["x-order"]
    assert info.output.kind is OutputKind.CONCAT_ITERATOR
    assert {k: v for k, v in info.output.json_type().items()} == schema["Output"]


def test_embedded_model_folder(tmp_path: Path, embedded_path: Path) -> None:
    config = write_config(tmp_path, f'[models.smollm2]\nlocal.path = "{embedded_path}"\n', None)
    [result] = run_build(config)
    names = {p.name for p in (result.folder / "checkpoints").iterdir()}
    assert names == MODEL_FILES | TOKENIZER  # the conversion marker is not a model file
    weights = result.folder / "checkpoints" / "model.safetensors"
    assert weights.stat().st_ino == (embedded_path / "model.safetensors").stat().st_ino
    assert not (result.folder / "push").exists()  # no dest_prefix, no push script
    assert "image" not in yaml.safe_load((result.folder / "cog.yaml").read_text())
    assert yaml.safe_load((result.folder / "cog.yaml").read_text())["build"]["gpu"] is True


# ---- rebuilds ---------------------------------------------------------------------------------


def test_rebuild_is_idempotent(tiny_project: tuple[Path, Path]) -> None:
    config, _ = tiny_project
    [first] = run_build(config)
    before = snapshot(first.folder)
    [second] = run_build(config)
    assert second.counts["written"] == second.counts["linked"] == second.counts["removed"] == 0
    assert snapshot(first.folder) == before


def test_rebuild_relinks_changed_sources_and_removes_stale_files(
    tiny_project: tuple[Path, Path],
) -> None:
    config, model = tiny_project
    [first] = run_build(config)
    ckpt = first.folder / "checkpoints"
    # new weights (a new file, as a fresh download would be) and one file gone upstream
    new_weights = model / "model.safetensors.new"
    shutil.copy(model / "model.safetensors", new_weights)
    os.replace(new_weights, model / "model.safetensors")
    (model / "generation_config.json").unlink()
    config.write_text(config.read_text().replace('dest_prefix = "r8.im/alice"\n', ""))
    [second] = run_build(config)
    assert second.counts["linked"] == 1 and second.counts["removed"] == 2
    assert (ckpt / "model.safetensors").stat().st_ino == (model / "model.safetensors").stat().st_ino
    assert not (ckpt / "generation_config.json").exists()
    assert not (first.folder / "push").exists()  # dest_prefix dropped: its stale script too
    manifest = json.loads((first.folder / MANIFEST).read_text())
    assert (
        "push" not in manifest["files"]
        and "checkpoints/generation_config.json" not in manifest["files"]
    )


def test_files_cogql_did_not_make_are_never_touched(tiny_project: tuple[Path, Path]) -> None:
    config, _ = tiny_project
    [first] = run_build(config)
    notes = first.folder / "NOTES.md"
    extra = first.folder / "checkpoints" / "adapter.bin"
    notes.write_text("mine")
    extra.write_bytes(b"also mine")
    (first.folder.parent / "other").mkdir()
    run_build(config)
    assert notes.read_text() == "mine" and extra.read_bytes() == b"also mine"
    assert (first.folder.parent / "other").is_dir()


def test_a_users_file_in_the_way_stops_the_build_before_any_write(
    tiny_project: tuple[Path, Path],
) -> None:
    config, _ = tiny_project
    root = config.parent / "work" / "tiny"
    root.mkdir(parents=True)
    (root / "predict.py").write_text("# my own predictor\n")
    with pytest.raises(ProjectConflict, match=r"predict\.py: not made by cogql"):
        run_build(config)
    assert sorted(p.name for p in root.iterdir()) == ["predict.py"]  # nothing else written
    assert (root / "predict.py").read_text() == "# my own predictor\n"


def test_edited_generated_files_need_force(tiny_project: tuple[Path, Path]) -> None:
    config, _ = tiny_project
    [first] = run_build(config)
    cog_yaml = first.folder / "cog.yaml"
    original = cog_yaml.read_text()
    cog_yaml.write_text(original + "# my tweak\n")
    with pytest.raises(ProjectConflict, match="made by cogql, then edited"):
        run_build(config)
    assert cog_yaml.read_text().endswith("# my tweak\n")
    run_build(config, force=True)
    assert cog_yaml.read_text() == original


def test_force_never_deletes_a_folder_in_the_way(tiny_project: tuple[Path, Path]) -> None:
    config, _ = tiny_project
    [first] = run_build(config)
    cog_yaml = first.folder / "cog.yaml"
    cog_yaml.unlink()
    cog_yaml.mkdir()
    (cog_yaml / "mine.txt").write_text("mine")
    with pytest.raises(ProjectConflict, match="a folder is where cogql writes a file"):
        run_build(config, force=True)
    assert (cog_yaml / "mine.txt").read_text() == "mine"


def test_an_interrupted_build_is_finished_by_the_next(tiny_project: tuple[Path, Path]) -> None:
    config, _ = tiny_project
    [first] = run_build(config)
    (first.folder / MANIFEST).unlink()  # as if the build died before recording anything
    [second] = run_build(config)  # identical files are adopted, not reported as conflicts
    assert second.counts["written"] == 0 and second.counts["linked"] == 0


def test_copies_across_filesystems_with_progress(tmp_path: Path, tiny_model_path: Path) -> None:
    shm = Path("/dev/shm")
    if not shm.is_dir() or shm.stat().st_dev == tmp_path.stat().st_dev:
        pytest.skip("needs a second filesystem at /dev/shm")
    model = shm / f"cogql-test-{os.getpid()}"
    shutil.copytree(tiny_model_path, model)
    try:
        config = write_config(tmp_path, f'[models.tiny]\nlocal.path = "{model}"\ngpu = false\n')
        seen: list[int] = []
        from cogql.replicate.deploy import build as build_module

        real = build_module._progress

        def spy(total: int, show: bool):  # records the bytes the bar would show
            seen.append(total)
            return real(total, show)

        build_module._progress = spy
        try:
            [first] = run_build(config)
        finally:
            build_module._progress = real
        assert (
            first.counts["copied"] == len(MODEL_FILES | TOKENIZER) and first.counts["linked"] == 0
        )
        weights = first.folder / "checkpoints" / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()
        assert digest == hashlib.sha256((model / "model.safetensors").read_bytes()).hexdigest()
        assert seen == [sum(p.stat().st_size for p in model.iterdir())]
        [second] = run_build(config)  # a copy of an unchanged source is not redone
        assert second.counts["copied"] == 0
    finally:
        shutil.rmtree(model)


def test_check_writes_nothing(tiny_project: tuple[Path, Path]) -> None:
    config, _ = tiny_project
    [result] = run_build(config, check=True)
    assert result.checkpoint_bytes > 1_000_000
    assert not (config.parent / "work").exists()


# ---- Hugging Face cache -----------------------------------------------------------------------


def fake_hub_cache(
    root: Path, repo: str, files: dict[str, Path], commit: str = "a" * 40, ref: str = "main"
) -> Path:
    """A Hugging Face cache laid out as huggingface_hub writes it: blobs named by hash,
    snapshot files as relative symlinks to them, and a ref naming the commit."""
    base = root / f"models--{repo.replace('/', '--')}"
    snap = base / "snapshots" / commit
    snap.mkdir(parents=True)
    (base / "blobs").mkdir(exist_ok=True)
    for name, source in files.items():
        data = source.read_bytes()
        blob = base / "blobs" / hashlib.sha256(data).hexdigest()
        blob.write_bytes(data)
        (snap / name).symlink_to(os.path.relpath(blob, snap))
    (base / "refs").mkdir(exist_ok=True)
    (base / "refs" / ref).write_text(commit)
    return base


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    cache = tmp_path / "hub"
    cache.mkdir()
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return cache


def test_hub_repo_from_the_cache_offline(tmp_path: Path, hub: Path, tiny_model_path: Path) -> None:
    files = {p.name: p for p in tiny_model_path.iterdir()}
    files["pytorch_model.bin"] = tiny_model_path / "config.json"  # a second format to ignore
    base = fake_hub_cache(hub, "acme/tiny", files)
    config = write_config(tmp_path, '[models.tiny]\nhuggingface.repo = "acme/tiny"\n')
    [result] = run_build(config)
    assert result.origin == f"acme/tiny@{'a' * 40}"
    ckpt = result.folder / "checkpoints"
    assert {p.name for p in ckpt.iterdir()} == MODEL_FILES | TOKENIZER  # safetensors only
    blob = (base / "snapshots" / ("a" * 40) / "model.safetensors").resolve()
    assert (ckpt / "model.safetensors").stat().st_ino == blob.stat().st_ino  # linked to the blob


def test_hub_sharded_checkpoint_follows_its_index(
    tmp_path: Path, hub: Path, tiny_model_path: Path
) -> None:
    from transformers import AutoModelForCausalLM

    sharded = tmp_path / "sharded"
    AutoModelForCausalLM.from_pretrained(tiny_model_path).save_pretrained(
        sharded, max_shard_size="10MB"
    )
    index = json.loads((sharded / "model.safetensors.index.json").read_text())
    shards = set(index["weight_map"].values())
    assert len(shards) > 1
    files = {p.name: p for p in sharded.iterdir()}
    files |= {n: tiny_model_path / n for n in TOKENIZER}
    fake_hub_cache(hub, "acme/sharded", files, commit="b" * 40)
    config = write_config(
        tmp_path,
        f'[models.sharded]\nhuggingface.repo = "acme/sharded"\nhuggingface.version = "{"b" * 40}"\n',
    )
    [result] = run_build(config)
    names = {p.name for p in (result.folder / "checkpoints").iterdir()}
    assert shards | {"model.safetensors.index.json", "config.json"} <= names


def test_hub_repo_missing_offline_says_what_to_do(tmp_path: Path, hub: Path) -> None:
    config = write_config(tmp_path, '[models.gone]\nhuggingface.repo = "acme/gone"\n')
    with pytest.raises(BuildError, match="HF_HUB_OFFLINE") as e:
        run_build(config)
    assert "hf download acme/gone" in str(e.value)
    assert not (tmp_path / "work").exists()


def test_hub_snapshot_missing_a_shard_offline(
    tmp_path: Path, hub: Path, tiny_model_path: Path
) -> None:
    files = {n: tiny_model_path / n for n in ("config.json", *TOKENIZER)}
    index = tmp_path / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": {"w": "model-00001-of-00002.safetensors"}}))
    files["model.safetensors.index.json"] = index
    fake_hub_cache(hub, "acme/partial", files)
    config = write_config(tmp_path, '[models.partial]\nhuggingface.repo = "acme/partial"\n')
    with pytest.raises(BuildError, match=r"missing in .*model-00001-of-00002\.safetensors"):
        run_build(config)


# ---- tokenizers -------------------------------------------------------------------------------


def test_tokenizer_from_elsewhere(
    tmp_path: Path, tiny_model_path: Path, embedded_path: Path
) -> None:
    model = local_model(tmp_path, tiny_model_path)
    for name in TOKENIZER:
        (model / name).unlink()
    config = write_config(tmp_path, f'[models.tiny]\nlocal.path = "{model}"\ngpu = false\n')
    with pytest.raises(BuildError, match=r'no tokenizer\.json.*tokenizer = "FOLDER'):
        run_build(config)
    config.write_text(config.read_text() + f'tokenizer = "{embedded_path}"\n')
    [result] = run_build(config)
    linked = result.folder / "checkpoints" / "tokenizer.json"
    assert linked.stat().st_ino == (embedded_path / "tokenizer.json").stat().st_ino


# ---- push and the CLI -------------------------------------------------------------------------


def test_push_without_cog_or_docker_prints_the_command(
    tiny_project: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = tiny_project
    [result] = run_build(config)
    monkeypatch.setenv("PATH", str(config.parent))  # no cog, no docker here
    with pytest.raises(PushError) as e:
        push(result.folder, ["--debug"])
    message = str(e.value)
    assert "cog CLI is not on PATH" in message and "docker" in message
    assert f"cd {result.folder} && cog push --separate-weights r8.im/alice/tiny --debug" in message


def test_push_explains_a_missing_project_or_prefix(tmp_path: Path, tiny_project) -> None:
    with pytest.raises(PushError, match="cogql replicate build nope"):
        push(tmp_path / "work" / "nope")
    config, _ = tiny_project
    config.write_text(config.read_text().replace('dest_prefix = "r8.im/alice"\n', ""))
    [result] = run_build(config)
    with pytest.raises(PushError, match="no dest_prefix"):
        push(result.folder)


def test_cli_build_and_push(
    tiny_project: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    config, _ = tiny_project
    out = config.parent / "work"
    runner = CliRunner()
    args = ["replicate", "build", "--config", str(config), "--out", str(out)]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "built tiny" in result.output and "cogql replicate push tiny" in result.output
    result = runner.invoke(main, [*args, "nope"])
    assert result.exit_code == 2 and "not in the config" in result.output
    monkeypatch.setenv("PATH", str(config.parent))
    result = runner.invoke(main, ["replicate", "push", "tiny", "--out", str(out)])
    assert result.exit_code == 1 and "cog push --separate-weights r8.im/alice/tiny" in result.output


# ---- hostile model folders, links and names -----------------------------------------------------


def cli_build(config: Path, out: Path, *names: str):
    args = ["replicate", "build", "--config", str(config), "--out", str(out), *names]
    return CliRunner().invoke(main, args)


def tree(folder: Path) -> set[str]:
    """Every path below `folder` (links not followed)."""
    return {p.relative_to(folder).as_posix() for p in folder.rglob("*")}


@pytest.mark.parametrize(
    "shard",
    [
        "../../../../target.txt",
        "ABSOLUTE",
        "..\\..\\..\\..\\target.txt",
        "model\x00.safetensors",
        "x" * 300 + ".safetensors",
    ],
)
def test_a_shard_name_from_an_index_is_checked_like_user_input(
    tmp_path: Path, tiny_model_path: Path, shard: str
) -> None:
    """A model folder whose index names a shard outside the folder: on the old code the shard
    was linked in (`../` read box/target.txt, and wrote its link outside --out)."""
    box = tmp_path / "box"
    model = box / "a" / "b" / "c" / "model"
    shutil.copytree(tiny_model_path, model)
    (box / "target.txt").write_text("secret of the machine")
    shard = str(box / "target.txt") if shard == "ABSOLUTE" else shard
    index = {"weight_map": {"a": "model.safetensors", "b": shard}}
    (model / "model.safetensors.index.json").write_text(json.dumps(index))
    config = write_config(tmp_path, f'[models.tiny]\nlocal.path = "{model}"\ngpu = false\n')
    out = tmp_path / "out" / "p" / "q" / "work"  # checkpoints/../../../.. is out/p
    before = tree(tmp_path)
    result = cli_build(config, out)
    assert result.exit_code == 1, result.output
    assert "model.safetensors.index.json names the shard" in result.stderr
    assert repr(shard)[:60] in result.stderr and "built tiny" not in result.stderr
    assert tree(tmp_path) == before  # nothing written, anywhere
    assert (box / "target.txt").read_text() == "secret of the machine"


@pytest.mark.parametrize("link", ["README.md", "tokenizer.json", "model.safetensors"])
def test_a_link_out_of_the_model_folder_is_refused(
    tmp_path: Path, tiny_model_path: Path, link: str
) -> None:
    """On the old code any file of the machine, linked into the folder, went into checkpoints/."""
    model = local_model(tmp_path, tiny_model_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("the machine's file")
    (model / link).unlink(missing_ok=True)
    (model / link).symlink_to(secret)
    config = write_config(tmp_path, f'[models.tiny]\nlocal.path = "{model.name}"\ngpu = false\n')
    with pytest.raises(BuildError, match=rf"{link} leads to .*secret\.txt, outside the model"):
        run_build(config)
    assert not (tmp_path / "work").exists()


def test_links_inside_the_model_folder_are_fine(tmp_path: Path, tiny_model_path: Path) -> None:
    model = local_model(tmp_path, tiny_model_path)
    (model / "real-weights").mkdir()
    os.replace(model / "model.safetensors", model / "real-weights" / "w.safetensors")
    (model / "model.safetensors").symlink_to("real-weights/w.safetensors")
    config = write_config(tmp_path, f'[models.tiny]\nlocal.path = "{model.name}"\ngpu = false\n')
    [result] = run_build(config)
    linked = result.folder / "checkpoints" / "model.safetensors"
    assert linked.stat().st_ino == (model / "real-weights" / "w.safetensors").stat().st_ino


def test_a_hub_snapshot_may_link_to_its_blobs_and_nowhere_else(
    tmp_path: Path, hub: Path, tiny_model_path: Path
) -> None:
    files = {p.name: p for p in tiny_model_path.iterdir()}
    base = fake_hub_cache(hub, "acme/tiny", files)
    secret = tmp_path / "secret.md"
    secret.write_text("not the repo's")
    (base / "snapshots" / ("a" * 40) / "README.md").symlink_to(secret)
    config = write_config(tmp_path, '[models.tiny]\nhuggingface.repo = "acme/tiny"\n')
    with pytest.raises(BuildError, match=r"README\.md leads to .*secret\.md, outside the snap"):
        run_build(config)
    assert not (tmp_path / "work").exists()


def test_a_symlinked_project_folder_is_refused(tiny_project: tuple[Path, Path]) -> None:
    """On the old code the project was written into the link's target."""
    config, _ = tiny_project
    elsewhere = config.parent / "elsewhere"
    elsewhere.mkdir()
    (config.parent / "work").mkdir()
    (config.parent / "work" / "tiny").symlink_to(elsewhere)
    result = cli_build(config, config.parent / "work")
    assert result.exit_code == 1
    assert "the project folder is a symbolic link" in result.stderr
    assert list(elsewhere.iterdir()) == []


def test_a_manifest_naming_paths_outside_the_project_is_refused(
    tiny_project: tuple[Path, Path],
) -> None:
    """On the old code a rebuild deleted a file outside the project that an edited manifest
    listed as stale."""
    config, _ = tiny_project
    [first] = run_build(config)
    victim = config.parent / "victim.txt"
    victim.write_text("keep me")
    manifest = json.loads((first.folder / MANIFEST).read_text())
    manifest["files"]["../../victim.txt"] = {
        "size": victim.stat().st_size,
        "sha256": hashlib.sha256(victim.read_bytes()).hexdigest(),
    }
    (first.folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(ProjectConflict, match=r"'\.\./\.\./victim\.txt' climbs out"):
        run_build(config)
    assert victim.read_text() == "keep me"


def test_out_holding_a_file_named_like_a_model_fails_before_building(
    tmp_path: Path, tiny_model_path: Path
) -> None:
    model = local_model(tmp_path, tiny_model_path)
    body = "".join(
        f'[models.{n}]\nlocal.path = "{model.name}"\ngpu = false\n' for n in ("first", "second")
    )
    config = write_config(tmp_path, body)
    out = tmp_path / "work"
    out.mkdir()
    (out / "second").write_text("a file of mine")
    result = cli_build(config, out)
    assert result.exit_code == 1 and not isinstance(result.exception, FileExistsError)
    assert "Traceback" not in result.output
    assert f"{out / 'second'}: a file is where the project folder goes" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["second"]  # "first" was not built
    assert (out / "second").read_text() == "a file of mine"


@pytest.mark.parametrize("below", [False, True])
def test_out_that_is_a_file_is_a_clear_error(tiny_project: tuple[Path, Path], below: bool) -> None:
    config, _ = tiny_project
    file = config.parent / "not-a-folder"
    file.write_text("x")
    out = file / "work" if below else file
    result = cli_build(config, out)
    assert result.exit_code == 1 and not isinstance(result.exception, OSError)
    assert result.stderr.startswith("error: ")
    assert "is a file, not a folder; nothing was written" in result.stderr
    assert file.read_text() == "x"


def test_cog_yaml_quotes_every_value(tiny_project: tuple[Path, Path]) -> None:
    """Even a source with line breaks (were validation to miss one) stays in its comment: on the
    old code it added an `image:` key of the attacker's to cog.yaml."""
    from cogql.replicate.deploy.build import _cog_yaml
    from cogql.replicate.deploy.requirements import ImagePackages
    from cogql.replicate.deploy.sources import ModelFiles

    config, _ = tiny_project
    model = load_config(config).models["tiny"]
    evil = "/models/x\nimage: r8.im/attacker/x\nbuild:\n  gpu: true\u2028run: evil.py"
    text = _cog_yaml(model, ModelFiles(evil, (), True), None, ImagePackages(""))
    cog = yaml.safe_load(text)
    assert set(cog) == {"build", "environment", "run"} and cog["run"] == "predict.py:Predictor"
    assert cog["build"]["gpu"] is False
    assert len(text.splitlines()) == 12  # the template's lines, no more


def test_a_newline_in_local_path_is_refused(tmp_path: Path, tiny_model_path: Path) -> None:
    """A real folder whose name holds a line break: on the old code its name reached cog.yaml
    raw and added an `image:` key."""
    model = tmp_path / "m\nimage: attacker"
    shutil.copytree(tiny_model_path, model)
    config = write_config(
        tmp_path, f"[models.tiny]\nlocal.path = {json.dumps(model.name)}\ngpu = false\n", None
    )
    result = cli_build(config, tmp_path / "work")
    assert result.exit_code == 2
    assert "models.tiny.local.path: contains the control character U+000A" in result.stderr
    assert not (tmp_path / "work").exists()


# ---- push: checked before anything runs -------------------------------------------------------


@pytest.fixture
def fake_cog(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A PATH with a `cog` that records its arguments and a `docker` whose daemon answers, so
    the push script really runs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "cog-calls.txt"
    (bin_dir / "cog").write_text(f'#!/bin/sh\necho "$@" >> "{log}"\n')
    (bin_dir / "docker").write_text("#!/bin/sh\nexit 0\n")
    for tool in ("cog", "docker"):
        (bin_dir / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:/usr/bin:/bin")
    return log


def test_push_runs_the_script_with_the_recorded_destination(
    tiny_project: tuple[Path, Path], fake_cog: Path
) -> None:
    config, _ = tiny_project
    [result] = run_build(config)
    assert push(result.folder, ["--debug"]) == 0
    assert fake_cog.read_text() == "push --separate-weights r8.im/alice/tiny --debug\n"


def test_push_refuses_a_path_for_a_name(tmp_path: Path, fake_cog: Path) -> None:
    """On the old code `push ../../x` ran x/push, a project found outside --out."""
    outside = tmp_path / "x"
    outside.mkdir()
    marker = tmp_path / "ran.txt"
    (outside / "push").write_text(f'#!/bin/sh\necho ran > "{marker}"\n')
    (outside / "push").chmod(0o755)
    (outside / MANIFEST).write_text(json.dumps({"format": 1, "info": {"image": "r8.im/a/x"}}))
    out = tmp_path / "o" / "work"
    out.mkdir(parents=True)
    result = CliRunner().invoke(main, ["replicate", "push", "../../x", "--out", str(out)])
    assert result.exit_code == 1
    assert result.stderr.startswith("error: '../../x' is not a model name")
    assert not marker.exists() and not fake_cog.exists()


@pytest.mark.parametrize(
    "image", ["r8.im/alice/other", "r8.im/alice/tiny; rm -rf ~", "tiny", "r8.im/Alice/tiny", 7]
)
def test_push_refuses_a_destination_that_is_not_owner_name_for_the_model(
    tiny_project: tuple[Path, Path], fake_cog: Path, image: object
) -> None:
    config, _ = tiny_project
    [result] = run_build(config)
    manifest = json.loads((result.folder / MANIFEST).read_text())
    manifest["info"]["image"] = image
    (result.folder / MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(PushError, match="the recorded destination"):
        push(result.folder)
    assert not fake_cog.exists()


def test_push_refuses_a_symlinked_project(tiny_project: tuple[Path, Path], fake_cog: Path) -> None:
    config, _ = tiny_project
    [result] = run_build(config)
    link = result.folder.parent / "linked"
    link.symlink_to(result.folder)
    with pytest.raises(PushError, match="is a symbolic link"):
        push(link)
    assert not fake_cog.exists()
