"""Chat templates render with jinja2 alone exactly as transformers' apply_chat_template renders
them (the light install has no transformers), and keep its sandbox rules."""

from __future__ import annotations

import jinja2
import pytest
import tokenizers

from cogql.runtime.chat_template import render_chat
from cogql.tokenizer import Tokenizer, load_tokenizer
from tests.conftest import REAL_TOKENIZERS, real_tokenizer_dir

CONVERSATIONS = [
    [{"role": "user", "content": "Grüße, 世界! {{ not jinja }}"}],
    [
        {"role": "system", "content": "Answer briefly."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because."},
        {"role": "user", "content": "Why not?"},
    ],
]


def _with_template(template: str) -> Tokenizer:
    """The embedded tokenizer's vocabulary under another chat template."""
    return Tokenizer(
        tokenizers.Tokenizer(tokenizers.models.WordLevel({"<s>": 0, "</s>": 1}, unk_token="<s>")),
        name="test",
        bos_token_id=0,
        eos_token_id=1,
        chat_template=template,
    )


@pytest.mark.parametrize("name", ["embedded", *REAL_TOKENIZERS])
@pytest.mark.parametrize("generation", [False, True])
def test_renders_as_transformers_does(name: str, generation: bool, tokenizer: Tokenizer) -> None:
    tok = tokenizer if name == "embedded" else load_tokenizer(str(real_tokenizer_dir(name)))
    if not tok.chat_template:
        pytest.skip(f"{name} has no chat template")
    hf = tok.to_hf()
    for messages in CONVERSATIONS:
        try:
            expected = hf.apply_chat_template(
                messages, tokenize=False, add_generation_prompt=generation
            )
        except jinja2.TemplateError as e:  # a template that refuses a system role, say
            with pytest.raises(jinja2.TemplateError, match=str(e)):
                render_chat(tok, messages, add_generation_prompt=generation)
            continue
        assert render_chat(tok, messages, add_generation_prompt=generation) == expected


def test_template_helpers() -> None:
    tok = _with_template(
        "{% for m in messages %}{% generation %}{{ m.content | tojson }}{% endgeneration %}"
        "{% endfor %}{{ bos_token }}{{ eos_token }}{{ dict(a=1) | tojson }}"
    )
    rendered = render_chat(tok, [{"role": "user", "content": "ü"}], add_generation_prompt=False)
    assert rendered == '"ü"<s></s>{"a": 1}'


def test_raise_exception_is_a_template_error() -> None:
    tok = _with_template("{{ raise_exception('only user turns, please') }}")
    with pytest.raises(jinja2.TemplateError, match="only user turns, please"):
        render_chat(tok, [], add_generation_prompt=True)


@pytest.mark.parametrize(
    "template",
    [
        "{% set ns = namespace(_hidden=1) %}",
        "{% set ns = namespace(x=1) %}{% set ns._x = 2 %}",
        "{{ messages.__class__.__name__ }}",
    ],
)
def test_templates_cannot_reach_python_internals(template: str) -> None:
    with pytest.raises(jinja2.exceptions.SecurityError):
        render_chat(_with_template(template), [], add_generation_prompt=False)
