"""config.toml validation: every mistake at once, each with its key path and a fix."""

from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from cogql.cli import main
from cogql.replicate.deploy.build import init_config
from cogql.replicate.deploy.config import ConfigError, load_config, parse_config


def issues(text: str, base: Path = Path("/tmp")) -> dict[str, str]:
    """key → 'problem | fix' for every issue the text has."""
    with pytest.raises(ConfigError) as e:
        parse_config(text, base / "config.toml")
    return {i.key: f"{i.problem} | {i.fix}" for i in e.value.issues}


GOOD = '[models.tiny]\nhuggingface.repo = "acme/tiny"\n'


def test_minimal_config_and_defaults() -> None:
    config = parse_config('dest_prefix = "r8.im/alice/"\n' + GOOD, Path("/x/config.toml"))
    model = config.models["tiny"]
    assert config.dest_prefix == "r8.im/alice" and config.image("tiny") == "r8.im/alice/tiny"
    assert (model.spec.gpu, model.spec.python_version, model.spec.max_concurrency) == (
        True,
        "3.11",
        1,
    )
    assert parse_config(GOOD, Path("/x/c.toml")).image("tiny") is None


def test_lmql_config_schema_is_accepted() -> None:
    text = """
dest_prefix = "r8.im/charles-dyfis-net/"
[models.llama-2-13b-hf--lmtp-8bit]
huggingface.repo = "meta-llama/Llama-2-13b-hf"
huggingface.version = "db6b8eb1feabb38985fdf785a89895959e944936"
config.load_in_8bit = true
[models.llama-2-13b-hf--lmql-4bit]
huggingface.repo = "meta-llama/Llama-2-13b-hf"
config.load_in_4bit = true
config.torch_dtype = "float16"
"""
    config = parse_config(text, Path("/x/config.toml"))
    assert config.models["llama-2-13b-hf--lmtp-8bit"].args == {"load_in_8bit": True}


def test_every_mistake_is_reported_at_once_with_key_and_fix() -> None:
    found = issues(
        """
dest_prefix = "r8.im/YOURACCOUNT/"
dest_prefx = "r8.im/a"
[models."Llama/2"]
huggingface.rep = "a/b"
[models.ok]
huggingface.repo = "not a repo"
gpu = "yes"
python_version = 3.10
max_concurrency = 0
config.batch_size = 8
config.torch_dtype = "float8"
[models.nosource]
gpu = false
config.load_in_8bit = true
[models.both]
huggingface.repo = "a/b"
local.path = "does-not-exist"
"""
    )
    assert "did you mean 'dest_prefix'" in found["dest_prefx"]
    assert "YOURACCOUNT" in found["dest_prefix"] and "Replicate username" in found["dest_prefix"]
    assert "cannot contain '/'" in found['models."Llama/2"']
    assert "[models.llama-2]" in found['models."Llama/2"']
    assert "did you mean 'repo'" in found['models."Llama/2".huggingface.rep']
    assert "not a hub id" in found["models.ok.huggingface.repo"]
    assert "true or false" in found["models.ok.gpu"]
    assert "quoted string" in found["models.ok.python_version"]
    assert "models.ok.max_concurrency" in found
    assert "batches concurrent streams" in found["models.ok.config.batch_size"]
    assert '"float16"' in found["models.ok.config.torch_dtype"]
    assert "huggingface.repo" in found["models.nosource"]
    assert "needs a GPU" in found["models.nosource.config.load_in_8bit"]
    assert "keep only one" in found["models.both"]
    assert "does not exist" in found["models.both.local.path"]
    assert len(found) == 15


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [("Llama-2", "llama-2"), (".hidden", "hidden"), ("a b", "a-b"), ("x-", "x")],
)
def test_bad_model_names_get_a_valid_suggestion(name: str, suggestion: str) -> None:
    found = issues(f'[models."{name}"]\nhuggingface.repo = "a/b"\n')
    [(key, text)] = found.items()
    assert key == f'models."{name}"' or key == f"models.{name}"
    assert f"[models.{suggestion}]" in text


@pytest.mark.parametrize(
    ("prefix", "needle"),
    [
        ("r8.im/YOURACCOUNT", "example"),
        ("r8.im/Alice/", "lowercase"),
        ("alice", "REGISTRY/OWNER"),
        (42, "string"),
    ],
)
def test_dest_prefix_mistakes(prefix: object, needle: str) -> None:
    value = f'"{prefix}"' if isinstance(prefix, str) else str(prefix)
    assert needle in issues(f"dest_prefix = {value}\n{GOOD}")["dest_prefix"]


def test_model_argument_conflicts() -> None:
    found = issues(
        '[models.m]\nhuggingface.repo = "a/b"\nconfig.load_in_8bit = true\n'
        'config.load_in_4bit = true\nconfig.dtype = "float16"\nconfig.torch_dtype = "auto"\n'
        'config.bnb_4bit_quant_type = "int3"\n'
    )
    assert "load_in_8bit" in found["models.m.config.load_in_4bit"]
    assert "keep only one" in found["models.m.config.dtype"]
    assert "nf4" in found["models.m.config.bnb_4bit_quant_type"]


def test_syntax_errors_missing_file_and_no_models(tmp_path: Path) -> None:
    assert "(syntax)" in issues("[models.x\n")
    assert "no models" in issues('dest_prefix = "r8.im/a/"\n')["models"]
    with pytest.raises(ConfigError, match="cogql replicate init"):
        load_config(tmp_path / "missing.toml")


def test_local_paths_are_relative_to_the_config_file(tmp_path: Path) -> None:
    (tmp_path / "models" / "m").mkdir(parents=True)
    config_path = tmp_path / "sub" / "config.toml"
    config_path.parent.mkdir()
    config_path.write_text('[models.m]\nlocal.path = "../models/m"\n')
    assert load_config(config_path).models["m"].local_path == (tmp_path / "sub/../models/m")


def test_init_example_is_valid_once_the_owner_is_set(tmp_path: Path) -> None:
    path = init_config(tmp_path / "config.toml")
    with pytest.raises(ConfigError) as e:
        load_config(path)
    assert [i.key for i in e.value.issues] == ["dest_prefix"]  # the only thing left to edit
    with pytest.raises(FileExistsError):
        init_config(path)
    init_config(path, owner="alice", force=True)
    assert load_config(path).image("smollm2-135m-instruct") == "r8.im/alice/smollm2-135m-instruct"


def test_cli_reports_config_errors_and_writes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[models."Bad/Name"]\nhuggingface.repo = "a/b"\n')
    out = tmp_path / "work"
    result = CliRunner().invoke(
        main, ["replicate", "build", "--config", str(config), "--out", str(out)]
    )
    assert result.exit_code == 2
    assert "nothing was written" in result.output and "[models.bad-name]" in result.output
    assert not out.exists()
    result = CliRunner().invoke(main, ["replicate", "init", "--config", str(tmp_path / "c.toml")])
    assert result.exit_code == 0 and (tmp_path / "c.toml").is_file()


# ---- Replicate's naming rule, and strings that must stay on one line ----------------------------


def test_a_long_name_is_judged_by_the_real_limit() -> None:
    """Replicate names follow Docker's image-name rule: no 100-character limit, but the whole
    image name (registry included) may have at most 255 characters. The old code rejected a
    101-character name, saying its characters were wrong."""
    name = "m" * 101
    config = parse_config(f'dest_prefix = "r8.im/alice"\n[models.{name}]\n{GOOD[14:]}', Path("/x"))
    assert config.image(name) == f"r8.im/alice/{name}"
    room = 255 - len("r8.im/alice/")
    found = issues(f'dest_prefix = "r8.im/alice"\n[models.{"m" * (room + 1)}]\n{GOOD[14:]}')
    [text] = found.values()
    assert "would be 256 characters" in text and "at most 255" in text
    assert f"at most {room} characters" in text
    [text] = issues(f"[models.{'m' * 256}]\n{GOOD[14:]}").values()
    assert "256 characters is too long" in text and "at most 255" in text


@pytest.mark.parametrize(
    ("name", "suggestion"), [("a..b", "a-b"), ("a___b", "a-b"), ("a_-b", "a-b"), ("-x-", "x")]
)
def test_separators_follow_dockers_rule(name: str, suggestion: str) -> None:
    [text] = issues(f'[models."{name}"]\nhuggingface.repo = "a/b"\n').values()
    assert "joined by single separators" in text and "Docker's image-name rule" in text
    assert f"[models.{suggestion}]" in text
    for ok in ("a.b", "a_b", "a__b", "a---b", "llama-2-13b-hf--lmtp-8bit"):
        parse_config(f'[models."{ok}"]\nhuggingface.repo = "a/b"\n', Path("/x/c.toml"))


@pytest.mark.parametrize(
    ("key", "line"),
    [
        ("huggingface.repo", 'huggingface.repo = "a/b\\nimage: r8.im/evil/x"'),
        ("huggingface.version", 'huggingface.repo = "a/b"\nhuggingface.version = "main\\r"'),
        ("tokenizer", 'huggingface.repo = "a/b"\ntokenizer = "a/b\\u2028run: x"'),
        ("local.path", 'local.path = "m\\u0000"'),
    ],
)
def test_config_strings_may_not_hold_control_characters(key: str, line: str) -> None:
    found = issues(f"[models.m]\n{line}\n")
    assert "contains the control character U+" in found[f"models.m.{key}"]
    assert "on one line" in found[f"models.m.{key}"]


def test_init_refuses_an_owner_that_is_not_a_replicate_name(tmp_path: Path) -> None:
    """On the old code the owner was pasted into config.toml, quotes and line breaks included."""
    path = tmp_path / "config.toml"
    owner = 'alice/"\n[models.evil]\nlocal.path = "/etc'
    result = CliRunner().invoke(
        main, ["replicate", "init", "--config", str(path), "--owner", owner]
    )
    assert result.exit_code == 2 and result.stderr.startswith("error: ")
    assert "--owner: an owner name cannot contain '/'" in result.stderr
    assert not path.exists()
    result = CliRunner().invoke(
        main, ["replicate", "init", "--config", str(path), "--owner", "Alice"]
    )
    assert result.exit_code == 2 and "Replicate owner names are lowercase" in result.stderr
