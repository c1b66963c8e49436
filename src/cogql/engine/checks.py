"""Why an engine cannot run an op, said plainly before the model sees it (a model would
raise a bare IndexError, vLLM a traceback): every engine and every host answers alike."""

from __future__ import annotations

from ..grammar import GrammarError
from ..lmtp.messages import Generate, Op, Score, op_kind


def op_problem(
    op: Op, vocab_size: int, context_length: int | None, max_grammar_bytes: int
) -> str | None:
    """The reason `op` cannot run, or None."""
    if not isinstance(op, Generate | Score):
        return None
    if isinstance(op, Score) and not op.scored:
        return "SCORE needs at least one token in 'scored'"
    if not op.prompt and op.after is None:
        return "the prompt is empty: send at least one token (e.g. BOS)"
    ids = op.prompt + op.scored if isinstance(op, Score) else op.prompt
    bad = sorted({t for t in ids if not 0 <= t < vocab_size})
    if isinstance(op, Generate):
        bad += sorted(t for t in op.logit_bias if not 0 <= t < vocab_size)
    if bad:
        return f"token ids outside the vocabulary (size {vocab_size}): {bad[:5]}"
    if isinstance(op, Generate) and op.grammar:
        size = len(op.grammar.encode())
        if size > max_grammar_bytes:
            return (
                f"the grammar is {size} bytes, over this engine's limit of "
                f"{max_grammar_bytes} bytes: constrain with a smaller grammar (e.g. "
                "fewer alternatives in an `in` list)"
            )
    return too_long(op, context_length)


def too_long(op: Generate | Score, context_length: int | None) -> str | None:
    """The reason `op` does not fit the model's context (checked again once an `after`
    chain has given it its full prompt)."""
    if context_length is None:
        return None
    n = len(op.prompt) + (len(op.scored) if isinstance(op, Score) else 0)
    if n > context_length:
        return f"{n} tokens exceed the model's context of {context_length} tokens"
    if isinstance(op, Generate) and n == context_length:
        return (
            f"the prompt fills the model's context of {context_length} tokens, which leaves no "
            "room to generate: shorten the prompt"
        )
    return None


def room(op: Generate, context_length: int | None) -> int:
    """How many tokens `op` may generate: max_tokens, capped by the context left."""
    if context_length is None:
        return op.max_tokens
    return max(min(op.max_tokens, context_length - len(op.prompt)), 0)


def no_leader(op: Generate | Score) -> str:
    """Why an op `after` a stream cannot run: no GENERATE of that id came before it."""
    return f"{op_kind(op)} after={op.after!r} names no GENERATE sent before it"


def grammar_too_slow(timeout_s: float) -> str:
    return (
        f"invalid grammar: it did not compile within {timeout_s:g} s: constrain with a "
        "simpler grammar"
    )


def generate_error(e: Exception) -> str:
    """What a GENERATE that failed while it ran tells its stream."""
    if isinstance(e, GrammarError):
        return f"invalid grammar: {e}"
    return f"failed to generate tokens '{e}'"
