"""The tokenizer matrix: cogql on the real tokenizers of deployed models (Llama 2 / Mistral's
SentencePiece BPE with byte fallback, Llama 3 and 3.1, Gemma 3, Qwen 3, DeepSeek V3, gpt-oss;
fetched by `make tokenizers`), each under a model of some kind: a tiny random-weight model of a
matching architecture built from a config, and the weightless `random` model. Their text is noise, so every constraint has to hold by
cogql's doing, on every tokenizer: stop phrases across token boundaries, INT, REGEX, `in` with
leading spaces, token and character lengths, `distribution` against SCORE, BOS and chat
templates against transformers, token bytes, round trips, and the tokenizer handed out over LMTP.

A model kind is a factory from a tokenizer folder (and a scratch folder) to a `cogql.Model`; a
case is a tokenizer under one kind, so another kind of model runs the whole matrix by adding
its factory to MODEL_KINDS and its cases to CASES.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.lmtp.messages import Generate, tokenizer_from_wire
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.runtime.chat import chat_format
from cogql.tokenizer import Tokenizer, load_tokenizer
from tests.conftest import REAL_TOKENIZERS, real_tokenizer_dir

ModelFactory = Callable[[Path, Path], cogql.Model]  # (tokenizer folder, scratch) -> model

# real models' large vocabularies, tiny models built per architecture: minutes, the full tier
pytestmark = pytest.mark.slow

ARCHITECTURES = ("llama", "mistral", "gemma3", "qwen3", "gpt2")
SLIDING_WINDOW = 8  # Mistral's and Gemma 3's local layers: shorter than most prompts here


def _config(arch: str, rows: int, tok: Tokenizer) -> Any:
    import transformers

    ids = {
        "bos_token_id": tok.bos_token_id,
        "eos_token_id": tok.eos_token_id,
        "pad_token_id": tok.eos_token_id,
    }
    if arch == "gpt2":
        return transformers.GPT2Config(
            vocab_size=rows, n_embd=16, n_layer=2, n_head=2, n_positions=1024, **ids
        )
    small = {
        "vocab_size": rows,
        "hidden_size": 16,
        "intermediate_size": 32,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "tie_word_embeddings": True,
        "max_position_embeddings": 4096,
        **ids,
    }
    if arch == "llama":
        return transformers.LlamaConfig(**small)
    if arch == "mistral":
        return transformers.MistralConfig(sliding_window=SLIDING_WINDOW, **small)
    if arch == "qwen3":
        return transformers.Qwen3Config(head_dim=8, **small)
    if arch == "gemma3":
        layers = ["sliding_attention", "full_attention"]
        return transformers.Gemma3TextConfig(
            head_dim=8, sliding_window=SLIDING_WINDOW, layer_types=layers, **small
        )
    raise ValueError(f"no tiny {arch} model")


def build_tiny_model(arch: str, tokenizer_folder: Path, out: Path) -> Path:
    """A 2-layer random-weight `arch` model with the tokenizer's files, in `out`.

    Its embedding has rows past the tokenizer's vocabulary, as real models pad theirs (Gemma 3,
    Qwen 3), and they are loud: ten times copies of real rows, so a model that could choose them
    would, nearly every step."""
    import shutil

    import torch
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(tokenizer_folder)
    rows = (tok.vocab_size + 255) // 256 * 256 + 64
    torch.manual_seed(1234)
    model = AutoModelForCausalLM.from_config(_config(arch, rows, tok))
    with torch.no_grad():
        weight = model.get_output_embeddings().weight
        padding = rows - tok.vocab_size
        weight[tok.vocab_size :] = 10 * weight[:padding]
    model.save_pretrained(out)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_folder / name, out / name)
    return out


def tiny(arch: str) -> ModelFactory:
    def factory(tokenizer_folder: Path, scratch: Path) -> cogql.Model:
        folder = build_tiny_model(arch, tokenizer_folder, scratch / f"tiny-{arch}")
        return cogql.model(f"local:{folder}")

    return factory


def random_model(tokenizer_folder: Path, scratch: Path) -> cogql.Model:
    """The `random` model over the tokenizer: no weights, so every tokenizer runs in seconds."""
    return cogql.model("random", seed=11, tokenizer=str(tokenizer_folder))


MODEL_KINDS: dict[str, ModelFactory] = {f"tiny-{arch}": tiny(arch) for arch in ARCHITECTURES}
MODEL_KINDS["random"] = random_model

CASES: list[tuple[str, str]] = [
    ("llama2", "tiny-llama"),
    ("llama2", "tiny-mistral"),
    ("llama3", "tiny-llama"),
    ("llama3_1", "tiny-llama"),
    ("gemma3", "tiny-gemma3"),
    ("qwen3", "tiny-qwen3"),
    ("deepseek_v3", "tiny-llama"),
    ("gptoss", "tiny-gpt2"),
    *((name, "random") for name in REAL_TOKENIZERS),
]
assert {t for t, _ in CASES} == set(REAL_TOKENIZERS)


@dataclass
class Case:
    name: str
    kind: str
    folder: Path
    model: cogql.Model
    sent: list[Any] = field(default_factory=list)  # ops the model received (see `ops`)

    @cached_property
    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.folder)

    @cached_property
    def hf(self) -> Any:
        """transformers' own tokenizer of the folder: the reference. transformers before 5.20
        (vLLM's pin) maps a config's `LlamaTokenizerFast` onto its SentencePiece-style class,
        whose Metaspace pre-tokenizer replaces a byte-level tokenizer.json's (DeepSeek V3:
        "Hello world" became [42, 6629, 10030]); later releases load the tokenizer.json as it
        is, which is the reference then."""
        from transformers import AutoTokenizer, PreTrainedTokenizerFast

        loaded = AutoTokenizer.from_pretrained(str(self.folder))
        pre = json.loads((self.folder / "tokenizer.json").read_text())["pre_tokenizer"] or {}
        rebuilt = type(loaded.backend_tokenizer.pre_tokenizer).__name__ == "Metaspace"
        if rebuilt and pre.get("type") != "Metaspace":
            return PreTrainedTokenizerFast.from_pretrained(str(self.folder))
        return loaded

    @property
    def weights(self) -> Path | None:
        """The model's folder, for kinds that have weights."""
        name = self.model.name or ""
        return Path(name.removeprefix("local:")) if name.startswith("local:") else None

    def run(self, query: str, **kwargs: Any) -> cogql.LMQLResult:
        result = cogql.run_sync(query, model=self.model, **kwargs)
        assert isinstance(result, cogql.LMQLResult)
        return result

    def counted(self, query: str) -> tuple[cogql.LMQLResult, list[int]]:
        """The result and the tokens each GENERATE produced."""
        calls: list[int] = []

        def on_event(event: Any) -> None:
            if isinstance(event, cogql.ModelCall) and event.kind == "GENERATE":
                calls.append(event.tokens)

        return self.run(query, output=on_event), calls


@pytest.fixture(scope="module", params=CASES, ids=[f"{t}-{k}" for t, k in CASES])
def case(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Case:
    name, kind = request.param
    folder = real_tokenizer_dir(name)
    scratch = tmp_path_factory.mktemp(f"{name}-{kind}")
    return Case(name, kind, folder, MODEL_KINDS[kind](folder, scratch))


@pytest.fixture
def ops(case: Case, monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Every op sent to an in-process model during the test (the real send still runs)."""
    sent: list[Any] = []
    real = InProcessTransport.send

    def send(self: InProcessTransport, batch: list[Any], on_event: Any) -> Any:
        sent.extend(batch)
        return real(self, batch, on_event)

    monkeypatch.setattr(InProcessTransport, "send", send)
    return sent


TEXTS = [
    "Hello world",
    "x = 12345; y = 6789.5",
    "Café ☕ naïve 😀 日本語 Ünïcödé",
    "line one\n\n    indented\ttab  two spaces",
    "family 👩‍👩‍👧 and flags 🇨🇭",
]


# --------------------------------------------------------------------------- tokens and text


def test_token_bytes_match_the_tokenizers_own_decoder(case: Case) -> None:
    """Every token's bytes are what the tokenizer's decoder writes for it inside a text: '▁' is
    a space, byte-fallback tokens (<0xE2>) are one raw byte, special tokens their text."""
    tok = case.tokenizer
    every = tok.all_token_bytes()
    assert len(every) == tok.vocab_size
    (marker,) = tok.encode("a")  # decoded first, so a decoder's leading-space strip spares ours
    texts = tok.backend.decode_batch([[marker, i] for i in range(tok.vocab_size)], False)
    partial = 0
    for i, text in enumerate(texts):
        assert text.startswith("a"), (i, text)
        piece = tok.backend.id_to_token(i)
        if (
            re.fullmatch(r"<0x[0-9A-F]{2}>", piece)
            and i not in tok.backend.get_added_tokens_decoder()
        ):
            assert every[i] == bytes([int(piece[3:5], 16)]), (i, piece)
        elif "\ufffd" in text[1:]:  # part of a UTF-8 character: bytes the decoder cannot show
            partial += 1
            assert "\ufffd".encode() in every[i] or _invalid_utf8(every[i]), (i, piece)
        else:
            assert every[i] == text[1:].encode(), (i, piece)
    assert partial < tok.vocab_size // 10


def _invalid_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return True
    return False


@pytest.mark.parametrize("text", TEXTS)
def test_text_round_trips_and_encodes_as_transformers_does(case: Case, text: str) -> None:
    tok = case.tokenizer
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert b"".join(tok.token_bytes(i) for i in ids) == text.encode()
    # the start of a prompt is encoded as transformers encodes a text (dummy prefix included)
    assert tok.encode(text, start=True) == case.hf(text, add_special_tokens=False)["input_ids"]
    # pieces concatenate: a prompt written piece by piece spells exactly its text
    middle = len(text) // 2
    pieces = tok.encode(text[:middle]) + tok.encode(text[middle:])
    assert tok.decode(pieces) == text


def test_special_tokens(case: Case) -> None:
    """BOS/EOS as the tokenizer's config names them; their text encodes to them alone."""
    tok, hf = case.tokenizer, case.hf
    assert (tok.bos_token_id, tok.eos_token_id) == (hf.bos_token_id, hf.eos_token_id)
    for special in (hf.bos_token, hf.eos_token):
        if special is not None:
            assert tok.encode(special) == [hf.convert_tokens_to_ids(special)]
            assert tok.decode(tok.encode(f"x{special}y")) == f"x{special}y"


def test_bos_is_prepended_as_the_tokenizer_says(case: Case, ops: list[Any]) -> None:
    """cogql writes BOS first whenever the tokenizer has one (LMQL's rule), then the prompt as
    transformers encodes it; where transformers adds BOS itself, the ids are exactly its."""
    case.run('argmax "Hello world, said the[A]" where len(TOKENS(A)) < 2')
    (generate,) = [op for op in ops if isinstance(op, Generate)]
    text_ids = case.hf("Hello world, said the", add_special_tokens=False)["input_ids"]
    bos = case.hf.bos_token_id
    assert generate.prompt == ([bos] if bos is not None else []) + text_ids
    with_specials = case.hf("Hello world, said the")["input_ids"]
    if bos is not None and with_specials[0] == bos:
        assert generate.prompt == with_specials


# --------------------------------------------------------------------------- constraints

PHRASE = "the end"
PHRASE_REGEX = r"[a-z]{1,3} the end[a-z ]{0,6}"


def test_the_stop_phrase_spans_tokens(case: Case) -> None:
    assert len(case.tokenizer.encode(" " + PHRASE)) >= 2


def test_stops_at_a_phrase_across_tokens(case: Case) -> None:
    r = case.run(f'argmax "Say:[A]" where REGEX(A, r"{PHRASE_REGEX}") and STOPS_AT(A, "{PHRASE}")')
    value = r["A"]
    assert value.endswith(PHRASE) and value.count(PHRASE) == 1
    assert re.fullmatch(r"[a-z]{1,3} the end", value)
    assert r.prompt == "Say:" + value


def test_stops_before_a_phrase_across_tokens(case: Case) -> None:
    """'e ' mostly straddles tokens ('…e' then ' word'); the value never holds it."""
    r = case.run('argmax "Hello[A] done" where STOPS_BEFORE(A, "e ") and len(TOKENS(A)) < 24')
    assert "e " not in r["A"]
    assert r.prompt == "Hello" + r["A"] + " done"


def test_stops_before_a_phrase_the_grammar_forces(case: Case) -> None:
    q = f'argmax "Say:[A] done" where REGEX(A, r"{PHRASE_REGEX}") and STOPS_BEFORE(A, " {PHRASE}")'
    r = case.run(q)
    assert re.fullmatch(r"[a-z]{1,3}", r["A"])
    assert r.prompt == "Say:" + r["A"] + " done"


def _digits_per_token(tok: Tokenizer) -> int:
    return max(len(b) for b in tok.all_token_bytes() if b.isdigit())


def test_int_on_digits_one_per_token_or_grouped(case: Case) -> None:
    r, calls = case.counted('argmax "Number: [N]" where INT(N) and len(TOKENS(N)) < 4')
    n = r["N"]
    assert isinstance(n, int) and calls and calls[0] <= 3
    assert len(str(abs(n))) <= 3 * _digits_per_token(case.tokenizer)
    assert r.prompt.startswith("Number: ") and r.prompt.strip().endswith(str(n))


def test_digit_splitting_is_the_tokenizers(case: Case) -> None:
    """Llama 2, Gemma 3 and Qwen 3 split numbers into single digits, Llama 3, DeepSeek V3 and
    gpt-oss into groups of three: INT above runs on both."""
    grouped = {"llama3", "llama3_1", "deepseek_v3", "gptoss"}
    assert _digits_per_token(case.tokenizer) == (3 if case.name in grouped else 1)


@pytest.mark.parametrize(
    ("prefix", "options"),
    [("Pick:", [" yes", " no", " maybe so"]), ("Pick: ", ["yes", "no way", "日本"])],
    ids=["leading-space-options", "after-a-space"],
)
def test_in_options_with_and_without_leading_spaces(
    case: Case, prefix: str, options: list[str]
) -> None:
    r = case.run(f'argmax "{prefix}[A]" where A in OPTIONS', OPTIONS=options)
    assert r["A"] in options
    assert r.prompt == prefix + r["A"]


@pytest.mark.parametrize(
    "pattern", [r"[0-9]{2}/[0-9]{2}", r"(é|ü|☕){2}x", r"[A-Z][a-z]{2} [a-z]+"]
)
def test_regex(case: Case, pattern: str) -> None:
    r = case.run(f'argmax "Code:[D]" where REGEX(D, r"{pattern}") and len(TOKENS(D)) < 12')
    assert re.fullmatch(pattern, r["D"]), r["D"]
    assert r.prompt == "Code:" + r["D"]


def test_token_and_character_lengths(case: Case) -> None:
    r, calls = case.counted('argmax "Hello[A]" where len(TOKENS(A)) == 3')
    assert calls == [3]
    assert r.prompt == "Hello" + r["A"]
    r = case.run('argmax "Hello[A]" where len(A) < 9 and len(TOKENS(A)) < 8')
    assert len(r["A"]) < 9


async def test_generated_text_round_trips(case: Case) -> None:
    """Sampled noise decodes to text whose bytes are the tokens' bytes, and that text encodes
    back to the same text."""
    conn = await case.model.connect()
    tok = case.tokenizer
    prompt = _prompt_ids(tok, "Once upon a time")
    op = Generate(None, "", prompt, max_tokens=24, temperature=1.0, seed=7)
    tokens = [e.token for e in [e async for e in conn.client.generate(op)]]
    tokens = [t for t in tokens if t != tok.eos_token_id]
    assert tokens and max(tokens) < tok.vocab_size  # never the embedding's padding rows
    text = tok.decode(tokens)
    data = b"".join(tok.token_bytes(t) for t in tokens)
    assert data.decode("utf-8", errors="replace") == text
    if "\ufffd" not in text:
        assert tok.decode(tok.encode(text)) == text


def _prompt_ids(tok: Tokenizer, text: str) -> list[int]:
    bos = [tok.bos_token_id] if tok.bos_token_id is not None else []
    return bos + tok.encode(text, start=True)


# --------------------------------------------------------------------------- scoring

OPTIONS = [" red", " dark blue", " light green"]


async def test_distribution_sums_to_one_and_matches_score(case: Case) -> None:
    q = f'argmax "Q: What color is it?\\nA:[C]" distribution C in {OPTIONS!r}'
    r = await cogql.run(q, model=case.model)
    assert isinstance(r, cogql.LMQLResult)
    probs = r.variables["P(C)"]
    assert [o for o, _ in probs] == OPTIONS
    assert math.isclose(sum(p for _, p in probs), 1.0, abs_tol=1e-9)
    assert r["C"] == max(probs, key=lambda item: item[1])[0]
    conn = await case.model.connect()
    tok = case.tokenizer
    prompt = _prompt_ids(tok, "Q: What color is it?\nA:")
    scored = await conn.client.score(prompt, [tok.encode(o) for o in OPTIONS])
    means = [sum(lps) / len(lps) for lps in scored]
    norm = math.log(sum(math.exp(m) for m in means))
    assert [lp for _, lp in r.variables["log P(C)"]] == pytest.approx([m - norm for m in means])


async def test_scores_match_transformers_past_the_sliding_window(case: Case) -> None:
    """SCORE log-probs after prompts longer than a sliding window, scored cold, after a cached
    prefix (the cache cropped past the window) and with several options in one batch, equal a
    plain transformers forward pass over the whole sequence."""
    if case.weights is None:
        pytest.skip(f"{case.kind} has no weights to compare with")
    tok = case.tokenizer
    conn = await case.model.connect()
    engine = local_engine(str(case.weights))
    engine.call(engine.cache.clear).result()
    long = _prompt_ids(
        tok, "The quick brown fox jumps over the lazy dog, again and again and again, until the end"
    )
    assert len(long) > 2 * SLIDING_WINDOW
    for prompt in (long, long[:-3] + tok.encode(" then once more")):
        options = [tok.encode(o) for o in OPTIONS]
        got = await conn.client.score(prompt, options)
        expected = engine.call(lambda p=prompt, o=options: _reference(case.weights, tok, p, o))
        for g, e in zip(got, expected.result(), strict=True):
            assert g == pytest.approx(e, abs=2e-4)


def test_prompts_started_together_match_transformers(case: Case) -> None:
    """Prompts whose uncached tails differ in length, extended in one pass (streams that start
    together), get the logits of a whole-sequence forward pass: on sliding-window models too."""
    if case.weights is None:
        pytest.skip(f"{case.kind} has no weights to compare with")
    tok = case.tokenizer
    engine = local_engine(str(case.weights))
    base = _prompt_ids(tok, "The quick brown fox jumps over the lazy dog again and again")
    prompts = [base + tok.encode(" and once"), base + tok.encode(" then, after a long while")]

    def started_together() -> list[Any]:
        engine.cache.clear()
        engine.cache.release(engine.runner.prepare(base))
        entries = engine.runner.prepare_many(prompts)
        assert entries is not None
        for entry in entries:
            engine.cache.release(entry)
        return [entry.logits.clone() for entry in entries]

    def reference() -> list[Any]:
        import torch
        from transformers import AutoModelForCausalLM

        model = AutoModelForCausalLM.from_pretrained(str(case.weights), dtype=torch.float32)
        with torch.no_grad():
            return [model(torch.tensor([p])).logits[0, -1, : tok.vocab_size] for p in prompts]

    got, expected = engine.call(started_together).result(), engine.call(reference).result()
    for g, e in zip(got, expected, strict=True):
        assert float((g - e).abs().max()) < 1e-4


def _reference(folder: Path, tok: Tokenizer, prompt: list[int], options: list[list[int]]):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()
    out = []
    for option in options:
        with torch.no_grad():
            logits = model(torch.tensor([prompt + option])).logits[0, :, : tok.vocab_size]
        logprobs = torch.log_softmax(logits.float(), -1)
        out.append([float(logprobs[len(prompt) - 1 + j, t]) for j, t in enumerate(option)])
    return out


# --------------------------------------------------------------------------- chat, LMTP


def test_chat_tags_render_the_template(case: Case, ops: list[Any]) -> None:
    q = '"{:system}Be brief.{:user}Say hi.{:assistant}[A]" where len(TOKENS(A)) < 3'
    r = case.run(q)
    if not case.hf.chat_template:
        assert chat_format(case.tokenizer) is None
        assert r.prompt.startswith("((system)):Be brief.\n((user)):Say hi.\n((assistant)):")
        return
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi."}]
    rendered = case.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert r.prompt == rendered + r["A"]
    (generate,) = [op for op in ops if isinstance(op, Generate)]
    assert generate.prompt == case.hf(rendered, add_special_tokens=False)["input_ids"]


async def test_tokenizer_handed_out_over_lmtp_is_identical(case: Case) -> None:
    conn = await case.model.connect()
    info = await conn.client.request_info({"tokenizer": True})
    remote = tokenizer_from_wire(info["tokenizer"], "remote")
    tok = case.tokenizer
    assert (remote.bos_token_id, remote.eos_token_id) == (tok.bos_token_id, tok.eos_token_id)
    assert (remote.vocab_size, remote.chat_template) == (tok.vocab_size, tok.chat_template)
    specials = "".join(t for t in (case.hf.bos_token, case.hf.eos_token) if t)
    for text in [*TEXTS, f"{specials} between {specials}"]:
        assert remote.encode(text) == tok.encode(text)
        assert remote.encode(text, start=True) == tok.encode(text, start=True)
        assert remote.decode(tok.encode(text)) == text
    assert remote.all_token_bytes() == tok.all_token_bytes()
