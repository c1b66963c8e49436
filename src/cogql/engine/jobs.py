"""The units of work the engine schedules: a GENERATE stream and a group of SCOREs that share
a prompt. Both first need their prompt computed (chunk by chunk, see engine/scheduler.py);
then a stream decodes token by token and a score group runs one scoring pass."""

from __future__ import annotations

from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from ..grammar import GrammarMatcher
from ..lmtp.messages import Generate, Score
from .kvcache import CacheEntry
from .protocol import StreamHandle
from .sink import Sink


@dataclass(eq=False, kw_only=True)
class Job:
    """A prompt being computed: the cache entry so far and the tokens it still lacks (None
    until the job is admitted and has taken its entry from the prefix cache)."""

    entry: CacheEntry | None = None
    left: list[int] | None = None
    idle: int = 0  # turns in a row it waited for prefill without getting any

    @property
    def prompt(self) -> list[int]:
        raise NotImplementedError

    @property
    def admitted_entry(self) -> CacheEntry:
        """`entry`, for a job that was admitted (as every job with tokens left to compute or
        to feed is)."""
        if self.entry is None:
            raise RuntimeError("a job that was never admitted has no cache entry")
        return self.entry

    @property
    def prefilled(self) -> bool:
        return self.left is not None and not self.left


@dataclass(eq=False)
class GenerateStream(Job):
    op: Generate
    sink: Sink
    handle: StreamHandle
    limit: int = 0  # max_tokens, capped by the room the model's context leaves
    grammar: Future[GrammarMatcher] | None = None  # compiling; `matcher` once compiled
    grammar_deadline: float = 0.0
    matcher: GrammarMatcher | None = None
    generator: torch.Generator | None = None
    produced: int = 0
    text: bytearray = field(default_factory=bytearray)
    stops: list[bytes] = field(default_factory=list)
    feed: list[int] = field(default_factory=list)  # chosen tokens the model has not seen yet
    started: bool = False
    tokens: list[int] = field(default_factory=list)  # generated, a final EOS left out
    ended: bool = False  # reached a finish reason (not cancelled, not failed)
    then: list[tuple[Score, StreamHandle] | GenerateStream] = field(default_factory=list)

    @property
    def prompt(self) -> list[int]:
        return self.op.prompt

    @property
    def cancelled(self) -> bool:
        return self.handle.cancelled


@dataclass(eq=False)
class ScoreJob(Job):
    """SCOREs that arrived together with the same prompt: one prefill, one scoring pass."""

    ids: list[int]
    ops: list[tuple[Score, StreamHandle]]
    sink: Sink

    @property
    def prompt(self) -> list[int]:
        return self.ids

    @property
    def cancelled(self) -> bool:
        return all(handle.cancelled for _, handle in self.ops)
