"""Chat role tags (`{:system}`, `{:user}`, `{:assistant}`) rendered with the model's chat template.

LMQL only knows chat roles for OpenAI's chat models and writes `((role)):` text for every other
model. A local instruct model, though, was trained on its own chat format, and its tokenizer
carries that format as a Jinja template. cogql renders each tag with it: a tag closes the message
opened by the previous tag and opens a message of its role, so `{:user}Hi{:assistant}[X]` gives
exactly what `apply_chat_template([user: Hi], add_generation_prompt=True)` gives, and X is what
the model answers.

A template is a program over a whole conversation, while a query writes its prompt piece by piece.
So the pieces are found by rendering small conversations around sentinel contents: the text before
and after a message's content, per role. They are then checked by rebuilding a longer conversation
from them; a template whose output does not decompose that way (one that merges the system prompt
into the first user turn, say) is not used, and tags fall back to LMQL's `((role)):` text.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from ..errors import ModelError
from ..tokenizer import Tokenizer
from .chat_template import render_chat

if TYPE_CHECKING:
    from .interpreter import QueryRun

log = logging.getLogger("cogql.runtime")

ROLES = ("system", "user", "assistant")
_SENTINELS = ("cogqlsentinelalpha", "cogqlsentinelbeta", "cogqlsentinelgamma", "cogqlsentineldelta")


class ChatTemplateError(ModelError, ValueError):
    """A chat template whose output cannot be split into per-message pieces."""


@dataclass(frozen=True)
class ChatFormat:
    """The pieces of a chat template: what goes before a message's content and after it."""

    first: dict[str, str]  # before the content of a conversation's first message, per role
    prefix: dict[str, str]  # before the content of any later message, per role
    suffix: dict[str, str]  # after a message's content, per role
    answer: str  # the generation prompt: opens the assistant message the model writes
    bos_text: str | None  # the BOS token's text (a template may write it itself)
    # openings that differ after one particular role: Gemma writes the system prompt at the
    # start of the first user turn, so a user message after it opens with nothing
    follows: dict[tuple[str, str], str] = field(default_factory=dict)

    def opening(
        self, role: str, previous: str | None, at_start: bool, *, answer: bool = True
    ) -> str | None:
        """Text for a `{:role}` tag: closes `previous` (the role of the open message) and opens
        `role`; None for a role the template was not asked about (LMQL allows any name)."""
        if role not in self.prefix:
            return None
        if at_start and previous is None:
            return self.first[role]
        close = self.suffix.get(previous, "") if previous is not None else ""
        if role == "assistant" and answer:
            return close + self.answer
        return close + self.follows.get((previous or "", role), self.prefix[role])


def text_tag(role: str, at_start: bool) -> str:
    """LMQL's rendering of a tag for models without chat roles."""
    return f"(({role})):" if at_start else f"\n(({role})):"


_formats: weakref.WeakKeyDictionary[Tokenizer, ChatFormat | None] = weakref.WeakKeyDictionary()


def chat_format(tokenizer: Tokenizer) -> ChatFormat | None:
    """The tokenizer's chat format, derived once; None without a (usable) template."""
    if tokenizer not in _formats:
        _formats[tokenizer] = _derive_or_none(tokenizer)
    return _formats[tokenizer]


def _derive_or_none(tokenizer: Tokenizer) -> ChatFormat | None:
    if not tokenizer.chat_template:
        return None
    try:
        return derive(_Renderer(tokenizer))
    except ChatTemplateError as e:
        log.warning(
            "the chat template of %s cannot be split into messages (%s); "
            "role tags are written as ((role)): text",
            tokenizer.name,
            e,
        )
        return None


class _Renderer:
    """Renders conversations with the tokenizer's template (as transformers would)."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        bos = tokenizer.bos_token_id
        self.bos_text = tokenizer.backend.id_to_token(bos) if bos is not None else None
        self.trailer = ""
        self.trailer = self._trailer()

    def _trailer(self) -> str:
        """Text a template writes after every conversation, asked for a generation prompt or
        not (Llama 3 base's opens an assistant turn either way): it is the generation prompt,
        so renders without one leave it out."""
        one = [("user", _SENTINELS[1])]
        if self(one) != self(one, generation=True):
            return ""
        renders = [self(one), self([*one, ("assistant", _SENTINELS[2])])]
        contents = _SENTINELS[1:3]
        after_content = [
            len(r) - r.rfind(c) - len(c) for r, c in zip(renders, contents, strict=True)
        ]
        tail = renders[0][len(renders[0]) - min(after_content) :]
        while tail and not all(r.endswith(tail) for r in renders):
            tail = tail[1:]
        return tail

    def __call__(self, messages: list[tuple[str, str]], generation: bool = False) -> str:
        out = self._render(messages, generation)
        if self.trailer and not generation:
            if not out.endswith(self.trailer):
                raise ChatTemplateError("the template's closing text is not always the same")
            out = out[: -len(self.trailer)]
        return out

    def _render(self, messages: list[tuple[str, str]], generation: bool) -> str:
        convo = [{"role": r, "content": c} for r, c in messages]
        try:
            out: Any = render_chat(self.tokenizer, convo, add_generation_prompt=generation)
        except Exception as e:  # templates raise anything (raise_exception, type errors)
            raise ChatTemplateError(f"rendering {[r for r, _ in messages]} failed: {e}") from None
        if not isinstance(out, str):
            raise ChatTemplateError("the template did not render to text")
        return out


def _split(text: str, sentinel: str) -> tuple[str, str]:
    before, found, after = text.partition(sentinel)
    if not found or sentinel in after:
        raise ChatTemplateError("a message's content does not appear exactly once")
    return before, after


def _continuation(render: _Renderer, role: str) -> tuple[str, str]:
    """Prefix and suffix of a `role` message that follows earlier ones. Templates differ in
    what they accept before it (no system role, strictly alternating turns), so a few
    conversations are tried."""
    bases = [[("system", _SENTINELS[0])], [("user", _SENTINELS[0])]]
    bases.append([("user", _SENTINELS[0]), ("assistant", _SENTINELS[1])])
    problem = ChatTemplateError(f"no {role} role")
    for base in bases:
        try:
            head = render(base)
            full = render([*base, (role, _SENTINELS[3])])
            if not full.startswith(head):
                raise ChatTemplateError(f"a {role} message changes how earlier messages render")
            before, after = _split(full[len(head) :], _SENTINELS[3])
            if any(s in before + after for s in _SENTINELS):
                raise ChatTemplateError(f"a {role} message merges with the one before it")
            return before, after
        except ChatTemplateError as e:
            problem = e
    raise problem


def derive(render: _Renderer) -> ChatFormat:
    """Find the per-role pieces and check them against a rendered conversation. A role the
    template rejects (some have no system role) is left out: its tags become text."""
    first: dict[str, str] = {}
    prefix: dict[str, str] = {}
    suffix: dict[str, str] = {}
    for role in ROLES:
        try:
            prefix[role], suffix[role] = _continuation(render, role)
        except ChatTemplateError as e:
            log.debug("chat template: no %s role (%s)", role, e)
            continue
        try:
            first[role], _ = _split(render([(role, _SENTINELS[1])]), _SENTINELS[1])
        except ChatTemplateError:  # e.g. a conversation may not start with it
            first[role] = prefix[role]
    if "user" not in prefix or "assistant" not in prefix:
        raise ChatTemplateError("the template has no user or no assistant role")
    if "system" in prefix and not _renders(render, [("system", "a"), ("user", "b")]):
        del prefix["system"], first["system"]  # it may not open a conversation
    fmt = ChatFormat(first, prefix, suffix, _answer(render), render.bos_text)
    try:
        _check(render, fmt)
    except ChatTemplateError:
        if "system" not in prefix:
            raise
        fmt = _system_in_first_turn(render, fmt)
        _check(render, fmt)
    return fmt


def _system_in_first_turn(render: _Renderer, fmt: ChatFormat) -> ChatFormat:
    """The format of a template that writes the system prompt inside the first user turn
    (Gemma's): the system message opens that turn, and the user message after it adds only
    the text between the two contents."""
    text = render([("system", _SENTINELS[0]), ("user", _SENTINELS[1])])
    opening, rest = _split(text, _SENTINELS[0])
    between, _ = _split(rest, _SENTINELS[1])
    return ChatFormat(
        {**fmt.first, "system": opening},
        fmt.prefix,
        {**fmt.suffix, "system": between},
        fmt.answer,
        fmt.bos_text,
        {("system", "user"): ""},
    )


def _renders(render: _Renderer, messages: list[tuple[str, str]]) -> bool:
    try:
        render(messages)
    except ChatTemplateError:
        return False
    return True


def _answer(render: _Renderer) -> str:
    """The generation prompt (empty for templates without one). The model answers after it,
    and some templates render it unlike the opening of a finished assistant turn."""
    convo = [("user", _SENTINELS[1])]
    plain = render(convo)
    prompted = render(convo, generation=True)
    if not prompted.startswith(plain):
        raise ChatTemplateError("the generation prompt changes earlier messages")
    return prompted[len(plain) :]


def _check(render: _Renderer, fmt: ChatFormat) -> None:
    convo = [
        ("system", _SENTINELS[0]),
        ("user", _SENTINELS[1]),
        ("assistant", _SENTINELS[2]),
        ("user", _SENTINELS[3]),
    ]
    if "system" not in fmt.prefix:
        convo = convo[1:]
    expected = render(convo, generation=True)
    built, previous = "", None
    for role, content in convo:
        built += (fmt.opening(role, previous, previous is None, answer=False) or "") + content
        previous = role
    built += fmt.opening("assistant", previous, at_start=False) or ""
    if built != expected:
        raise ChatTemplateError("messages rebuilt from their pieces differ from the template's")


def open_message(run: QueryRun, role: str) -> str | None:
    """The text of a `{:role}` tag in `run` rendered with the model's chat template, recording
    the open message's role; None when the template cannot render it (or there is none). A
    chat endpoint's model gets LMQL's marker, which its transport splits into messages."""
    if run.conn.chat_markers:
        run.state.open_chat_message(role)
        return f"<lmql:{role}/>"
    fmt = chat_format(run.conn.tokenizer)
    if fmt is None:
        return None
    at_start = not run.state.text
    opening = fmt.opening(role, run.state.chat_role, at_start)
    if opening is None:
        return None
    if at_start and fmt.bos_text and opening.startswith(fmt.bos_text):
        run.state.omit_bos()  # the template writes BOS itself: one BOS, as apply_chat_template has
    run.state.open_chat_message(role)
    return opening
