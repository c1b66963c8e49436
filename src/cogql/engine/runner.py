"""Forward passes over cache entries; the only code that calls the model.

Passes that serve several streams (a padded prefill, a batched decode step) report failures
per entry: when a shared pass fails, each entry is retried on its own, so a fault that belongs
to one stream (an id the model chokes on, a pass too large for memory) fails that stream only.
"""

from __future__ import annotations

import functools
import logging

import torch

from ..grammar import common_prefix
from .batch import DecodeBatch
from .kvcache import (
    CacheEntry,
    PrefixCache,
    full_cache,
    has_sliding_layers,
    left_padded,
)
from .lm import as_causal_lm
from .models import LoadedModel
from .scheduler import length_groups

log = logging.getLogger("cogql.engine")

Outcome = Exception | None  # per entry: the error that failed it, or None


class ModelRunner:
    def __init__(self, loaded: LoadedModel, cache: PrefixCache) -> None:
        self.model = as_causal_lm(loaded.model)
        decode = loaded.decode_model
        self.decode_model = as_causal_lm(decode) if decode is not None else None
        self.device = loaded.device
        self.cache = cache
        self.tokens = usable_tokens(loaded)
        copies = [functools.partial(loaded.decode_copy, d) for d in loaded.decode_dtypes]
        self.batch = DecodeBatch([*copies, lambda: loaded.model], self.tokens)

    # ---- prompts ------------------------------------------------------------------------

    def reuse(self, prompt: list[int]) -> CacheEntry:
        """The cache's best entry for `prompt`, cut to the part it shares; at least the last
        token is left to compute, unless the entry holds exactly `prompt` and its logits."""
        entry = self.cache.acquire(prompt)
        shared = common_prefix(entry.ids, prompt)
        if not (shared == len(prompt) == len(entry.ids) and entry.logits is not None):
            entry.crop(min(shared, len(prompt) - 1))
        return entry

    def reuse_many(self, prompts: list[list[int]]) -> list[CacheEntry]:
        """`reuse` for prompts that start together: the prompts that the cache serves best
        choose first, so a short shared start (BOS) does not take the entry another prompt
        shares much more with."""
        order = sorted(range(len(prompts)), key=lambda i: -self.cache.longest_prefix(prompts[i]))
        reused = {i: self.reuse(prompts[i]) for i in order}
        return [reused[i] for i in range(len(prompts))]

    def prepare(self, prompt: list[int]) -> CacheEntry:
        """An entry holding exactly `prompt`, with next-token logits, reusing the best prefix."""
        if not prompt:
            raise ValueError("the prompt is empty: send at least one token (e.g. BOS)")
        entry = self.reuse(prompt)
        if len(entry.ids) < len(prompt):
            self.forward(entry, prompt[len(entry.ids) :])
        return entry

    def prepare_many(self, prompts: list[list[int]]) -> list[CacheEntry] | None:
        """`prepare` for several prompts, the tokens the cache lacks computed together (the
        exact model, as for one prompt); None, with the cache untouched, when a prompt is empty
        or holds an id the model does not have."""
        vocab = self.model.get_input_embeddings().num_embeddings
        if not all(p and min(p) >= 0 and max(p) < vocab for p in prompts):
            return None
        entries = self.reuse_many(prompts)
        tails = [p[len(e.ids) :] for p, e in zip(prompts, entries, strict=True)]
        todo = [i for i, tail in enumerate(tails) if tail]
        outcomes = self.extend([entries[i] for i in todo], [tails[i] for i in todo])
        if (error := next((e for e in outcomes if e is not None), None)) is not None:
            raise error
        return entries

    def extend(self, entries: list[CacheEntry], tails: list[list[int]]) -> list[Outcome]:
        """Feed each entry its tail (prompt tokens, the exact model), entries of similar length
        in one padded pass; sets each entry's logits after its tail. An entry that failed is
        left in an undefined state: drop it."""
        outcomes: list[Outcome] = [None] * len(entries)
        for group in self._prefill_groups(entries, tails):
            if len(group) > 1 and not (
                # a padded pass puts pads between a short tail and its entry, and a sliding
                # window counts them as positions: such models extend each entry on its own
                has_sliding_layers(self.model.config) and len({len(tails[i]) for i in group}) > 1
            ):
                try:
                    self._extend_together([entries[i] for i in group], [tails[i] for i in group])
                    continue
                except Exception:  # retried one by one below, to find whose it is
                    log.warning(
                        "a padded prefill of %d prompts failed; each runs alone", len(group)
                    )
            for i in group:
                outcomes[i] = self._alone(entries[i], tails[i])
        return outcomes

    def _prefill_groups(self, entries: list[CacheEntry], tails: list[list[int]]) -> list[list[int]]:
        """Rows padded together pad both what they compute (their tails) and what they attend
        to (cache plus tail): both are grouped by length."""
        groups = []
        for by_tail in length_groups([len(t) for t in tails]):
            totals = [len(entries[i].ids) + len(tails[i]) for i in by_tail]
            groups += [[by_tail[j] for j in g] for g in length_groups(totals)]
        return groups

    def _alone(self, entry: CacheEntry, ids: list[int], *, decoding: bool = False) -> Outcome:
        """`forward` on its own, its failure returned (logged) rather than raised."""
        try:
            self.forward(entry, ids, decoding=decoding)
        except Exception as e:
            log.exception("a forward pass failed")
            return e
        return None

    # ---- decoding -----------------------------------------------------------------------

    def decode(self, entries: list[CacheEntry], tokens: list[list[int]]) -> list[Outcome]:
        """Advance every entry by its tokens: one-token steps of entries with similar lengths
        share one batched pass; multi-token steps (grammar-forced runs) run on their own."""
        outcomes: list[Outcome] = [None] * len(entries)
        singles = [i for i, t in enumerate(tokens) if len(t) == 1]
        for i, run in enumerate(tokens):
            if len(run) != 1:
                outcomes[i] = self._alone(entries[i], tokens[i], decoding=True)
        for group in length_groups([len(entries[i].ids) for i in singles]):
            rows = [singles[j] for j in group]
            if len(rows) > 1:
                try:
                    self.batch.step([entries[i] for i in rows], [tokens[i][0] for i in rows])
                    continue
                except Exception:  # retried one by one below, to find whose it is
                    log.warning(
                        "a batched decode step of %d rows failed; each runs alone", len(rows)
                    )
            for i in rows:
                outcomes[i] = self._alone(entries[i], tokens[i], decoding=True)
        self.batch.retire()
        return outcomes

    def forward(
        self, entry: CacheEntry, new_ids: list[int], keep: int = 1, *, decoding: bool = False
    ) -> torch.Tensor:
        """Feed `new_ids` after `entry.ids`; returns logits of the last `keep` positions.
        Only decode steps (`decoding`, one token) may use the faster, less exact decode copy:
        a prompt's logits must not depend on whether its last token was cached."""
        model = self.model
        if decoding and len(new_ids) == 1 and self.decode_model is not None:
            model = self.decode_model
        if entry.past is None:
            entry.past = full_cache(model.config)
        else:
            entry.cast(model.dtype)
        ids = torch.tensor([new_ids], dtype=torch.long, device=self.device)
        out = model(input_ids=ids, past_key_values=entry.past, use_cache=True, logits_to_keep=keep)
        entry.ids.extend(new_ids)
        logits = out.logits[0, :, : self.tokens].float()
        entry.logits = logits[-1]
        return logits

    def _extend_together(self, entries: list[CacheEntry], tails: list[list[int]]) -> None:
        """Feed each entry its tail in one pass: row i is [pad, entry i's keys/values, pad,
        tail i], so every tail ends in the last column and its logits are the last ones."""
        for entry in entries:
            entry.cast(self.model.dtype)
        width, k = max(len(e.ids) for e in entries), max(len(t) for t in tails)
        rows = len(entries)
        mask = torch.zeros(rows, width + k, dtype=torch.long)
        ids = torch.zeros(rows, k, dtype=torch.long)
        positions = torch.zeros(rows, k, dtype=torch.long)
        for i, (entry, tail) in enumerate(zip(entries, tails, strict=True)):
            held = len(entry.ids)
            mask[i, width - held : width] = 1
            mask[i, width + k - len(tail) :] = 1
            ids[i, k - len(tail) :] = torch.tensor(tail)
            positions[i, k - len(tail) :] = torch.arange(held, held + len(tail))
        past = full_cache(self.model.config, left_padded(entries, width))
        out = self.model(
            input_ids=ids.to(self.device),
            attention_mask=mask.to(self.device),
            position_ids=positions.to(self.device),
            past_key_values=past,
            use_cache=True,
            logits_to_keep=1,
        )
        logits = out.logits[:, -1, : self.tokens].float()
        keeps = mask.bool().to(self.device)
        for i, (entry, tail) in enumerate(zip(entries, tails, strict=True)):
            keep = keeps[i]
            kv = [(x.keys[i : i + 1, :, keep], x.values[i : i + 1, :, keep]) for x in past.layers]
            entry.past = full_cache(self.model.config, kv)
            entry.ids.extend(tail)
            entry.logits = logits[i]

    # ---- scoring ------------------------------------------------------------------------

    def score_group(self, prompt: list[int], options: list[list[int]]) -> list[list[float]]:
        """Log-probs of each option's tokens after one shared prompt."""
        entry = self.prepare(prompt)
        try:
            return self.score(entry, options)
        finally:
            self.cache.release(entry)

    def score(self, entry: CacheEntry, options: list[list[int]]) -> list[list[float]]:
        """Log-probs of each option's tokens after `entry` (which holds a whole prompt and its
        next-token logits), the options' later tokens in one batched pass."""
        assert entry.logits is not None
        first = torch.log_softmax(entry.logits, -1)
        results = [[float(first[opt[0]])] for opt in options]
        longer = [i for i, opt in enumerate(options) if len(opt) > 1]
        if longer:
            self._score_tails(entry, [options[i] for i in longer], [results[i] for i in longer])
        return results

    def _score_tails(self, entry: CacheEntry, options: list[list[int]], out: list[list[float]]):
        width = max(len(o) - 1 for o in options)
        rows = torch.tensor([o[:-1] + [0] * (width - len(o) + 1) for o in options])
        entry.cast(self.model.dtype)
        n = len(options)
        rows_kv = [
            (_repeat(layer.keys, n), _repeat(layer.values, n)) for layer in entry.past.layers
        ]
        past = full_cache(self.model.config, rows_kv)
        logits = self.model(input_ids=rows.to(self.device), past_key_values=past, use_cache=True)
        logprobs = torch.log_softmax(logits.logits[..., : self.tokens].float(), -1)
        for r, opt in enumerate(options):
            for j, tok in enumerate(opt[1:]):
                out[r].append(float(logprobs[r, j, tok]))


def usable_tokens(loaded: LoadedModel) -> int:
    """How many ids the engine may choose: those both the model and its tokenizer have. Models
    pad their embeddings past the tokenizer (Gemma 3: 262,208 rows for 262,145 tokens, Qwen 3:
    151,936 for 151,669); those rows have no text, so they must never be generated."""
    config = getattr(loaded.model, "config", None)
    rows = getattr(config, "vocab_size", None) or loaded.tokenizer.vocab_size
    return min(rows, loaded.tokenizer.vocab_size)


def _repeat(t: torch.Tensor, n: int) -> torch.Tensor:
    """One copy of a batch-1 cache tensor per option row."""
    return t.expand(n, -1, -1, -1).contiguous()
