"""Split LMQL source into its clauses: prologue, decoder, prompt, from, where, distribution.

Spans are kept as offsets into the original source so that every later error can point at the
user's own line and column.
"""

from __future__ import annotations

import io
import tokenize
from dataclasses import dataclass, field

from .errors import QuerySyntaxError

DECODER_NAMES = frozenset(
    {"argmax", "sample", "best_k", "beam_sample", "beam_search", "beam", "beam_var", "bsseq", "var"}
)
_SKIP = {tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT}
_CLAUSE_KEYWORDS = ("from", "where", "distribution")
# the last token of a string literal (Python 3.12 tokenizes f-strings into pieces)
_STRING_ENDS = {tokenize.STRING} | {getattr(tokenize, "FSTRING_END", tokenize.STRING)}


@dataclass
class Span:
    start: int
    end: int


@dataclass
class Clauses:
    source: str
    prologue: Span | None = None
    decoder: Span | None = None
    prompt: Span | None = None
    model: Span | None = None
    where: Span | None = None
    distribution: Span | None = None
    # prompt-local keyword spans to rewrite: (span, replacement) for inline where/distribution
    inline_keywords: list[tuple[Span, str]] = field(default_factory=list)

    def text(self, span: Span | None) -> str:
        return "" if span is None else self.source[span.start : span.end]


class _Offsets:
    def __init__(self, source: str) -> None:
        self.line_starts = [0]
        for i, ch in enumerate(source):
            if ch == "\n":
                self.line_starts.append(i + 1)

    def __call__(self, pos: tuple[int, int]) -> int:
        row, col = pos
        return self.line_starts[row - 1] + col


def _tokens(source: str) -> list[tokenize.TokenInfo]:
    try:
        return [
            t
            for t in tokenize.generate_tokens(io.StringIO(source).readline)
            if t.type != tokenize.ENDMARKER
        ]
    except tokenize.TokenError as e:
        msg, (row, col) = e.args
        if "string" in msg:
            msg = "unterminated string: a prompt string is not closed"
        raise QuerySyntaxError(msg, source=source, lineno=row, col=col) from None
    except (IndentationError, SyntaxError) as e:
        raise QuerySyntaxError(
            e.msg, source=source, lineno=e.lineno or 1, col=(e.offset or 1) - 1
        ) from None


def _is_line_start(tokens: list[tokenize.TokenInfo], i: int) -> bool:
    j = i - 1
    while j >= 0 and tokens[j].type in (tokenize.INDENT, tokenize.DEDENT, tokenize.COMMENT):
        j -= 1
    return j < 0 or tokens[j].type in (tokenize.NEWLINE, tokenize.NL)


def _is_decoder_token(tokens: list[tokenize.TokenInfo], i: int) -> bool:
    tok = tokens[i]
    if tok.type != tokenize.NAME or tok.string.lower() not in DECODER_NAMES:
        return False
    if not _is_line_start(tokens, i):
        return False
    nxt = tokens[i + 1] if i + 1 < len(tokens) else None
    return not (nxt is not None and nxt.type == tokenize.OP and nxt.string in ("=", ".", ","))


def _keyword(tok: tokenize.TokenInfo) -> str | None:
    if tok.type == tokenize.NAME and tok.string.lower() in _CLAUSE_KEYWORDS:
        return tok.string.lower()
    return None


def split_clauses(source: str) -> Clauses:
    """Assign the tokens of `source` to clauses, following LMQL's clause grammar."""
    tokens = _tokens(source)
    off = _Offsets(source)
    out = Clauses(source)
    state = "start"
    starts: dict[str, int] = {}
    depth = 0
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        kw = _keyword(tok)
        if state == "start":
            if _is_decoder_token(tokens, i):
                starts["prologue_end"] = off(tok.start)
                starts["decoder"] = off(tok.start)
                state = "decoder"
                continue
            elif kw is not None:
                starts["prompt"] = 0
                state = "prompt"
                continue
        elif state == "decoder":
            if tok.type == tokenize.OP and tok.string in "([{":
                depth += 1
            elif tok.type == tokenize.OP and tok.string in ")]}":
                depth -= 1
            nxt = tokens[i + 1] if i + 1 < len(tokens) else None
            opens_args = nxt is not None and nxt.type == tokenize.OP and nxt.string == "("
            if depth == 0 and not (tok.type == tokenize.NAME and opens_args):
                starts["decoder_end"] = off(tok.end)
                state = "prompt"
        elif state == "prompt":
            if "prompt" not in starts and tok.type not in _SKIP:
                starts["prompt"] = off(tok.start)
            if kw is not None:
                prev = tokens[i - 1] if i > 0 else None
                inline = prev is not None and prev.type in _STRING_ENDS and kw != "from"
                if inline:
                    repl = "and" if kw == "where" else "or"
                    span = Span(off(tok.start), off(tok.end))
                    out.inline_keywords.append((span, repl.ljust(span.end - span.start)))
                else:
                    starts["prompt_end"] = off(tok.start)
                    starts[kw] = off(tok.end)
                    state = kw
        elif kw is not None and _CLAUSE_KEYWORDS.index(kw) > _CLAUSE_KEYWORDS.index(state):
            starts[f"{state}_end"] = off(tok.start)
            starts[kw] = off(tok.end)
            state = kw
        elif kw is not None:
            raise QuerySyntaxError(
                f"unexpected '{tok.string}' clause: clauses go in the order from, where, distribution",
                source=source,
                lineno=tok.start[0],
                col=tok.start[1],
            )
        i += 1
    end = len(source)
    if state == "start":
        out.prompt = Span(0, end)
        return out
    if "prologue_end" in starts and starts["prologue_end"] > 0:
        out.prologue = Span(0, starts["prologue_end"])
    if "decoder" in starts:
        out.decoder = Span(starts["decoder"], starts.get("decoder_end", end))
    if "prompt" in starts:
        out.prompt = Span(starts["prompt"], starts.get("prompt_end", end))
    for name in _CLAUSE_KEYWORDS:
        if name in starts:
            span = Span(starts[name], starts.get(f"{name}_end", end))
            setattr(out, "model" if name == "from" else name, span)
    return out
