"""The playground's server without a browser: the token and Origin checks, the compile check
with line and column, a run's events over the websocket, and Stop cancelling the model call
(on the weightless random model, a real server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import websockets

from cogql.lmtp.transports.inprocess import _engines
from cogql.playground.server import Playground

SENTIMENT = (
    'argmax "Review: fine.\\nQ: Sentiment?\\nA:[A]\\nSo:[C]" where len(TOKENS(A)) < 6\n'
    'distribution C in [" good", " bad"]'
)
LONG = 'argmax "Go:[X]" where len(TOKENS(X)) < 1500'


@pytest.fixture(scope="module")
def playground() -> Iterator[Playground]:
    with Playground(SENTIMENT, model="random") as pg:
        yield pg


def base(pg: Playground) -> str:
    return f"http://127.0.0.1:{pg.access.port}"


def ws_url(pg: Playground, token: str | None = None) -> str:
    return f"ws://127.0.0.1:{pg.access.port}/ws?token={token or pg.access.token}"


def test_every_request_needs_the_token(playground: Playground) -> None:
    url = base(playground)
    assert httpx.get(url + "/").status_code == 403
    assert httpx.get(url + "/?token=wrong").status_code == 403
    assert httpx.get(url + "/static/playground.js").status_code == 403
    assert httpx.post(url + "/api/check", json={"source": '"a"'}).status_code == 403
    page = httpx.get(playground.url)
    assert page.status_code == 200 and "cogql playground" in page.text
    assert "Content-Security-Policy" in page.headers
    token = {"token": playground.access.token}
    assert httpx.get(url + "/static/playground.js", params=token).status_code == 200
    assert httpx.get(url + "/static/index.html", params=token).status_code == 404


def test_the_page_fills_the_editor_and_loads_nothing_from_elsewhere(playground: Playground) -> None:
    page = httpx.get(playground.url).text
    start = page.index('type="application/json">') + len('type="application/json">')
    initial = json.loads(page[start : page.index("</script>", start)])
    assert initial["source"] == SENTIMENT and initial["model"] == "random"
    assert "http://" not in page.replace(initial["source"], "") and "https://" not in page


def test_another_origin_or_host_is_refused(playground: Playground) -> None:
    url, token = base(playground), {"token": playground.access.token}
    evil = {"Origin": "http://evil.example"}
    assert httpx.get(url + "/", params=token, headers=evil).status_code == 403
    rebound = {"Host": f"evil.example:{playground.access.port}"}
    assert httpx.get(url + "/", params=token, headers=rebound).status_code == 403
    own = {"Origin": f"http://localhost:{playground.access.port}"}
    assert httpx.get(url + "/", params=token, headers=own).status_code == 200


async def test_the_websocket_needs_the_token_and_the_origin(playground: Playground) -> None:
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(playground, token="wrong"))
    assert refused.value.response.status_code == 403
    with pytest.raises(websockets.InvalidStatus) as refused:
        await websockets.connect(ws_url(playground), origin="http://evil.example")
    assert refused.value.response.status_code == 403


def test_a_compile_error_has_its_line_and_column(playground: Playground) -> None:
    url = base(playground) + "/api/check"
    headers = {"X-Cogql-Token": playground.access.token}
    source = 'argmax\n    "Hi[X]"\nwhere len(X) <'
    answer = httpx.post(url, json={"source": source}, headers=headers).json()
    error = answer["error"]
    assert not answer["ok"] and (error["line"], error["col"]) == (3, 15)
    assert error["message"].startswith("invalid where clause")
    assert "(line 3, column 15)" in error["terminal"] and error["family"] == "query"
    good = httpx.post(url, json={"source": '"Hi {name}[X]"'}, headers=headers).json()
    assert good == {"ok": True, "inputs": ["name"], "decoder": "argmax"}
    bad = httpx.post(url, content=b"{", headers=headers)
    assert bad.status_code == 400


async def messages_until(ws: Any, last: set[str], limit: int = 2000) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    for _ in range(limit):
        message = json.loads(await asyncio.wait_for(ws.recv(), 60))
        got.append(message)
        if message["type"] in last:
            return got
    raise AssertionError(f"no {last} in {limit} messages")


def events(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for m in messages if m["type"] == "events" for e in m["events"]]


async def test_a_run_streams_its_events_and_result(playground: Playground) -> None:
    async with websockets.connect(ws_url(playground)) as ws:
        run = {"type": "run", "source": SENTIMENT, "inputs": {}, "model": "random"}
        await ws.send(json.dumps(run))
        got = await messages_until(ws, {"finished", "error"})
    assert got[0]["type"] == "started" and got[-1]["type"] == "finished", got[-1]
    seen = events(got)
    kinds = {e["type"] for e in seen}
    assert {"TextAppended", "TokenGenerated", "ModelCall", "VariableFinished"} <= kinds
    result = got[-1]["result"]
    text = "".join(e["text"] for e in seen if e["type"] == "TextAppended")
    assert text == result["prompt"]
    assert [o for o, _ in result["distribution"]] == [" good", " bad"]
    assert sum(p for _, p in result["distribution"]) == pytest.approx(1.0)
    token = next(e for e in seen if e["type"] == "TokenGenerated")
    assert token["variable"] == "A" and len(token["alternatives"]) == 5


async def test_an_error_while_running_is_reported_with_its_place(playground: Playground) -> None:
    async with websockets.connect(ws_url(playground)) as ws:
        await ws.send(json.dumps({"type": "run", "source": '"{1/0}[X]"', "model": "random"}))
        got = await messages_until(ws, {"finished", "error"})
        assert got[-1]["type"] == "error" and "ZeroDivisionError" in got[-1]["terminal"]
        await ws.send("not json")
        (bad,) = await messages_until(ws, {"error"})
        assert bad["family"] == "other"


def streams_running() -> int:
    """Streams the in-process engines (the random model's, and any other this process has
    opened) are running, not cancelled."""
    total = 0
    for engine in [e for e in _engines.values() if hasattr(e, "_streams")]:
        running = engine.call(lambda e=engine: [s for s in e._streams if not s.handle.cancelled])
        total += len(running.result(30))
    return total


async def test_stop_cancels_the_query_and_its_model_call(playground: Playground) -> None:
    async with websockets.connect(ws_url(playground)) as ws:
        await ws.send(json.dumps({"type": "run", "source": LONG, "model": "random"}))
        got = await messages_until(ws, {"events"})  # X is being generated
        assert any(e["type"] == "TokenGenerated" for e in events(got))
        assert streams_running() == 1
        await ws.send(json.dumps({"type": "stop"}))
        got = await messages_until(ws, {"idle"})
    assert "stopped" in [m["type"] for m in got]
    assert streams_running() == 0


async def test_closing_the_page_cancels_its_run(playground: Playground) -> None:
    async with websockets.connect(ws_url(playground)) as ws:
        await ws.send(json.dumps({"type": "run", "source": LONG, "model": "random"}))
        await messages_until(ws, {"events"})
    for _ in range(100):  # the server sees the close and stops the run (bounded)
        if streams_running() == 0:
            break
        await asyncio.sleep(0.05)
    assert streams_running() == 0
