"""Prompt strings ("qstrings"): literal text, `[HOLES]`, `{interpolations}` and `{:role}` tags."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from ..errors import QueryError

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")


class QStringError(QueryError, ValueError):
    """A malformed prompt string; the compiler adds the line and column, finding `fragment`
    (the offending text, e.g. the hole) in the query's source."""

    def __init__(self, message: str, fragment: str | None = None) -> None:
        super().__init__(message)
        self.fragment = fragment


@dataclass(frozen=True)
class Text:
    text: str


@dataclass(frozen=True)
class Hole:
    name: str
    type_expr: str | None = None
    decorators: tuple[str, ...] = ()
    index: int = 0


@dataclass(frozen=True)
class Interpolation:
    expr: str


@dataclass(frozen=True)
class Tag:
    role: str


Segment = Text | Hole | Interpolation | Tag


@dataclass
class _Scanner:
    s: str
    out: list[Segment] = field(default_factory=list)
    buf: list[str] = field(default_factory=list)
    holes: int = 0

    def flush(self) -> None:
        if self.buf:
            self.out.append(Text("".join(self.buf)))
            self.buf.clear()


def _closing(s: str, start: int, open_ch: str, close_ch: str) -> int:
    """Index of the bracket closing s[start] (== open_ch), skipping nested pairs and quotes."""
    depth = 0
    quote: str | None = None
    i = start
    while i < len(s):
        ch = s[i]
        if quote:
            if ch == "\\":
                i += 1
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
        elif ch in "([{":
            depth += 1
        elif ch in ")]}":
            depth -= 1
            if depth == 0:
                if ch != close_ch:
                    raise QStringError(f"mismatched '{ch}' in {s[start : i + 1]!r}")
                return i
        i += 1
    raise QStringError(f"unclosed '{open_ch}' in prompt string: {s[start:]!r}")


def _split_decorators(content: str) -> tuple[list[str], str]:
    decorators: list[str] = []
    rest = content.lstrip()
    while rest.startswith("@"):
        depth, i = 0, 1
        while i < len(rest) and (depth > 0 or not rest[i].isspace()):
            depth += rest[i] in "([{"
            depth -= rest[i] in ")]}"
            i += 1
        decorators.append(rest[1:i])
        rest = rest[i:].lstrip()
    return decorators, rest


def parse_hole(content: str, index: int) -> Hole | None:
    """Parse the inside of `[...]`; None for an empty hole (LMQL drops those)."""
    decorators, rest = _split_decorators(content)
    if not rest.strip():
        return None
    m = _IDENT.match(rest)
    if m is None:
        raise QStringError(f"malformed hole [{content}]: expected a variable name, e.g. [ANSWER]")
    name, tail = m.group(0), rest[m.end() :].strip()
    type_expr = None
    if tail.startswith(":"):
        type_expr = tail[1:].strip()
        if not type_expr:
            raise QStringError(f"malformed hole [{content}]: expected a type after ':'")
    elif _IDENT.match(tail):
        raise QStringError(
            f"malformed hole [{content}]: per-variable decoders ([decoder VAR]) are not supported"
        )
    elif tail:
        raise QStringError(f"malformed hole [{content}]: unexpected {tail!r} after the name")
    return Hole(name, type_expr, tuple(decorators), index)


def _bracket(sc: _Scanner, i: int) -> int:
    s = sc.s
    if s.startswith("[[", i):
        sc.buf.append("[")
        return i + 2
    try:
        end = _closing(s, i, "[", "]")
        hole = parse_hole(s[i + 1 : end], sc.holes)
    except QStringError as e:
        e.fragment = e.fragment or s[i:].split("\n", 1)[0]
        raise
    if hole is not None:
        sc.flush()
        sc.out.append(hole)
        sc.holes += 1
    return end + 1


def _brace(sc: _Scanner, i: int, interpolate: bool) -> int:
    s = sc.s
    if s.startswith("{{", i):
        sc.buf.append("{")
        return i + 2
    if not interpolate:
        sc.buf.append("{")
        return i + 1
    try:
        end = _closing(s, i, "{", "}")
    except QStringError as e:
        e.fragment = s[i:].split("\n", 1)[0]
        raise
    inner = s[i + 1 : end]
    sc.flush()
    if inner.startswith(":"):
        sc.out.append(Tag(inner[1:].strip()))
    elif not inner.strip():
        raise QStringError(
            "empty interpolation {} in prompt string: write {{}} for literal braces", s[i : end + 1]
        )
    else:
        sc.out.append(Interpolation(inner))
    return end + 1


def parse_qstring(s: str, *, interpolate: bool = True) -> list[Segment]:
    """Split one prompt string into segments, in order."""
    sc = _Scanner(s)
    i = 0
    while i < len(s):
        ch = s[i]
        if ch == "[":
            i = _bracket(sc, i)
        elif ch == "]":
            sc.buf.append("]")
            i += 2 if s.startswith("]]", i) else 1
        elif ch == "{":
            i = _brace(sc, i, interpolate)
        elif ch == "}":
            sc.buf.append("}")
            i += 2 if s.startswith("}}", i) else 1
        else:
            sc.buf.append(ch)
            i += 1
    sc.flush()
    return sc.out
