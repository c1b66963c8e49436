"""Chat role tags (`{:system}`, `{:user}`, `{:assistant}`): rendered with the model's chat
template where its tokenizer has one (the embedded SmolLM2's ChatML), so the model sees exactly
what `apply_chat_template` gives; LMQL's `((role)):` text where it has none; and the template
analysis that finds each message's opening and closing text, on other templates' shapes."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import pytest

import cogql
from cogql.lmtp.client import LMTPClient
from cogql.lmtp.messages import Generate
from cogql.runtime.chat import chat_format
from cogql.tokenizer import Tokenizer

SMOLLM_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def template_text(tokenizer: Tokenizer, messages: list[tuple[str, str]]) -> str:
    hf = tokenizer.to_hf()
    convo = [{"role": r, "content": c} for r, c in messages]
    return hf.apply_chat_template(convo, tokenize=False, add_generation_prompt=True)


def prompt_tokens(events: list[Any]) -> list[int]:
    return [e.prompt_tokens for e in events if isinstance(e, cogql.ModelCall)]


async def greedy(client: LMTPClient, prompt: list[int], n: int) -> list[int]:
    events = [e async for e in client.generate(Generate(None, "", prompt, max_tokens=n))]
    return [e.token for e in events if e.token != 2]  # 2: <|im_end|>, SmolLM2's EOS


# --------------------------------------------------------------------------- chat template


async def test_tags_render_the_chat_template_and_the_model_answers_after_it(
    tokenizer: Tokenizer, random_client: LMTPClient
) -> None:
    events: list[Any] = []
    result = await cogql.run(
        '"{:system}You answer in one word.{:user}What color is the sky?{:assistant}[A]" '
        "where len(TOKENS(A)) < 4",
        output=events.append,
    )
    expected = template_text(
        tokenizer, [("system", "You answer in one word."), ("user", "What color is the sky?")]
    )
    assert result.prompt == expected + result["A"]
    # one BOS, as apply_chat_template tokenizes it (SmolLM2's BOS is <|im_start|> itself)
    ids = tokenizer.encode(expected)
    assert ids[0] == 1 and ids[1] != 1 and ids.count(1) == 3
    assert prompt_tokens(events) == [len(ids)]
    # the answer is the model's greedy answer to exactly those tokens
    assert result["A"] == tokenizer.decode(await greedy(random_client, ids, 3))


async def test_without_a_system_tag_the_templates_default_system_prompt_is_used(
    tokenizer: Tokenizer,
) -> None:
    result = await cogql.run('"{:user}Hi{:assistant}[A]" where len(TOKENS(A)) < 2')
    assert result.prompt.startswith(f"<|im_start|>system\n{SMOLLM_SYSTEM}<|im_end|>\n")
    assert result.prompt == template_text(tokenizer, [("user", "Hi")]) + result["A"]


async def test_a_multi_turn_conversation_matches_the_template(tokenizer: Tokenizer) -> None:
    result = await cogql.run(
        '"{:system}Be brief.{:user}Say yes.{:assistant}[A]{:user}Say no.{:assistant}[B]" '
        "where len(TOKENS(A)) < 3 and len(TOKENS(B)) < 3"
    )
    a, b = result["A"], result["B"]
    messages = [("system", "Be brief."), ("user", "Say yes."), ("assistant", a)]
    expected = template_text(tokenizer, [*messages, ("user", "Say no.")])
    assert result.prompt == expected + b
    assert a and b


async def test_whitespace_right_after_a_tag_is_not_part_of_the_message(
    tokenizer: Tokenizer,
) -> None:
    # LMQL's documentation writes "{:user} Hello"; a template message has no leading space
    spaced = await cogql.run(r'"{:user} What is 2+2?\n{:assistant} [A]" where len(TOKENS(A)) < 3')
    plain = await cogql.run(r'"{:user}What is 2+2?\n{:assistant}[A]" where len(TOKENS(A)) < 3')
    assert spaced.prompt == plain.prompt
    assert "<|im_start|>user\nWhat is 2+2?\n<|im_end|>" in spaced.prompt


async def test_tags_inside_loops_and_interpolations() -> None:
    result = await cogql.run(
        """
        "{:system}Count."
        for q in questions:
            "{:user}{q}{:assistant}[A]" where len(TOKENS(A)) < 2
        """,
        questions=["One?", "Two?"],
    )
    assert result.prompt.count("<|im_start|>user\n") == 2
    assert result.prompt.count("<|im_start|>assistant\n") == 2
    assert "<|im_start|>user\nOne?<|im_end|>\n<|im_start|>assistant\n" in result.prompt


async def test_an_unknown_role_is_written_as_lmql_text() -> None:
    result = await cogql.run('"{:user}Hi{:narrator}Then[A]" where len(TOKENS(A)) < 2')
    assert "<|im_start|>user\nHi\n((narrator)):Then" in result.prompt


# --------------------------------------------------------------------------- no template


@pytest.fixture(scope="module")
def no_template_model(tmp_path_factory: pytest.TempPathFactory, embedded_path: Path) -> Any:
    """The random model over a tokenizer folder that has no chat template."""
    folder = tmp_path_factory.mktemp("no-template-tokenizer")
    for name in ("tokenizer.json", "special_tokens_map.json"):
        shutil.copy(embedded_path / name, folder / name)
    config = json.loads((embedded_path / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    (folder / "chat_template.jinja").unlink(missing_ok=True)
    return cogql.model("random", tokenizer=str(folder))


async def test_without_a_template_tags_are_lmql_text(no_template_model: Any) -> None:
    result = await cogql.run(
        '"{:system}Sys{:user}Hi{:assistant}[X]" where len(TOKENS(X)) < 3',
        model=no_template_model,
    )
    # LMQL 0.7 prints '((system)):Sys\n((user)):Hi\n((assistant)):' + X for non-chat models
    assert result.prompt == "((system)):Sys\n((user)):Hi\n((assistant)):" + result["X"]


async def test_without_a_template_text_before_the_first_tag_keeps_the_newline(
    no_template_model: Any,
) -> None:
    result = await cogql.run(
        '"Intro{:user} Hi{:assistant}[X]" where len(TOKENS(X)) < 2', model=no_template_model
    )
    assert result.prompt.startswith("Intro\n((user)): Hi\n((assistant)):")


# --------------------------------------------------------------------------- other templates

LLAMA3 = (
    "{{- bos_token }}{%- for message in messages %}{{- '<|start_header_id|>' + message['role'] "
    "+ '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}"
    "{%- endif %}"
)
GEMMA = (
    "{{ bos_token }}{% if messages[0]['role'] == 'system' %}"
    "{{ raise_exception('System role not supported') }}{% endif %}"
    "{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{ raise_exception('Conversation roles must alternate') }}{% endif %}"
    "{% if message['role'] == 'assistant' %}{% set role = 'model' %}"
    "{% else %}{% set role = message['role'] %}{% endif %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)
# renders the number of messages first: no message has a fixed opening text
COUNTING = (
    "{{ messages | length }}{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}"
    "{% endfor %}{% if add_generation_prompt %}<assistant>{% endif %}"
)


def with_template(tokenizer: Tokenizer, template: str) -> Tokenizer:
    return Tokenizer(
        tokenizer.backend,
        name="templated",
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        chat_template=template,
    )


def test_a_llama3_shaped_template_is_split_per_message(tokenizer: Tokenizer) -> None:
    fmt = chat_format(with_template(tokenizer, LLAMA3))
    assert fmt is not None
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert fmt.first["system"] == "<|im_start|>" + header.format("system")  # bos_token first
    assert fmt.prefix["user"] == header.format("user")
    assert fmt.suffix["user"] == "<|eot_id|>"
    assert fmt.opening("assistant", "user", at_start=False) == "<|eot_id|>" + header.format(
        "assistant"
    )


def test_a_template_without_a_system_role_keeps_user_and_assistant(tokenizer: Tokenizer) -> None:
    fmt = chat_format(with_template(tokenizer, GEMMA))
    assert fmt is not None
    assert "system" not in fmt.prefix
    assert fmt.opening("system", None, at_start=True) is None  # becomes ((system)): text
    assert fmt.first["user"] == "<|im_start|><start_of_turn>user\n"
    assert fmt.answer == "<start_of_turn>model\n"


def test_a_template_that_does_not_split_falls_back_to_text(
    tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        assert chat_format(with_template(tokenizer, COUNTING)) is None
    assert "((role)): text" in caplog.text


def test_a_tokenizer_without_a_template_has_no_chat_format(tokenizer: Tokenizer) -> None:
    assert chat_format(with_template(tokenizer, "")) is None
