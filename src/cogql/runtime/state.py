"""The state of a running query: its prompt (token ids and text), where its holes end, its
log-prob and model calls.

One object owns these so that their invariants hold in one place: `text` is what the ids
spell (program text not yet tokenized waits as pending text, tokenized together at the next
flush, so that it splits into tokens as the model would split it); a hole's end is a position
in the ids. A nested query's program writes into its parent's state (the same object), framed
by `mark` and `rewind` when its text must leave the prompt again.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..tokenizer import Tokenizer


@dataclass(frozen=True)
class Mark:
    """A point in the prompt to rewind to (`RunState.rewind`)."""

    ids: int
    text: int
    holes: int


class RunState:
    """Prompt, hole ends, log-prob and call count of a run, and the few ways they change."""

    def __init__(self, tokenizer: Tokenizer, bos_token_id: int | None) -> None:
        self._tokenizer = tokenizer
        self._bos = bos_token_id
        self._ids: list[int] = [bos_token_id] if bos_token_id is not None else []
        self._text = ""
        self._pending = ""  # program text appended but not tokenized yet
        self._hole_ends: list[int] = []  # len(ids) after each filled hole
        self._logprob = 0.0  # sum of the generated tokens' log-probs
        self._calls = 0
        self._generated = 0  # holes generated so far (each has its own sampling seed)
        self._truncated = False  # max_len cut a hole short
        self._chat_role: str | None = None  # role of the chat message the last tag opened

    # ---- reading --------------------------------------------------------------------------
    @property
    def text(self) -> str:
        """The prompt so far: program text and values (no BOS)."""
        return self._text

    @property
    def ids(self) -> list[int]:
        """The token ids of the whole prompt so far, program text included (a copy)."""
        self._flush()
        return list(self._ids)

    @property
    def token_count(self) -> int:
        """The number of token ids in the prompt, program text included."""
        self._flush()
        return len(self._ids)

    @property
    def logprob(self) -> float:
        return self._logprob

    @property
    def calls(self) -> int:
        """The model calls made so far."""
        return self._calls

    @property
    def holes_filled(self) -> int:
        return len(self._hole_ends)

    def hole_end(self, k: int) -> int:
        """Where hole number `k` (in the order they were filled) ends in the ids."""
        return self._hole_ends[k]

    @property
    def generated_holes(self) -> int:
        """The holes the model generated so far (not those a decorator or nested query
        filled): the next one's sampling seed follows from it."""
        return self._generated

    @property
    def truncated(self) -> bool:
        return self._truncated

    @property
    def chat_role(self) -> str | None:
        """The role of the chat message the last `{:role}` tag opened."""
        return self._chat_role

    # ---- appending ------------------------------------------------------------------------
    def append_text(self, text: str) -> None:
        """Program text: tokenized with the program text next to it, at the next flush."""
        self._text += text
        self._pending += text

    def append_tokens(self, tokens: list[int], text: str) -> None:
        """Tokens the model generated (or a decoder decided) and the text they stand for."""
        self._flush()
        self._ids.extend(tokens)
        self._text += text

    def append_encoded(self, text: str) -> None:
        """A value's text, tokenized on its own (not merged with the program text around it)."""
        self.append_tokens(self._tokenizer.encode(text), text)

    def end_hole(self, generated: bool = False) -> None:
        """A hole was filled (by the model when `generated`): it ends here."""
        self._flush()
        self._hole_ends.append(len(self._ids))
        self._generated += generated

    def truncate(self) -> None:
        """Record that max_len cut a hole short."""
        self._truncated = True

    def open_chat_message(self, role: str) -> None:
        self._chat_role = role

    def omit_bos(self) -> None:
        """Start the prompt without the BOS id: a chat template writes it as text."""
        if self._ids == [self._bos] and not self._text:
            self._ids.clear()

    def add_logprob(self, logprob: float) -> None:
        self._logprob += logprob

    def count_call(self) -> None:
        self._calls += 1

    # ---- mark and rewind ------------------------------------------------------------------
    def mark(self) -> Mark:
        """This point in the prompt, at a token boundary."""
        self._flush()
        return Mark(len(self._ids), len(self._text), len(self._hole_ends))

    def text_since(self, mark: Mark) -> str:
        return self._text[mark.text :]

    def rewind(self, mark: Mark, replacement: str) -> None:
        """Replace what the prompt gained since `mark` by `replacement` (tokenized on its own);
        holes filled since then end where it ends."""
        del self._ids[mark.ids :]
        self._text = self._text[: mark.text]
        self._pending = ""
        self.append_encoded(replacement)
        for k in range(mark.holes, len(self._hole_ends)):
            self._hole_ends[k] = len(self._ids)

    # ---- internals ------------------------------------------------------------------------
    def _flush(self) -> None:
        if self._pending:
            start = all(t == self._bos for t in self._ids)  # the prompt's first text
            self._ids.extend(self._tokenizer.encode(self._pending, start=start))
            self._pending = ""
