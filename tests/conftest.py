"""Shared fixtures: the embedded model (loaded once per process by the engine cache), its
tokenizer, an in-process LMTP client, and a tiny random-weight llama built from a config."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.engine.models import resolve_model_path
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.tokenizer import Tokenizer, load_tokenizer

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def embedded_path() -> Path:
    """The converted embedded SmolLM2 folder (converted on the very first run only)."""
    return resolve_model_path(None)


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
