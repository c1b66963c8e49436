"""RunState, the one owner of a running query's prompt: program text is tokenized together at
the next flush (as the model would split it), values and generated tokens on their own; hole ends
are positions in the ids; a nested query's frame rewinds to a mark, moving the ends of the holes
filled inside it to the end of the value that replaces it."""

from __future__ import annotations

import numpy as np

from cogql.constraints.holespec import HoleSpec, Stop
from cogql.lmtp.emulation import allows, token_mask
from cogql.runtime.hole_endings import HoleEndings, Step, stops_inactive_in
from cogql.runtime.state import RunState
from cogql.tokenizer import Tokenizer


def test_program_text_is_tokenized_as_one_piece(tokenizer: Tokenizer) -> None:
    state = RunState(tokenizer, tokenizer.bos_token_id)
    state.append_text("Hello")
    state.append_text(" world, how are you")
    whole = tokenizer.encode("Hello world, how are you", start=True)
    bos = [] if tokenizer.bos_token_id is None else [tokenizer.bos_token_id]
    assert state.ids == bos + whole
    assert state.text == "Hello world, how are you"
    assert state.token_count == len(bos + whole)


def test_values_and_tokens_are_appended_on_their_own(tokenizer: Tokenizer) -> None:
    state = RunState(tokenizer, None)
    state.append_text("Q:")
    generated = tokenizer.encode(" yes")
    state.append_tokens(generated, " yes")
    state.end_hole()
    state.append_encoded(" and more")
    expected = tokenizer.encode("Q:", start=True) + generated + tokenizer.encode(" and more")
    assert state.ids == expected
    assert state.text == "Q: yes and more"
    assert state.holes_filled == 1
    assert state.hole_end(0) == len(expected) - len(tokenizer.encode(" and more"))


def test_rewind_replaces_a_frame_and_moves_its_hole_ends(tokenizer: Tokenizer) -> None:
    state = RunState(tokenizer, None)
    state.append_text("A:")
    state.end_hole()
    before = state.ids
    frame = state.mark()
    state.append_text(" think step by step")
    state.append_tokens(tokenizer.encode(" first"), " first")
    state.end_hole()
    state.append_text(" pending program text")
    assert state.text_since(frame) == " think step by step first pending program text"
    state.rewind(frame, " 42")
    assert state.text == "A: 42"
    assert state.ids == before + tokenizer.encode(" 42")
    assert [state.hole_end(k) for k in range(state.holes_filled)] == [len(before), len(state.ids)]


def test_a_chat_template_may_drop_bos_only_at_the_start(tokenizer: Tokenizer) -> None:
    bos = 1
    state = RunState(tokenizer, bos)
    state.omit_bos()
    assert state.ids == []
    later = RunState(tokenizer, bos)
    later.append_text("text")
    later.omit_bos()
    assert later.ids[0] == bos


def test_logprob_and_calls_accumulate(tokenizer: Tokenizer) -> None:
    state = RunState(tokenizer, None)
    state.add_logprob(-0.5)
    state.add_logprob(-1.25)
    state.count_call()
    assert (state.logprob, state.calls) == (-1.75, 1)


def test_hole_endings_stop_phrases_from_min_tokens_on(tokenizer: Tokenizer) -> None:
    spec = HoleSpec(stops=[Stop("\n", keep=False)], min_tokens=3)
    endings = HoleEndings(spec, tokenizer, limit=10)
    newline = tokenizer.encode("\n")[0]
    word = tokenizer.encode(" a")[0]
    assert endings.after([word], newline) == Step(None)  # 2 tokens: stops not active yet
    assert endings.after([word, word], newline) == Step("stop", cut=4)
    assert stops_inactive_in(spec, [word, newline, word]) == [word, newline]


def test_hole_endings_at_the_limit(tokenizer: Tokenizer) -> None:
    word = tokenizer.encode(" a")[0]
    own_limit = HoleEndings(HoleSpec(max_tokens=2), tokenizer, limit=2, accepts=lambda t: False)
    assert own_limit.after([word], word) is None  # the grammar does not accept it there
    by_max_len = HoleEndings(HoleSpec(max_tokens=5), tokenizer, limit=2, accepts=lambda t: False)
    assert by_max_len.after([word], word) == Step("length")  # truncated by max_len
    assert own_limit.after([], tokenizer.eos_token_id) == Step("stop")


def test_the_token_mask_forbids_eos_before_min_tokens(tokenizer: Tokenizer) -> None:
    eos, vocab = tokenizer.eos_token_id, tokenizer.vocab_size
    assert token_mask(None, 3, 3, eos, vocab) is None
    mask = token_mask(None, 2, 3, eos, vocab)
    assert mask is not None and not allows(mask, eos) and allows(mask, (eos + 1) % vocab)
    assert not allows(np.ones(4, dtype=bool), 4)
