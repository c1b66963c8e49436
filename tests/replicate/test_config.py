"""config.toml validation: every mistake at once, each with its key path and a fix."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
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


# ---- the engine: cogql's (the default) or vLLM, with vLLM's engine arguments ----------------------

VLLM_MODEL = '[models.m]\nhuggingface.repo = "a/b"\nengine = "vllm"\n'
HAS_VLLM = importlib.util.find_spec("vllm") is not None


def test_engine_vllm_takes_vllms_engine_arguments() -> None:
    text = VLLM_MODEL + (
        'config.torch_dtype = "float16"\nconfig.trust_remote_code = true\n'
        "vllm.max-model-len = 4096\nvllm.tensor_parallel_size = 2\n"
        'vllm.compilation_config = {mode = 0}\nvllm.hf_overrides = {"rope_theta" = 1e6}\n'
    )
    model = parse_config(text, Path("/x/config.toml")).models["m"]
    assert model.engine == "vllm"
    assert model.args == {"torch_dtype": "float16", "trust_remote_code": True}
    assert model.vllm_options == {  # vLLM's CLI spelling becomes its argument's name
        "max_model_len": 4096,
        "tensor_parallel_size": 2,
        "compilation_config": {"mode": 0},
        "hf_overrides": {"rope_theta": 1e6},
    }
    assert parse_config(GOOD, Path("/x/config.toml")).models["tiny"].engine == "cogql"


def test_engine_mistakes_are_reported_with_a_fix() -> None:
    found = issues(
        '[models.typo]\nhuggingface.repo = "a/b"\nengine = "vlm"\n'
        '[models.number]\nhuggingface.repo = "a/b"\nengine = 2\n'
        '[models.cogql]\nhuggingface.repo = "a/b"\nvllm.max_model_len = 4096\n'
        '[models.inside]\nhuggingface.repo = "a/b"\nconfig.engine = "vllm"\n'
        '[models.llama]\nhuggingface.repo = "a/b"\nengine = "llama.cpp"\n'
    )
    assert found["models.typo.engine"] == (
        "unknown engine 'vlm' | did you mean 'vllm'? use \"cogql\" (the default: cogql's own "
        'engine) or "vllm"'
    )
    assert "a whole number" not in found["models.number.engine"]
    assert "must be a string" in found["models.number.engine"]
    assert "runs on cogql's engine" in found["models.cogql.vllm"]
    assert 'add engine = "vllm"' in found["models.cogql.vllm"]
    assert "not a model argument" in found["models.inside.config.engine"]
    assert found["models.llama.engine"].startswith("llama.cpp runs .gguf files in process")
    assert 'engine = "cogql"' in found["models.llama.engine"]
    assert len(found) == 5


def test_config_keys_vllm_does_not_read_are_refused() -> None:
    found = issues(
        VLLM_MODEL + "gpu = false\nconfig.load_in_8bit = true\nconfig.bnb_4bit_quant_type = "
        '"nf4"\nconfig.use_safetensors = true\nconfig.attn_implementation = "sdpa"\n'
        'config.torch_dtype = "float8"\nconfig.batch_size = 8\n'
    )
    assert "vLLM does not read it" in found["models.m.config.load_in_8bit"]
    assert 'vllm.quantization = "fp8"' in found["models.m.config.load_in_8bit"]
    assert "vLLM does not read it" in found["models.m.config.bnb_4bit_quant_type"]
    assert "needs a GPU" not in found["models.m.config.load_in_8bit"]  # one issue per key
    assert "remove it" in found["models.m.config.use_safetensors"]
    assert "under vllm.*" in found["models.m.config.attn_implementation"]
    assert '"float16"' in found["models.m.config.torch_dtype"]  # the dtype vLLM reads is checked
    assert "batches concurrent streams" in found["models.m.config.batch_size"]
    assert len(found) == 6


def test_vllm_arguments_cogql_sets_are_refused() -> None:
    found = issues(
        VLLM_MODEL + 'vllm.model = "other/model"\nvllm.dtype = "half"\nvllm.revision = "v2"\n'
        "vllm.trust_remote_code = true\nvllm.seed = 1979-05-27\n"
    )
    assert "checkpoints" in found["models.m.vllm.model"]
    assert "config.torch_dtype" in found["models.m.vllm.dtype"]
    assert "huggingface.version" in found["models.m.vllm.revision"]
    assert "config.trust_remote_code" in found["models.m.vllm.trust_remote_code"]
    assert "date cannot be passed to vLLM" in found["models.m.vllm.seed"]


@pytest.mark.skipif(not HAS_VLLM, reason="checks names against the installed vLLM")
def test_unknown_vllm_arguments_are_refused_with_a_suggestion() -> None:
    found = issues(VLLM_MODEL + "vllm.max_modl_len = 4096\nvllm._api_process_count = 2\n")
    assert found["models.m.vllm.max_modl_len"] == (
        "not one of vLLM's engine arguments | did you mean 'max_model_len'? see vLLM's engine "
        "arguments (AsyncEngineArgs)"
    )
    assert "not one of vLLM's engine arguments" in found["models.m.vllm._api_process_count"]


def test_without_vllm_installed_argument_names_go_through() -> None:
    """A build for GPUs on a machine without vLLM: the names are vLLM's to check at start-up;
    what cogql sets itself is refused all the same."""
    script = f"""
import json, sys
from pathlib import Path
sys.modules["vllm"] = None  # vLLM cannot be imported, as where it is not installed
from cogql.replicate.deploy.config import ConfigError, parse_config
model = parse_config({VLLM_MODEL + "vllm.max_modl_len = 1"!r}, Path("/x/c.toml")).models["m"]
try:
    parse_config({VLLM_MODEL + 'vllm.model = "x"'!r}, Path("/x/c.toml"))
except ConfigError as e:
    print(json.dumps([model.vllm_options, [i.key for i in e.issues]]))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == [{"max_modl_len": 1}, ["models.m.vllm.model"]]
