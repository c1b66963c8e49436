"""Decoders on the default model (the weightless random model in the fast tier, SmolLM2 in the
tests marked slow) and the random model by name: argmax (deterministic,
`max_len` truncation with a warning), sample (n results as a list, temperature, seeds that
reproduce), the search decoders beam / beam_sample / best_k (sorted lists, at least as likely as
argmax, whole-sequence scores, constraints held token by token, replayed programs), LMQL's
result shapes (§3.4) and return values, and errors for unknown decoders and arguments."""

from __future__ import annotations

import itertools
import logging

import pytest

import cogql
from cogql.engine.engine import Engine
from cogql.lmtp.client import LMTPClient
from cogql.runtime.hypotheses import ReplayError
from cogql.runtime.query import DecoderError
from cogql.tokenizer import Tokenizer

PROMPT = "Q: Name a color.\\nA:"
PROMPT_TEXT = "Q: Name a color.\nA:"


def query(decoder: str, limit: int = 5) -> str:
    return f'{decoder}\n    "{PROMPT}[X]"\nwhere len(TOKENS(X)) < {limit}'


# --------------------------------------------------------------------------- argmax


def test_argmax_is_deterministic_with_a_cold_and_a_warm_cache(random_engine: Engine) -> None:
    q = query("argmax", limit=8)
    random_engine.call(random_engine.cache.clear).result()
    cold = cogql.run_sync(q)
    warm = cogql.run_sync(q)
    assert isinstance(cold, cogql.LMQLResult)
    assert cold.variables == warm.variables and cold.prompt == warm.prompt
    assert cold.prompt == PROMPT_TEXT + cold.variables["X"]
    assert cold.variables["X"]


def test_argmax_max_len_truncates_gracefully_with_a_warning(
    tokenizer: Tokenizer, caplog: pytest.LogCaptureFixture
) -> None:
    prompt_tokens = 1 + len(tokenizer.encode(PROMPT_TEXT))  # BOS + prompt
    max_len = prompt_tokens + 3
    full = cogql.run_sync(query("argmax", limit=8))["X"]
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        cut = cogql.run_sync(query(f"argmax(max_len={max_len})", limit=8))["X"]
    assert len(tokenizer.encode(cut)) == 3
    assert full.startswith(cut) and len(cut) < len(full)
    assert f"max_len={max_len}" in caplog.text and "truncated" in caplog.text


def test_max_len_below_the_prompt_gives_an_empty_value(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        result = cogql.run_sync(query("argmax(max_len=3)"))
    assert result["X"] == "" and result.prompt == PROMPT_TEXT
    assert "truncated" in caplog.text


def test_a_token_limit_is_not_a_truncation(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        cogql.run_sync(query("argmax", limit=3))
    assert "truncated" not in caplog.text


# --------------------------------------------------------------------------- sample


def test_sample_n_returns_a_list_of_results(tokenizer: Tokenizer) -> None:
    results = cogql.run_sync(query("sample(n=2, temperature=0.7, seed=3)"))
    assert isinstance(results, list) and len(results) == 2
    for r in results:
        assert isinstance(r, cogql.LMQLResult)
        assert r.prompt == PROMPT_TEXT + r["X"]
        assert 1 <= len(tokenizer.encode(r["X"])) <= 4


def test_sample_with_a_seed_is_reproducible() -> None:
    first = cogql.run_sync(query("sample(temperature=0.7, seed=1)"))
    again = cogql.run_sync(query("sample(temperature=0.7, seed=1)"))
    other = cogql.run_sync(query("sample(temperature=0.7, seed=2)"))
    assert first.variables == again.variables
    assert first["X"] != other["X"]  # these two seeds are known to differ on this prompt


def test_seeded_sample_runs_differ_from_each_other_and_reproduce() -> None:
    a = cogql.run_sync(query("sample(n=2, temperature=0.7, seed=1)"))
    b = cogql.run_sync(query("sample(n=2, temperature=0.7, seed=1)"))
    assert [r["X"] for r in a] == [r["X"] for r in b]
    assert a[0]["X"] != a[1]["X"]  # each of the n runs draws its own stream


def test_temperature_as_a_runtime_argument_selects_sampling() -> None:
    q = f'"{PROMPT}[X]" where len(TOKENS(X)) < 5'
    a = cogql.run_sync(q, temperature=0.7, seed=1)
    b = cogql.run_sync(q, decoder="sample", temperature=0.7, seed=1)
    clause = cogql.run_sync(query("sample(temperature=0.7, seed=1)"))
    assert a["X"] == b["X"] == clause["X"]


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("decoder", "message"),
    [
        ("beam_var(n=2)", "decoder 'beam_var' is not supported"),
        ("beam(temperature=0.5)", "Unknown decoder argument: temperature"),
        ("best_k(n=2, kappa=1)", "Unknown decoder argument: kappa"),
        ("beam(n=0)", "n for beam must be a positive integer, got 0"),
        ("best_k(budget=2.5)", "budget for best_k must be a positive integer"),
        ("sample(temperature=-1)", "temperature for sample must be a number >= 0"),
        ("argmax(foo=1)", "Unknown decoder argument: foo"),
        ("sample(bogus=0.5)", "Unknown decoder argument: bogus"),
        ("argmax(temperature=0.5)", "Unknown decoder argument: temperature"),
    ],
)
def test_bad_decoder_or_argument(decoder: str, message: str) -> None:
    with pytest.raises(DecoderError, match=message):
        cogql.run_sync(query(decoder))


def test_lmql_decoder_arguments_are_accepted() -> None:
    """LMQL's extra decoder arguments (chunking, caching, output) are accepted and change
    nothing about an argmax result."""
    plain = cogql.run_sync(query("argmax", limit=3))
    extras = (
        "chunksize=4, openai_chunksize=8, cache=False, verbose=False, show_speculative=False, "
        "step_budget=100, repetition_penalty=1.0, top_k=5, top_p=0.9, max_length=512"
    )
    assert cogql.run_sync(query(f"argmax({extras})", limit=3)).variables == plain.variables


# --------------------------------------------------------------------------- search decoders

TOL = 0.02  # log-probs of the same tokens from different batch shapes differ in rounding


def _check_sorted(results: list[cogql.LMQLResult]) -> None:
    scores = [r.logprob for r in results]
    assert all(isinstance(s, float) for s in scores)
    assert scores == sorted(scores, reverse=True)


def test_beam_returns_a_sorted_list_at_least_as_likely_as_argmax(tokenizer: Tokenizer) -> None:
    greedy = cogql.run_sync(query("argmax", limit=4))
    beams = cogql.run_sync(query("beam(n=2)", limit=4))
    assert isinstance(beams, list) and len(beams) == 2
    _check_sorted(beams)
    assert beams[0].logprob >= greedy.logprob - TOL
    assert beams[0]["X"] != beams[1]["X"]
    for r in beams:
        assert r.prompt == PROMPT_TEXT + r["X"]
        assert 1 <= len(tokenizer.encode(r["X"])) <= 3


def test_best_k_is_at_least_as_likely_as_beam() -> None:
    """best_k searches best-first over hypotheses of every length, so its best result is never
    worse than beam's, which compares hypotheses of equal length only."""
    beams = cogql.run_sync(query("beam_search(n=2)", limit=4))
    best = cogql.run_sync(query("best_k(n=2)", limit=4))
    assert len(best) == 2
    _check_sorted(best)
    assert best[0].logprob >= beams[0].logprob - TOL
    assert best[1].logprob >= beams[1].logprob - TOL


def test_beam_sample_with_a_seed_reproduces_and_seeds_differ() -> None:
    q = 'beam_sample(n=2, temperature=1.5, seed={})\n    "Once upon a time[X]"\nwhere len(TOKENS(X)) < 4'
    a = cogql.run_sync(q.format(1))
    b = cogql.run_sync(q.format(1))
    c = cogql.run_sync(q.format(2))
    assert [r["X"] for r in a] == [r["X"] for r in b]
    assert {r["X"] for r in a} != {r["X"] for r in c}  # known to differ for these seeds
    _check_sorted(a)


async def test_beam_scores_whole_sequences_program_text_included(
    random_client: LMTPClient, tokenizer: Tokenizer
) -> None:
    """A result's log-prob is that of every token after the first hole's prompt: hole tokens
    (and the EOS that ended a hole) plus the program text between holes, as LMQL ranks."""
    q = 'beam(n=2)\n    "A:[X]\\nB:[Y]"\nwhere len(TOKENS(X)) < 3 and len(TOKENS(Y)) < 3'
    results = await cogql.run(q)
    _check_sorted(results)
    bos, eos, enc = tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.encode

    async def logprob(prompt: list[int], tokens: list[int]) -> float:
        (scores,) = await random_client.score(prompt, [tokens])
        return sum(scores)

    for r in results:
        x, y = enc(r["X"]), enc(r["Y"])
        head, between = [bos, *enc("A:")], enc("\nB:")
        ended_x = [eos] if len(x) < 2 else []  # a hole shorter than its limit ended with EOS
        ended_y = [eos] if len(y) < 2 else []
        expected = await logprob(head, x + ended_x) + await logprob(head + x, between + y + ended_y)
        assert r.logprob == pytest.approx(expected, abs=0.05)


def test_beam_holds_stops_and_token_limits_on_a_random_model(
    random_model: cogql.Model, tokenizer: Tokenizer
) -> None:
    """Noise from the random model: the stop phrase and the token limit are checked per token
    on every hypothesis, so each value ends at its first 'e' or at the limit."""
    q = 'beam(n=3)\n    "Text:[X]"\nwhere STOPS_AT(X, "e") and len(TOKENS(X)) < 6'
    results = cogql.run_sync(q, model=random_model)
    assert len(results) == 3
    _check_sorted(results)
    for r in results:
        value = r["X"]
        assert "e" not in value[:-1]
        assert value.endswith("e") or len(tokenizer.encode(value)) == 5


def no_e(text: str) -> bool:
    """A constraint only Python can check."""
    return "e" not in text


def test_beam_keeps_a_python_predicate_true_on_every_result() -> None:
    greedy = cogql.run_sync(query("argmax", limit=4))
    assert "e" in greedy["X"]  # unconstrained, the most likely value breaks the predicate

    @cogql.query
    def colour() -> list[cogql.LMQLResult]:
        """lmql
        beam(n=2)
        "Q: Name a color.\nA:[X]" where len(TOKENS(X)) < 4 and no_e(X)
        """

    results = colour()
    assert len(results) == 2
    _check_sorted(results)
    assert all("e" not in r["X"] for r in results)


def test_beam_applies_a_conditional_stop_and_its_cut_on_a_random_model(
    random_model: cogql.Model,
) -> None:
    """A stop phrase inside `and` fires only once its sibling holds (§6.5): here the first
    space after the fifth character ends the value, which keeps the phrase."""
    q = 'beam(n=3)\n    "Text:[X]"\nwhere STOPS_AT(X, " ") and len(X) > 5 and len(TOKENS(X)) < 8'
    results = cogql.run_sync(q, model=random_model)
    assert len(results) == 3
    _check_sorted(results)
    for r in results:
        assert " " not in r["X"][5:-1]
        if r["X"].endswith(" "):
            assert len(r["X"]) > 5


def test_beam_max_len_truncates_each_result_with_a_warning(
    caplog: pytest.LogCaptureFixture, tokenizer: Tokenizer
) -> None:
    max_len = 1 + len(tokenizer.encode(PROMPT_TEXT)) + 2
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        results = cogql.run_sync(query(f"beam(n=2, max_len={max_len})", limit=12))
    assert isinstance(results, list) and len(results) == 2
    for r in results:
        assert 1 <= len(tokenizer.encode(r["X"])) <= 2
    assert f"max_len={max_len}" in caplog.text and "truncated" in caplog.text


def test_beam_results_report_events_per_result() -> None:
    """Search steps are reported as model calls; each result's text and values are reported
    once, numbered by its rank."""
    events: list[cogql.QueryEvent] = []
    results = cogql.run_sync(query("beam(n=2)", limit=3), output=events.append)
    calls = [e for e in events if isinstance(e, cogql.ModelCall)]
    assert calls and all(c.kind == "GENERATE" and c.tokens == 1 for c in calls)
    for rank, r in enumerate(results):
        finished = [e for e in events if isinstance(e, cogql.VariableFinished) and e.run == rank]
        assert [(e.name, e.value) for e in finished] == [("X", r["X"])]
        text = [e.text for e in events if isinstance(e, cogql.TextAppended) and e.run == rank]
        assert "".join(text) == r.prompt


def test_beam_return_values_and_distribution_per_sequence() -> None:
    dist = cogql.run_sync(
        f'beam(n=2)\n    "{PROMPT}[X] Warm?[C]"\nwhere len(TOKENS(X)) < 3\n'
        'distribution C in [" yes", " no"]'
    )
    _check_sorted(dist)
    for r in dist:
        assert [o for o, _ in r["P(C)"]] == [" yes", " no"]
        assert sum(p for _, p in r["P(C)"]) == pytest.approx(1.0)

    @cogql.query
    def answer() -> list[str]:
        """lmql
        beam(n=2)
        "Q: Name a color.\nA:[X]" where len(TOKENS(X)) < 3
        return X.upper()
        """

    returned = answer()
    plain = cogql.run_sync(query("beam(n=2)", limit=3))
    assert returned == [r["X"].upper() for r in plain]


def test_a_program_that_changes_on_replay_is_an_error() -> None:
    """Search decoders re-run the program to continue a hypothesis; a program whose path
    depends on something other than its hole values cannot be continued."""

    @cogql.query
    def shifty(calls: itertools.count[int]) -> None:
        """lmql
        beam(n=2)
        if next(calls) == 0:
            "A:[X]" where len(TOKENS(X)) < 2
        else:
            "B:[Y]" where len(TOKENS(Y)) < 2
        """

    with pytest.raises(ReplayError, match="reached hole Y where it first reached X"):
        shifty(itertools.count())


# --------------------------------------------------------------------------- result shapes


@pytest.mark.parametrize(
    ("decoder", "count"),
    [
        ("argmax(n=2)", 2),
        ("sample(n=1, seed=3)", None),
        ("beam(n=1)", 1),
        ("beam_sample(n=1, seed=3)", 1),
        ("best_k(n=1)", 1),
    ],
)
def test_result_shapes(decoder: str, count: int | None) -> None:
    """LMQL §3.4: argmax and sample give one result for one sequence, search decoders always
    a list."""
    result = cogql.run_sync(query(decoder, limit=2))
    if count is None:
        assert isinstance(result, cogql.LMQLResult)
    else:
        assert isinstance(result, list) and len(result) == count


def test_call_time_decoder_arguments_merge_over_the_clause() -> None:
    clause = cogql.run_sync(query("beam(n=3)", limit=2), n=2)
    dynamic = cogql.run_sync(f'"{PROMPT}[X]" where len(TOKENS(X)) < 2', decoder="beam", n=2)
    assert [r["X"] for r in clause] == [r["X"] for r in dynamic]
    assert len(clause) == 2


@pytest.mark.parametrize("decoder", ["sample(n=2)", "beam(n=2)", "best_k(n=2)"])
def test_a_program_without_holes_gives_one_result(decoder: str) -> None:
    result = cogql.run_sync(f'{decoder}\n    "Just text."')
    assert isinstance(result, cogql.LMQLResult) and result.prompt == "Just text."


def test_a_hole_without_a_token_limit_is_warned_about_once_per_query(
    caplog: pytest.LogCaptureFixture,
) -> None:
    source = 'sample(n=3, max_len=40)\n    "A:[X] B:[Y] C:[Z]"\nwhere STOPS_AT(X, ".") and ' + (
        'len(TOKENS(Y)) < 3 and Z in [" a", " b"]'
    )
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        cogql.run_sync(source)
    warnings = [r.getMessage() for r in caplog.records if "no token limit" in r.getMessage()]
    assert warnings == [
        "hole X (line 2, column 8) has no token limit: only a stop, EOS or max_len=40 ends "
        "it; add len(TOKENS(X)) < N to its where clause"
    ]  # once for the 3 runs; Y has a limit, Z a finite choice
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="cogql.runtime"):
        cogql.run_sync(source)
    assert sum("no token limit" in r.getMessage() for r in caplog.records) == 1  # each query
