"""Chat templates rendered as transformers renders them, with jinja2 alone.

A tokenizer's chat template is Jinja written for transformers' `apply_chat_template`: a
sandbox with `trim_blocks` and `lstrip_blocks`, loop controls, the `{% generation %}` tag, a
`tojson` that keeps non-ASCII text, `raise_exception`, `strftime_now`, and the special tokens
as variables. Rendering here keeps the light install (`pip install cogql`) free of transformers;
the tests compare the text with transformers' own for every tokenizer the suite knows.
"""

from __future__ import annotations

import functools
import json
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.ext
import jinja2.nodes
import jinja2.utils
from jinja2.sandbox import ImmutableSandboxedEnvironment

from ..tokenizer import Tokenizer

__all__ = ["render_chat"]


class _GenerationTag(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}` marks assistant text for training masks;
    a prompt renders its body unchanged."""

    tags = {"generation"}  # noqa: RUF012 (jinja2's own class attribute)

    def parse(self, parser: Any) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        call = self.call_method("_body")
        return jinja2.nodes.CallBlock(call, [], [], body).set_lineno(lineno)

    def _body(self, caller: Any) -> str:
        return str(caller())


class _Namespace(jinja2.utils.Namespace):
    """`namespace(...)` that refuses underscore names: templates come from model repositories
    and must not reach Python internals through attributes they set."""

    def __init__(*args: Any, **kwargs: Any) -> None:
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: object) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(
                f"a chat template may not set the underscore attribute {name!r}"
            )


class _Dict:
    """`dict(...)` and `dict.fromkeys(...)` in templates, without the dict type itself."""

    def __call__(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict(*args, **kwargs)

    def fromkeys(self, *args: Any, **kwargs: Any) -> dict[Any, Any]:
        return dict.fromkeys(*args, **kwargs)


def _raise_exception(message: str) -> NoReturn:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(
    value: Any,
    ensure_ascii: bool = False,
    indent: int | None = None,
    separators: tuple[str, str] | None = None,
    sort_keys: bool = False,
) -> str:
    return json.dumps(
        value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys
    )


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


@functools.lru_cache(maxsize=32)
def _compiled(template: str) -> jinja2.Template:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=[_GenerationTag, jinja2.ext.loopcontrols],
    )
    env.filters["tojson"] = _tojson
    env.globals.update(
        raise_exception=_raise_exception,
        strftime_now=_strftime_now,
        dict=_Dict(),
        namespace=_Namespace,
    )
    return env.from_string(template)


def _special_tokens(tokenizer: Tokenizer) -> dict[str, str]:
    """`bos_token` and `eos_token` as text, the variables templates read them from."""
    named = {"bos_token": tokenizer.bos_token_id, "eos_token": tokenizer.eos_token_id}
    found = {k: tokenizer.backend.id_to_token(i) for k, i in named.items() if i is not None}
    return {k: text for k, text in found.items() if text is not None}


def render_chat(
    tokenizer: Tokenizer, messages: list[dict[str, str]], *, add_generation_prompt: bool
) -> str:
    """The tokenizer's chat template over `messages` (role and content each), as text. Errors
    are the template's own (jinja2's, or whatever `raise_exception` was given)."""
    if not tokenizer.chat_template:
        raise ValueError(f"{tokenizer.name} has no chat template")
    return _compiled(tokenizer.chat_template).render(
        messages=messages,
        tools=None,
        documents=None,
        add_generation_prompt=add_generation_prompt,
        **_special_tokens(tokenizer),
    )
