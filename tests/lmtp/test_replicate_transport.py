"""The `replicate:` transport (cogql.lmtp.transports.replicate) and the cost record.

Unit level: endpoint strings, the retry policy, the SSE decoder, cost accounting. Then against
Replicate's API on loopback (cogql.replicate.emulator, real Cog server, tiny random llama): the
client over the transport gets what the in-process engine gives; ops are packed into few
predictions and abandoned ones are canceled; LMQL's wire format without extensions; and the bad
days: wrong token, unknown names, a 429 storm, a create whose answer is lost, an SSE stream that
drops, a slow model past the wait timeout and the idle timeout, a Cog server that dies. Each
ends in the right result or a clear error, never a hang or a duplicated op.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from email.utils import format_datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import replicate
from click.testing import CliRunner

import cogql
from cogql.cli import main
from cogql.lmtp.client import GenerateAfter, LMTPClient, LMTPError, ScoreAfter
from cogql.lmtp.cost import Cost, PredictionCost, current_cost, track_cost
from cogql.lmtp.messages import ENGINE_CAPABILITIES, Generate, TokenEvent
from cogql.lmtp.sse import SSEDecoder
from cogql.lmtp.transports.inprocess import InProcessTransport, local_engine
from cogql.lmtp.transports.replicate import (
    ReplicateConfigError,
    ReplicateTarget,
    ReplicateTransport,
    base_url_from,
    forget_lookups,
    parse_endpoint,
)
from cogql.lmtp.transports.replicate.api import (
    ReplicateAPIError,
    ReplicateAuthError,
    RetryPolicy,
    parse_retry_after,
)
from cogql.replicate.deploy.build import build
from cogql.replicate.deploy.config import load_config
from cogql.replicate.emulator import ReplicateEmulator
from cogql.runtime.model import ModelConfigError
from cogql.tokenizer import load_tokenizer

REF = "tester/tiny"
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "sentiment-replicate.lmql"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
PROMPT = [1, 504, 3102, 314, 253, 1789]

# --------------------------------------------------------------------------- endpoint strings


@pytest.mark.parametrize(
    ("endpoint", "model", "want"),
    [
        ("replicate:alice/llama", None, ReplicateTarget("alice", "llama")),
        ("replicate:alice/llama/abc123", None, ReplicateTarget("alice", "llama", "abc123")),
        ("replicate:alice/llama:abc123", None, ReplicateTarget("alice", "llama", "abc123")),
        ("replicate:deployment/alice/llama", None, ReplicateTarget("alice", "llama", None, True)),
        ("replicate", "alice/llama-2.7b_x", ReplicateTarget("alice", "llama-2.7b_x")),
        ("replicate", "replicate:alice/llama", ReplicateTarget("alice", "llama")),
        ("replicate:", "alice/llama:v1", ReplicateTarget("alice", "llama", "v1")),
        (" replicate:alice/llama ", "ignored/name", ReplicateTarget("alice", "llama")),
    ],
)
def test_endpoint_forms(endpoint: str, model: str | None, want: ReplicateTarget) -> None:
    assert parse_endpoint(endpoint, model) == want


@pytest.mark.parametrize(
    "endpoint",
    [
        "replicate:alice",
        "replicate:a/b/c/d",
        "replicate:/llama",
        "replicate:alice/",
        "replicate:a b/c",
        "replicate:alice/llama:",
        "replicate:deployment/alice/llama:v1",
    ],
)
def test_bad_endpoints_name_the_forms_that_exist(endpoint: str) -> None:
    with pytest.raises(ReplicateConfigError, match="replicate:deployment/owner/name"):
        parse_endpoint(endpoint)


def test_bare_replicate_takes_the_name_from_the_model() -> None:
    with pytest.raises(ReplicateConfigError, match="model's name"):
        parse_endpoint("replicate")


def test_the_token_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_API_TOKEN", raising=False)
    with pytest.raises(ReplicateConfigError, match="REPLICATE_API_TOKEN is not set"):
        ReplicateTransport(ReplicateTarget("alice", "llama"))
    model = cogql.model("alice/llama", endpoint="replicate")
    with pytest.raises(ModelConfigError, match="REPLICATE_API_TOKEN"):
        asyncio.run(model.connect())


def test_base_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REPLICATE_BASE_URL", raising=False)
    assert base_url_from(None) == "https://api.replicate.com"
    monkeypatch.setenv("REPLICATE_BASE_URL", "http://127.0.0.1:9/v1/")  # the 2.x client's form
    assert base_url_from(None) == "http://127.0.0.1:9"
    assert base_url_from("http://h:1") == "http://h:1"


# --------------------------------------------------------------------------- retry policy


def test_retry_after_forms() -> None:
    now = datetime(2026, 1, 1, tzinfo=UTC)
    later = now + timedelta(seconds=7)
    assert parse_retry_after("3", now) == 3.0
    assert parse_retry_after(" 0 ", now) == 0.0
    assert parse_retry_after(format_datetime(later, usegmt=True), now) == 7.0
    assert parse_retry_after(later.isoformat(), now) == 7.0
    assert parse_retry_after("Thu, 01 Jan 2015 00:00:00 GMT", now) == 0.0  # past: no wait
    assert parse_retry_after("soon", now) is None
    assert parse_retry_after(None, now) is None


def test_backoff_grows_is_capped_and_honours_retry_after() -> None:
    policy = RetryPolicy(base_delay=0.25, max_delay=2.0, jitter=0.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.25, 0.5, 1.0, 2.0, 2.0]
    assert policy.delay(1, "1.5") == 1.5
    assert policy.delay(1, "3600") == 2.0  # never sleeps longer than max_delay
    jittery = RetryPolicy(base_delay=1.0, jitter=0.1)
    assert all(0.9 <= jittery.delay(1) <= 1.1 for _ in range(50))


# --------------------------------------------------------------------------- SSE decoding


def test_sse_decoder() -> None:
    decoder = SSEDecoder()
    lines = [
        ": keep-alive",
        "",
        "event: output",
        "id: 17:0",
        'data: TOKEN {"token": 5}',
        "data: ",
        "",
        "event: output",
        "data:  leading space kept",
        "retry: 10",
        "",
        "event: done",
        "id: 17:2",
        "data: {}",
        "",
    ]
    events = [e for e in map(decoder.feed, lines) if e is not None]
    assert [(e.event, e.data, e.id) for e in events] == [
        ("output", 'TOKEN {"token": 5}\n', "17:0"),
        ("output", " leading space kept", "17:0"),  # the id persists
        ("done", "{}", "17:2"),
    ]


# --------------------------------------------------------------------------- cost


def test_cost_figures_and_summary() -> None:
    cost = Cost(tokens_received=5, tokens_used=4, tokens_scored=3)
    assert cost.tokens_generated == 5 and cost.tokens_wasted == 1
    assert cost.summary() == "tokens generated 5, used 4, scored 3"
    cost.add_prediction(PredictionCost("a", ("GENERATE",), "canceled", 1.25, 9))
    cost.add_prediction(PredictionCost("b", ("SCORE", "SCORE"), "succeeded", 0.5, 0))
    assert cost.prediction_ids == ["a", "b"]
    assert cost.predict_time == 1.75
    assert cost.tokens_generated == 9 and cost.tokens_wasted == 5  # the server's count wins
    assert cost.summary().startswith("2 predictions, predict_time 1.750 s, tokens generated 9")
    assert json.loads(json.dumps(cost.to_dict()))["predictions"][0]["id"] == "a"


def test_nested_queries_add_to_their_callers_cost() -> None:
    assert current_cost() is None
    with track_cost() as outer:
        with track_cost() as inner:
            assert inner is outer
        assert current_cost() is outer
    assert current_cost() is None


async def test_settle_waits_for_deferred_figures_but_not_forever() -> None:
    cost = Cost()
    done = asyncio.Event()

    async def figure() -> None:
        await asyncio.sleep(0.05)
        done.set()

    cost.defer(figure())
    cost.defer(asyncio.sleep(30))
    started = time.monotonic()
    await cost.settle(timeout=0.3)
    assert done.is_set() and time.monotonic() - started < 1


# --------------------------------------------------------------------------- the emulator


def build_project(folder: Path, model_dir: Path, name: str, owner: str = "tester") -> Path:
    """A Cog project from `cogql replicate build`; the emulator serves it as OWNER/NAME."""
    folder.mkdir(parents=True, exist_ok=True)
    config = folder / "config.toml"
    config.write_text(
        f'dest_prefix = "r8.im/{owner}"\n[models.{name}]\nlocal.path = "{model_dir}"\ngpu = false\n'
    )
    [result] = build(load_config(config), folder / "work", progress=False)
    return result.folder


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory, tiny_model_path: Path) -> Path:
    return build_project(tmp_path_factory.mktemp("replicate"), tiny_model_path, "tiny")


@pytest.fixture(scope="module")
def emulator(project: Path) -> Iterator[ReplicateEmulator]:
    with ReplicateEmulator([project]) as emu:
        yield emu


@pytest.fixture(autouse=True)
def _fresh_lookups() -> Iterator[None]:
    forget_lookups()  # every test looks the model up itself, as a new process would
    yield
    forget_lookups()


@pytest.fixture(scope="module")
def reference(tiny_model_path: Path) -> LMTPClient:
    """The same weights in this process: what the Replicate path must reproduce."""
    return LMTPClient(InProcessTransport(local_engine(f"local:{tiny_model_path}")), model="tiny")


def transport(
    emu: ReplicateEmulator, endpoint: str = f"replicate:{REF}", **kw: Any
) -> ReplicateTransport:
    kw.setdefault("info_cache", False)
    return ReplicateTransport(
        parse_endpoint(endpoint), api_token=emu.token, base_url=emu.base_url, **kw
    )


async def client_for(emu: ReplicateEmulator, **kw: Any) -> LMTPClient:
    t = transport(emu, **kw)
    await t.open()
    return LMTPClient(t, model=REF)


def recent(emu: ReplicateEmulator) -> dict[str, Any]:
    """The emulator's newest predictions by id (the official client lists them)."""
    page = replicate.Client(api_token=emu.token, base_url=emu.base_url).predictions.list()
    return {p.id: p for p in page.results}


def created_since(emu: ReplicateEmulator, before: dict[str, Any]) -> list[Any]:
    return [p for pid, p in recent(emu).items() if pid not in before]


async def tokens(client: LMTPClient, op: Generate) -> list[int]:
    return [e.token async for e in client.generate(op)]


def gen(max_tokens: int = 8, **kw: Any) -> Generate:
    return Generate(None, "", list(PROMPT), max_tokens=max_tokens, **kw)


async def test_options_scored_after_a_generate_share_its_prediction(
    emulator: ReplicateEmulator, reference: LMTPClient
) -> None:
    """A GENERATE and the SCOREs `after` it go in one prediction even past max_ops, and
    answer as a GENERATE then a SCORE of its prompt and tokens would."""
    client = await client_for(emulator, max_ops=2)
    options = [[504, 3102], [314], [253, 1789, 42]]
    then = ScoreAfter([42], options)
    with track_cost() as cost:
        got = [e.token async for e in client.generate(gen(4), [then])]
        scores = await then.result
        await cost.settle()
    assert got == await tokens(reference, gen(4))
    want = await reference.score(PROMPT + got + [42], options)
    assert scores is not None
    for got_option, want_option in zip(scores, want, strict=True):
        assert got_option == pytest.approx(want_option, abs=5e-3)
    ops = [p.ops for p in cost.predictions]
    assert ops == [("MODEL_INFO",), ("GENERATE", "SCORE", "SCORE", "SCORE")]  # +capabilities


CHAIN = (
    'argmax "Q:[A] and then[B] so[C]" where len(TOKENS(A)) < 5 and len(TOKENS(B)) < 4{extra}\n'
    'distribution C in [" a", " b c"]'
)


def run_both(emulator: ReplicateEmulator, embedded_path: Path, tiny_model_path: Path, source: str):
    """The query on the emulator and in-process on the same weights."""
    local = cogql.run_sync(source, model=cogql.model(f"local:{tiny_model_path}"))
    model = cogql.model(REF, endpoint=f"replicate:{REF}", tokenizer=str(embedded_path),
                        api_token=emulator.token, base_url=emulator.base_url)  # fmt: skip
    return local, cogql.run_sync(source, model=model)


def test_a_statement_runs_in_one_prediction_with_its_holes_sent_ahead(
    emulator: ReplicateEmulator, embedded_path: Path, tiny_model_path: Path
) -> None:
    """B is sent `after` A and the options `after` B, in A's prediction: the prompt and the
    distribution are those of the in-process run, which asks for each in turn."""
    local, remote = run_both(emulator, embedded_path, tiny_model_path, CHAIN.format(extra=""))
    assert remote.prompt == local.prompt
    assert [o for o, _ in remote.variables["P(C)"]] == [" a", " b c"]
    got = [p for _, p in remote.variables["P(C)"]]
    assert got == pytest.approx([p for _, p in local.variables["P(C)"]], abs=2e-3)
    assert remote.cost is not None
    ops = [p.ops for p in remote.cost.predictions]
    assert ops == [("GENERATE", "GENERATE", "SCORE", "SCORE")]
    assert remote.cost.tokens_generated == remote.cost.tokens_used == 4 + 3


def test_a_hole_sent_ahead_is_dropped_when_the_one_before_was_cut(
    emulator: ReplicateEmulator, embedded_path: Path, tiny_model_path: Path
) -> None:
    """STOPS_BEFORE cuts A's stop phrase off, so B's prompt is not the one B was sent ahead
    with: B (and the options after it) are cancelled and sent again, on the real prompt."""
    source = CHAIN.format(extra=' and STOPS_BEFORE(A, "e")').replace("< 5", "< 40")
    local, remote = run_both(emulator, embedded_path, tiny_model_path, source)
    assert "e" not in remote["A"] and remote.prompt == local.prompt
    got = [p for _, p in remote.variables["P(C)"]]
    assert got == pytest.approx([p for _, p in local.variables["P(C)"]], abs=2e-3)
    assert remote.cost is not None
    ops = [p.ops for p in remote.cost.predictions]
    assert ops == [("GENERATE", "GENERATE", "SCORE", "SCORE"), ("GENERATE", "SCORE", "SCORE")]


def test_each_model_call_names_the_prediction_it_went_in(
    emulator: ReplicateEmulator, embedded_path: Path
) -> None:
    """What the playground's calls view shows: with details on, every call of the cut-hole
    query says its prediction (1 for the first message, 2 for what was sent again), the
    requests sent ahead and dropped are reported cancelled, and the last call counts the
    query's predictions."""
    from cogql.runtime.events import ModelCall, token_details

    source = CHAIN.format(extra=' and STOPS_BEFORE(A, "e")').replace("< 5", "< 40")
    model = cogql.model(REF, endpoint=f"replicate:{REF}", tokenizer=str(embedded_path),
                        api_token=emulator.token, base_url=emulator.base_url)  # fmt: skip
    events: list[Any] = []
    with token_details():
        result = cogql.run_sync(source, model=model, output=events.append)
    calls = [e for e in events if isinstance(e, ModelCall)]
    done = [(c.kind, c.ahead, c.prediction) for c in calls if c.status == "done"]
    assert done == [("GENERATE", False, 1), ("GENERATE", False, 2), ("SCORE", True, 2)]
    cancelled = [(c.kind, c.ahead) for c in calls if c.status == "cancelled"]
    assert ("GENERATE", True) in cancelled
    assert result.cost is not None and calls[-1].predictions == len(result.cost.predictions) == 2


async def test_a_generate_after_a_generate_shares_its_prediction(
    emulator: ReplicateEmulator, reference: LMTPClient
) -> None:
    client = await client_for(emulator, max_ops=1)
    b = GenerateAfter(Generate(None, "", [42], 3))
    with track_cost() as cost:
        a = [e.token async for e in client.generate(gen(4), [b])]
        got_b = [e.token async for e in b.events()]
        await cost.settle()
    assert got_b == await tokens(reference, Generate(None, "", PROMPT + a + [42], 3))
    assert [p.ops for p in cost.predictions][-1] == ("GENERATE", "GENERATE")


async def test_generate_and_score_match_in_process(
    emulator: ReplicateEmulator, reference: LMTPClient
) -> None:
    client = await client_for(emulator)
    with track_cost() as cost:
        got = await tokens(client, gen(8))
        scores = await client.score(PROMPT, [[504, 3102], [314], [253, 1789, 42]])
        await cost.settle()
    assert got == await tokens(reference, gen(8))
    want = await reference.score(PROMPT, [[504, 3102], [314], [253, 1789, 42]])
    assert [len(s) for s in scores] == [2, 1, 3]
    for got_option, want_option in zip(scores, want, strict=True):
        assert got_option == pytest.approx(want_option, abs=1e-4)
    # one prediction per GENERATE, one for all three SCOREs; ids and metrics read back
    assert [p.ops for p in cost.predictions] == [("GENERATE",), ("SCORE", "SCORE", "SCORE")]
    assert all(p.status == "succeeded" and p.predict_time for p in cost.predictions)
    assert cost.predictions[0].tokens_generated == 8 == cost.tokens_used
    assert set(cost.prediction_ids) <= set(recent(emulator))


async def test_model_info_costs_one_prediction_per_version(
    emulator: ReplicateEmulator, tmp_path: Path
) -> None:
    before = recent(emulator)
    first = await (await client_for(emulator, info_cache=tmp_path)).model_info()
    assert "stop" in first["capabilities"] and len(created_since(emulator, before)) == 1
    forget_lookups()  # a new process: only the disk remembers
    before = recent(emulator)
    again = await (await client_for(emulator, info_cache=tmp_path)).model_info()
    assert again == first and created_since(emulator, before) == []


async def test_concurrent_ops_share_one_prediction(emulator: ReplicateEmulator) -> None:
    client = await client_for(emulator)
    with track_cost() as cost:
        a, b = await asyncio.gather(tokens(client, gen(4)), tokens(client, gen(6)))
    assert (len(a), len(b)) == (4, 6)
    assert [p.ops for p in cost.predictions] == [("GENERATE", "GENERATE")]


async def test_a_prediction_no_longer_read_is_canceled(emulator: ReplicateEmulator) -> None:
    client = await client_for(emulator)
    with track_cost() as cost:
        stream = client.generate(gen(1500))
        read = [await anext(stream) for _ in range(3)]
        await stream.aclose()
        await cost.settle()
    (prediction,) = cost.predictions
    assert len(read) == 3 and prediction.status == "canceled"
    assert recent(emulator)[prediction.id].status == "canceled"
    assert cost.tokens_used == 3 and 3 <= cost.tokens_generated < 1500


async def test_cancel_false_leaves_the_prediction_running_as_lmql_does(
    emulator: ReplicateEmulator,
) -> None:
    client = await client_for(emulator, cancel=False)
    with track_cost() as cost:
        stream = client.generate(gen(40))
        read = [await anext(stream) for _ in range(3)]
        await stream.aclose()
        await cost.settle()  # the query's cost waits for the prediction to end
    (prediction,) = cost.predictions
    assert len(read) == 3 and prediction.status == "succeeded"
    assert recent(emulator)[prediction.id].status == "succeeded"
    assert cost.tokens_used == 3 and cost.tokens_generated == 40 and cost.tokens_wasted == 37


async def test_lmql_wire_format_without_extensions(
    emulator: ReplicateEmulator, embedded_path: Path
) -> None:
    """Against LMQL-built models the client sends plain LMTP (stop enforced client-side), and
    the prediction it leaves behind is canceled."""
    t = transport(emulator)
    await t.open()
    client = LMTPClient(t, model=REF, tokenizer=load_tokenizer(embedded_path))
    client.use_extensions = False
    before = recent(emulator)
    with track_cost() as cost:
        got = await tokens(client, gen(400, stop=["e"]))  # long enough to outlast the cancel
        await cost.settle()
    text = client.tokenizer.decode(got)
    assert "e" in text and not text[: text.index("e")].count("e")
    [prediction] = created_since(emulator, before)
    [[kind, payload]] = json.loads(prediction.input["ops_batch_json"])
    assert kind == "GENERATE" and "stop" not in payload and "grammar" not in payload
    assert payload["max_tokens"] == 400
    if len(got) < 400:  # the stop came first: the rest was not needed
        assert prediction.id in cost.prediction_ids and cost.predictions[0].status == "canceled"


async def test_a_wrong_token_fails_the_lookup_clearly(emulator: ReplicateEmulator) -> None:
    bad = ReplicateTransport(parse_endpoint(f"replicate:{REF}"), api_token="r8_wrong",
                             base_url=emulator.base_url)  # fmt: skip
    with pytest.raises(ReplicateAuthError, match=r"rejected the API token.*HTTP 401") as info:
        await bad.open()
    assert isinstance(info.value, cogql.TransportError) and not info.value.retryable


@pytest.mark.parametrize(
    ("endpoint", "message"),
    [
        ("replicate:tester/nope", "no model tester/nope"),
        ("replicate:tester/tiny/ffff", "no version ffff of model tester/tiny"),
        ("replicate:deployment/tester/nope", "no deployment tester/nope"),
    ],
)
async def test_unknown_names_fail_the_lookup_clearly(
    emulator: ReplicateEmulator, endpoint: str, message: str
) -> None:
    with pytest.raises(ReplicateAPIError, match=message) as info:
        await transport(emulator, endpoint).open()
    assert info.value.status == 404 and not info.value.retryable


@pytest.mark.parametrize("form", ["{ref}/{v}", "{ref}:{v}", "deployment/{ref}"])
async def test_pinned_versions_and_deployments(emulator: ReplicateEmulator, form: str) -> None:
    endpoint = "replicate:" + form.format(ref=REF, v=emulator.version(REF))
    client = await client_for(emulator, endpoint=endpoint)
    with track_cost() as cost:
        assert len((await client.score(PROMPT, [[5, 6]]))[0]) == 2
    assert len(cost.predictions) == 1


@pytest.mark.parametrize("form", ["{ref}", "{ref}/{v}"])
async def test_the_version_lookup_carries_the_extensions(
    emulator: ReplicateEmulator, form: str
) -> None:
    t = transport(emulator, "replicate:" + form.format(ref=REF, v=emulator.version(REF)))
    await t.open()
    assert t.advertised == frozenset(ENGINE_CAPABILITIES)


def test_a_schema_without_the_advertisement_costs_one_model_info(
    project: Path, embedded_path: Path, tmp_path: Path
) -> None:
    """LMQL-built versions (and cogql builds before the advertisement) are asked with
    MODEL_INFO, which still finds the extensions of a cogql server."""
    plain = tmp_path / "plain"
    shutil.copytree(project, plain)
    schema_file = plain / ".cog" / "openapi_schema.json"
    schema = json.loads(schema_file.read_text(encoding="utf-8"))
    field = schema["components"]["schemas"]["Input"]["properties"]["ops_batch_json"]
    field["description"] = field["description"].split(" LMTP extensions:")[0]
    schema_file.write_text(json.dumps(schema), encoding="utf-8")
    with ReplicateEmulator([plain]) as emu:
        t = transport(emu)
        model = cogql.model(REF, endpoint=f"replicate:{REF}", tokenizer=str(embedded_path),
                            api_token=emu.token, base_url=emu.base_url)  # fmt: skip
        result = cogql.run_sync('argmax "Hi[X]" where STOPS_AT(X, "e") and len(TOKENS(X)) < 9',
                                model=model)  # fmt: skip
        asyncio.run(t.open())
    assert t.advertised is None
    kinds = [p.ops for p in result.cost.predictions]
    assert kinds == [("MODEL_INFO",), ("GENERATE",)]


async def test_a_429_storm_is_waited_out_without_duplicates(emulator: ReplicateEmulator) -> None:
    client = await client_for(emulator)
    before = recent(emulator)
    emulator.faults.throttle_creates(4, retry_after=0)
    try:
        assert len(await tokens(client, gen(3))) == 3
    finally:
        emulator.faults.clear()
    assert emulator.faults.throttled >= 4
    assert len(created_since(emulator, before)) == 1


async def test_an_endless_429_storm_gives_up_clearly(emulator: ReplicateEmulator) -> None:
    client = await client_for(emulator, retry=RetryPolicy(attempts=3, base_delay=0.01))
    before = recent(emulator)
    emulator.faults.throttle_creates(100, retry_after=0)
    try:
        with pytest.raises(LMTPError, match=r"in 3 attempts.*HTTP 429") as info:
            await tokens(client, gen(3))
        assert isinstance(info.value, cogql.TransportError) and info.value.retryable
    finally:
        emulator.faults.clear()
    assert created_since(emulator, before) == []


@pytest.mark.parametrize("after_create", [False, True])
async def test_5xx_creates_are_retried_and_never_run_twice(
    emulator: ReplicateEmulator, reference: LMTPClient, after_create: bool
) -> None:
    """A 5xx before the prediction exists is retried; one after it was made (the answer lost
    on the way back) is found among the recent predictions instead of being sent again."""
    client = await client_for(emulator, retry=RetryPolicy(base_delay=0.01))
    before = recent(emulator)
    emulator.faults.fail_creates(2 if not after_create else 1, 503, after_create=after_create)
    try:
        assert await tokens(client, gen(5)) == await tokens(reference, gen(5))
    finally:
        emulator.faults.clear()
    assert len(created_since(emulator, before)) == 1


class RefuseFirstConnect(httpx.AsyncBaseTransport):
    """The first prediction create fails to connect: it never left, so it is simply sent again."""

    def __init__(self) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.refused = 0

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        is_create = request.method == "POST" and request.url.path == "/v1/predictions"
        if is_create and not self.refused:
            self.refused += 1
            raise httpx.ConnectError("connection refused", request=request)
        return await self.inner.handle_async_request(request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_create_that_could_not_connect_is_sent_again(emulator: ReplicateEmulator) -> None:
    refuse = RefuseFirstConnect()
    client = await client_for(emulator, http_transport=refuse)
    before = recent(emulator)
    assert len(await tokens(client, gen(3))) == 3
    assert refuse.refused == 1 and len(created_since(emulator, before)) == 1


class PartialCreate(httpx.AsyncBaseTransport):
    """A create answered mid-prediction with part of its output, as a `Prefer: wait` that runs
    out may be: the stream that follows replays those chunks, which must not count twice."""

    def __init__(self, chunks: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.chunks = chunks

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = await self.inner.handle_async_request(request)
        if request.method != "POST" or request.url.path != "/v1/predictions":
            return answer
        body = json.loads(await answer.aread())
        body.update(status="processing", output=(body.get("output") or [])[: self.chunks])
        return httpx.Response(answer.status_code, json=body, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_output_that_came_with_the_create_is_not_applied_twice(
    emulator: ReplicateEmulator, reference: LMTPClient
) -> None:
    client = await client_for(emulator, http_transport=PartialCreate(chunks=3))
    options = [[504, 3102], [314], [253, 1789, 42]]
    scores = await client.score(PROMPT, options)
    want = await reference.score(PROMPT, options)
    assert [len(s) for s in scores] == [2, 1, 3]
    for got_option, want_option in zip(scores, want, strict=True):
        assert got_option == pytest.approx(want_option, abs=1e-4)


async def test_a_dropped_event_stream_is_resumed(
    emulator: ReplicateEmulator, reference: LMTPClient
) -> None:
    client = await client_for(emulator)
    before = recent(emulator)
    emulator.faults.drop_streams(after_events=2, times=3)
    try:
        got = await tokens(client, gen(12))
    finally:
        emulator.faults.clear()
    assert got == await tokens(reference, gen(12))  # nothing lost, nothing twice
    assert emulator.faults.dropped >= 1  # later cuts are skipped once the prediction is over
    assert len(created_since(emulator, before)) == 1


async def test_an_op_the_model_rejects_names_the_prediction(emulator: ReplicateEmulator) -> None:
    client = await client_for(emulator)
    with track_cost() as cost, pytest.raises(LMTPError, match="Replicate prediction") as info:
        await client.score(PROMPT, [[]])  # nothing to score: the predictor answers an error
    assert not info.value.retryable  # the same op would fail again
    assert "scored" in str(info.value) and cost.prediction_ids[0] in str(info.value)


class CutOutput(httpx.AsyncBaseTransport):
    """A prediction that succeeds but whose output stops after `keep` chunks, in its event
    stream and in its final state alike: the ops it never answered must fail, not hang."""

    def __init__(self, keep: int) -> None:
        self.inner = httpx.AsyncHTTPTransport()
        self.keep = keep

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        answer = await self.inner.handle_async_request(request)
        path = request.url.path
        if request.method != "GET" or not path.startswith("/v1/predictions/"):
            return answer
        body = (await answer.aread()).decode()
        if path.endswith("/stream"):
            events = body.split("\n\n")
            outputs = [e for e in events if e.startswith("event: output")][: self.keep]
            body = "\n\n".join(outputs + [e for e in events if e.startswith("event: done")])
            body += "\n\n"
        else:
            data = json.loads(body)
            data["output"] = (data.get("output") or [])[: self.keep]
            body = json.dumps(data)
        headers = {"content-type": answer.headers["content-type"]}
        return httpx.Response(answer.status_code, text=body, headers=headers, request=request)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def test_a_prediction_that_ends_early_fails_its_op_clearly(
    emulator: ReplicateEmulator,
) -> None:
    client = await client_for(emulator, http_transport=CutOutput(keep=2))
    with track_cost() as cost, pytest.raises(LMTPError, match="without answering") as info:
        await tokens(client, gen(6))
    assert cost.prediction_ids[0] in str(info.value)


def test_cogql_run_trace_prints_the_cost(
    emulator: ReplicateEmulator,
    embedded_path: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    query = tmp_path / "q.lmql"
    query.write_text(
        'argmax "Hello[Y][X]" from lmql.model("tiny", endpoint="replicate:tester/tiny", '
        f'tokenizer="{embedded_path}") where len(TOKENS(Y)) < 4 '
        'distribution X in [" a", " b"]\n',
        encoding="utf-8",
    )
    for key, value in emulator.env.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("COGQL_REPLICATE_CACHE", "off")
    out = CliRunner().invoke(main, ["run", "--trace", str(query)])
    assert out.exit_code == 0, out.output
    lines = [line for line in out.output.splitlines() if line.startswith(("cost", "prediction"))]
    assert lines[0].startswith("cost 1 prediction, predict_time ")
    assert "tokens generated 3, used 3, scored 2" in lines[0]
    kinds = [line.split()[2] for line in lines[1:]]
    # the schema's advertisement spares MODEL_INFO; the options are scored `after` Y
    assert kinds == ["GENERATE+SCORE+SCORE"]
    assert all(" succeeded predict_time=" in line for line in lines[1:])


# --------------------------------------------------------------------------- a slow model


@pytest.fixture(scope="class")
def slow(project: Path) -> Iterator[ReplicateEmulator]:
    """The same model behind 1.5 s of queueing per prediction; its Cog server is killed by the
    last test of the class."""
    with ReplicateEmulator([project], latency=1.5) as emu:
        yield emu


class TestSlowModel:
    async def test_past_the_wait_timeout_the_stream_takes_over(
        self, slow: ReplicateEmulator, reference: LMTPClient
    ) -> None:
        client = await client_for(slow, wait=1)
        before = recent(slow)
        started = time.monotonic()
        scores = await client.score(PROMPT, [[7, 8]])
        assert time.monotonic() - started >= 1.5
        want = await reference.score(PROMPT, [[7, 8]])
        assert scores[0] == pytest.approx(want[0], abs=1e-4)
        assert len(created_since(slow, before)) == 1

    async def test_a_silent_prediction_is_canceled_at_the_idle_timeout(
        self, slow: ReplicateEmulator
    ) -> None:
        client = await client_for(slow, idle_timeout=0.5)
        with track_cost() as cost, pytest.raises(LMTPError, match=r"no output for 0\.5 s") as info:
            await tokens(client, gen(3))
        (prediction,) = cost.predictions
        assert prediction.id in str(info.value)
        for _ in range(50):
            if recent(slow)[prediction.id].status == "canceled":
                break
            await asyncio.sleep(0.1)
        assert recent(slow)[prediction.id].status == "canceled"

    async def test_a_cog_server_that_dies_fails_the_op_clearly(
        self, slow: ReplicateEmulator
    ) -> None:
        client = await client_for(slow)
        stream = client.generate(gen(1500))
        with track_cost() as cost:
            first = await anext(stream)
            assert isinstance(first, TokenEvent)
            slow.cog_server(REF).stop()
            with pytest.raises(LMTPError, match="failed") as info:
                async for _ in stream:
                    pass
        assert cost.prediction_ids[0] in str(info.value)


# --------------------------------------------------------------------------- end to end


def hub_cache_with_tokenizer(root: Path, repo: str, source: Path) -> Path:
    """A Hugging Face cache holding only `repo`'s tokenizer files, as a user's cache would
    after downloading them (the example names its tokenizer by hub id; nothing is online)."""
    snapshot = root / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    for name in TOKENIZER_FILES:
        (snapshot / name).write_bytes((source / name).read_bytes())
    refs = snapshot.parent.parent / "refs"
    refs.mkdir()
    (refs / "main").write_text("0" * 40)
    return root


@pytest.mark.slow
def test_the_sentiment_example_on_replicate_matches_in_process(
    tmp_path: Path, embedded_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """examples/sentiment-replicate.lmql, unchanged, against the embedded model built as a Cog
    project and served by Replicate's API on loopback: the in-process result, in 1 prediction
    (the version's schema advertises the extensions: no MODEL_INFO; the options are scored in
    the GENERATE's prediction), with no token generated past the stop."""
    source = EXAMPLE.read_text(encoding="utf-8")
    assert 'endpoint="replicate:cogql/smollm2"' in source
    local = cogql.run_sync(source, model=cogql.model(None))
    project = build_project(tmp_path / "build", embedded_path, "smollm2", owner="cogql")
    hub = hub_cache_with_tokenizer(tmp_path / "hub", "HuggingFaceTB/SmolLM2-135M-Instruct",
                                   embedded_path)  # fmt: skip
    monkeypatch.setenv("HF_HUB_CACHE", str(hub))
    monkeypatch.setenv("COGQL_REPLICATE_CACHE", "off")
    with ReplicateEmulator([project]) as emu:
        for key, value in emu.env.items():
            monkeypatch.setenv(key, value)
        remote = cogql.run_sync(source)
    assert remote.variables["ANALYSIS"] == local.variables["ANALYSIS"]
    assert remote.variables["CLASSIFICATION"] == local.variables["CLASSIFICATION"]
    got, want = remote.variables["P(CLASSIFICATION)"], local.variables["P(CLASSIFICATION)"]
    assert [o for o, _ in got] == [o for o, _ in want]
    assert [p for _, p in got] == pytest.approx([p for _, p in want], abs=1e-3)
    cost = remote.cost
    assert cost is not None
    assert [p.ops for p in cost.predictions] == [("GENERATE", "SCORE", "SCORE", "SCORE")]
    assert all(p.status == "succeeded" and p.predict_time for p in cost.predictions)
    assert cost.tokens_wasted == 0 and cost.tokens_used == cost.tokens_generated > 0


@pytest.mark.slow
def test_the_sentiment_example_runs_on_the_served_tokenizer_when_its_own_is_not_here(
    tmp_path: Path,
    embedded_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """examples/sentiment-replicate.lmql names its tokenizer by hub id; on a machine whose
    Hugging Face cache lacks it (and with no hub to fetch it from) the query runs on the
    tokenizer the cogql-built model hands out, saying so once, at the cost of one MODEL_INFO
    prediction."""
    source = EXAMPLE.read_text(encoding="utf-8")
    project = build_project(tmp_path / "build", embedded_path, "smollm2", owner="cogql")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-hub"))
    monkeypatch.setenv("COGQL_REPLICATE_CACHE", "off")
    with ReplicateEmulator([project]) as emu:
        for key, value in emu.env.items():
            monkeypatch.setenv(key, value)
        with caplog.at_level("WARNING", logger="cogql.runtime"):
            remote = cogql.run_sync(source)
    assert remote.variables["CLASSIFICATION"] == " positive"
    notes = [r.getMessage() for r in caplog.records if "tokenizer=" in r.getMessage()]
    assert notes == [
        "tokenizer='HuggingFaceTB/SmolLM2-135M-Instruct' is not on this machine (not a folder, "
        "not in the Hugging Face cache); using the tokenizer that the model at "
        f"replicate:cogql/smollm2 at {emu.base_url} hands out"
    ]
    assert remote.cost is not None
    assert [p.ops for p in remote.cost.predictions] == [
        ("MODEL_INFO",),
        ("GENERATE", "SCORE", "SCORE", "SCORE"),
    ]
