"""Issue 18, the proxy's defects (8, 9, 10, 12), against stand-in instances on loopback.

A real `Proxy` (aiohttp) in front of `StandIn`s or of small aiohttp apps that behave as a dying or slow SGLang
instance would; the client is aiohttp. Real servers for the same cases: `make chaos`.
"""

from __future__ import annotations

import asyncio
import json
import logging
import random
import time

import aiohttp
import pytest
from aiohttp import web

from adrenaline_sgl.proxy.config import ProxyConfig
from adrenaline_sgl.proxy.fake_instance import StandIn, decode_load, prefill_load
from adrenaline_sgl.proxy.server import Proxy


def run(coro, timeout_s: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class App:
    """A one-route aiohttp app on a free loopback port, with `/adrenaline/load` answering `load`."""

    def __init__(self, handler, load: dict):
        self.handler, self.load = handler, load
        self.url, self.runner = "", None

    async def __aenter__(self):
        app = web.Application()
        for path in ("/generate", "/v1/chat/completions"):
            app.router.add_post(path, self.handler)
        app.router.add_get("/adrenaline/load", lambda _r: web.json_response(self.load))
        self.runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        return self

    async def __aexit__(self, *exc):
        await self.runner.cleanup()


async def _proxy(prefill_url: str, decode_url: str, **cfg) -> Proxy:
    proxy = Proxy(ProxyConfig(prefill=((prefill_url, 8998),), decode=(decode_url,), port=0, policy="always", **cfg),
                  rng=random.Random(0))  # fmt: skip
    await proxy.start()
    return proxy


async def _wait_for(predicate, timeout_s: float) -> bool:
    for _ in range(int(timeout_s / 0.05)):
        if predicate():
            return True
        await asyncio.sleep(0.05)
    return predicate()


# ---- defect 8: a client that goes away -------------------------------------------------------------------


def test_defect8_non_streaming_client_disconnect_cancels_the_upstream_requests():
    """Defect 8: a non-streaming client that gave up left decode running ~140 s (until the executor's reserve
    ran out): the proxy kept waiting for decode's answer, so SGLang never saw a disconnect to abort on."""

    async def body():
        prefill, decode = StandIn("prefill", prefill_load()), StandIn("decode", decode_load(), delay_s=8.0)
        await prefill.start()
        await decode.start()
        proxy = await _proxy(prefill.url, decode.url)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=0.5)) as http:
                with pytest.raises(TimeoutError):  # the client gives up and closes its connection
                    await http.post(proxy.url + "/generate", json={"text": "x", "sampling_params": {}})
            assert await _wait_for(lambda: decode.cancelled == 1, 5.0), "decode still serving a departed client"
        finally:
            await proxy.stop()
            await prefill.stop()
            await decode.stop()

    run(body())


async def _slow_stream(request: web.Request) -> web.StreamResponse:
    """A decode stream of one chunk every 50 ms for 10 s."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(200):
        await resp.write(f"data: {json.dumps({'text': str(i)})}\n\n".encode())
        await asyncio.sleep(0.05)
    await resp.write(b"data: [DONE]\n\n")
    return resp


def test_defect8_streaming_client_disconnect_logs_no_traceback(caplog):
    """Defect 8, streaming: the disconnect frees KV, but each one logged an aiohttp traceback from the proxy's
    write to the departed client (a busy stack with impatient clients fills its log with them)."""

    async def body():
        async with App(_slow_stream, prefill_load()) as prefill, App(_slow_stream, decode_load()) as decode:
            proxy = await _proxy(prefill.url, decode.url)
            try:
                async with aiohttp.ClientSession() as http:
                    body = {"text": "x", "stream": True}
                    async with http.post(proxy.url + "/generate", json=body) as resp:
                        assert resp.status == 200
                        await resp.content.readline()  # one event, then the client goes away
                await asyncio.sleep(1.0)  # the proxy's next write meets the closed connection
            finally:
                await proxy.stop()

    with caplog.at_level(logging.DEBUG):
        run(body())
    tracebacks = [r for r in caplog.records if r.exc_info or "Traceback" in r.getMessage()]
    assert not tracebacks, [f"{r.name}: {r.getMessage()[:200]}" for r in tracebacks]


# ---- defect 9: decode dies mid-stream ----------------------------------------------------------------------


async def _dying_stream(request: web.Request) -> web.StreamResponse:
    """Two events, then the connection drops with no end of stream (the decode process was killed)."""
    await request.read()
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    for i in range(2):
        await resp.write(f"data: {json.dumps({'text': str(i)})}\n\n".encode())
    await asyncio.sleep(0.2)
    request.transport.abort()
    return resp


def test_defect9_decode_death_mid_stream_ends_the_stream_with_an_error_event():
    """Defect 9: when decode died mid-stream the client's stream was cut with no error event (HTTP 200 was
    already sent), indistinguishable from a network fault; a dying prefill at least gives an abort chunk."""

    async def body():
        prefill = await StandIn("prefill", prefill_load()).start()
        async with App(_dying_stream, decode_load()) as decode:
            proxy = await _proxy(prefill.url, decode.url)
            events: list[str] = []
            try:
                async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
                    async with http.post(proxy.url + "/generate", json={"text": "x", "stream": True}) as resp:
                        assert resp.status == 200
                        try:
                            async for raw in resp.content:
                                if raw.strip():
                                    events.append(raw.decode().strip())
                        except aiohttp.ClientPayloadError:
                            pass  # the cut stream; what counts is whether an error event came first
            finally:
                await proxy.stop()
                await prefill.stop()
        assert events[:2] == ['data: {"text": "0"}', 'data: {"text": "1"}'], events
        assert events[-1].startswith("data:") and "error" in json.loads(events[-1][5:]), events

    run(body())


# ---- defect 10: malformed requests ---------------------------------------------------------------------------


async def _post_raw(proxy: Proxy, path: str, data: bytes, method: str = "POST") -> tuple[int, str, str]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http:
        async with http.request(method, proxy.url + path, data=data,
                                headers={"Content-Type": "application/json"}) as resp:  # fmt: skip
            return resp.status, resp.content_type, await resp.text()


def _nested(depth: int) -> dict:
    inner: object = 1
    for _ in range(depth):
        inner = {"a": inner}
    return inner


MALFORMED_TODAY_500 = {
    "text-list-with-a-number": json.dumps({"text": ["a", 1]}).encode(),
    "input-ids-mixed-list": json.dumps({"input_ids": [[1, 2], 3]}).encode(),
    "100k-deep-json": b"[" * 100_000 + b"]" * 100_000,
    "900-deep-custom-params": json.dumps({"text": "x", "sampling_params": {"custom_params": _nested(900)}}).encode(),
}


@pytest.mark.parametrize("case", sorted(MALFORMED_TODAY_500))
def test_defect10_malformed_requests_get_a_400_json_error_with_bounded_logging(case, caplog):
    """Defect 10: these gave HTTP 500 from unhandled exceptions in the proxy (a 1.9 KB request with a 900-deep
    field logged 139 KB of traceback); each must be a 400 with a one-line JSON error, and log little."""
    data = MALFORMED_TODAY_500[case]

    async def body():
        prefill, decode = StandIn("prefill", prefill_load()), StandIn("decode", decode_load())
        await prefill.start()
        await decode.start()
        proxy = await _proxy(prefill.url, decode.url)
        try:
            return await _post_raw(proxy, "/generate", data), prefill.bodies + decode.bodies
        finally:
            await proxy.stop()
            await prefill.stop()
            await decode.stop()

    with caplog.at_level(logging.DEBUG):
        (status, content_type, text), forwarded = run(body())
    assert status == 400, (status, text[:300])
    assert content_type == "application/json" and "\n" not in json.loads(text)["error"]["message"], text[:300]
    assert forwarded == []  # nothing reached the instances
    logged = sum(len(r.getMessage()) + len(str(r.exc_text or "")) for r in caplog.records)
    assert logged < 4096, f"{logged} characters logged for one bad request"


def test_defect10_negative_input_ids_are_refused_at_the_front_door():
    """Defect 10: a negative token id crashes SGLang's prefill (IndexError in the embedding; SGLang does not
    check); the proxy must answer 400 and forward nothing. Out-of-vocabulary ids: tests/e2e (needs the model)."""

    async def body():
        prefill, decode = StandIn("prefill", prefill_load()), StandIn("decode", decode_load())
        await prefill.start()
        await decode.start()
        proxy = await _proxy(prefill.url, decode.url)
        try:
            return await _post_raw(proxy, "/generate", json.dumps({"input_ids": [1, -5, 2]}).encode()), \
                prefill.bodies + decode.bodies  # fmt: skip
        finally:
            await proxy.stop()
            await prefill.stop()
            await decode.stop()

    (status, _, text), forwarded = run(body())
    assert status == 400 and "input_ids" in json.loads(text)["error"]["message"], (status, text[:300])
    assert forwarded == []


@pytest.mark.parametrize("method, path, status", [("GET", "/no/such/path", 404), ("GET", "/generate", 405)])
def test_defect10_unknown_path_and_wrong_method_get_our_json_error(method, path, status):
    async def body():
        prefill, decode = StandIn("prefill", prefill_load()), StandIn("decode", decode_load())
        await prefill.start()
        await decode.start()
        proxy = await _proxy(prefill.url, decode.url)
        try:
            return await _post_raw(proxy, path, b"", method=method)
        finally:
            await proxy.stop()
            await prefill.stop()
            await decode.stop()

    got, content_type, text = run(body())
    assert got == status, (got, text[:200])
    assert content_type == "application/json", (content_type, text[:200])
    assert json.loads(text)["error"]["code"] == status


# ---- defect 12: the proxy's own load and metrics ----------------------------------------------------------


def test_defect12_proxy_answers_adrenaline_load():
    """Defect 12: `/adrenaline/load` existed only on the servers; a user asking the proxy (the one address the
    launcher prints) got 404. The proxy answers with the instances it routes to."""

    async def body():
        prefill, decode = StandIn("prefill", prefill_load()), StandIn("decode", decode_load())
        await prefill.start()
        await decode.start()
        proxy = await _proxy(prefill.url, decode.url, metrics_port=0)
        try:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=10)) as http:
                async with http.get(proxy.url + "/adrenaline/load") as resp:
                    return resp.status, await resp.text()
        finally:
            await proxy.stop()
            await prefill.stop()
            await decode.stop()

    status, text = run(body())
    assert status == 200, (status, text[:200])
    assert prefill_load()["executor_addr"] in text  # the prefill instance's report is in it


@pytest.mark.parametrize("endpoint, body", [
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}], "n": 2, "max_tokens": 4}),
    ("/generate", {"text": "hi", "sampling_params": {"n": 2, "max_new_tokens": 4}}),
])  # fmt: skip
def test_defect2_more_than_one_sample_gets_a_400_not_a_hang(endpoint, body):
    """Defect 2: SGLang's PD mode gives every sample of a request one bootstrap room, so decode waits for KV that
    never comes (it hung over 60 s with policy never). The front door refuses it with a clear error."""
    from adrenaline_sgl.proxy import request as rq

    kind = endpoint.lstrip("/")
    with pytest.raises(rq.BadRequest, match="field 'n'"):
        rq.request_info(body, kind)
    assert rq.request_info({**body, "n": 1} if "messages" in body else
                           {"text": "hi", "sampling_params": {"n": 1, "max_new_tokens": 4}}, kind).max_new_tokens == 4


# ---- must-show: a burst of 128 concurrent requests -------------------------------------------------------


def test_burst_of_150_concurrent_requests_all_answered_none_waits_for_a_pool_slot():
    """The chaos burst of 128 got 53 proxy 504s (`upstream_timeout`) with both servers healthy: aiohttp's pool
    holds 100 connections and its `connect` timeout counts the wait for a slot, while every request holds one
    connection to each side for its whole life. 150 requests held 1.5 s each by the stand-ins, connect timeout
    0.5 s: all 200, and the load pulls stay fresh meanwhile (their own session)."""

    async def body():
        prefill = StandIn("prefill", prefill_load(), delay_s=1.5)
        decode = StandIn("decode", decode_load(), delay_s=1.5)
        await prefill.start()
        await decode.start()
        proxy = await _proxy(prefill.url, decode.url, connect_timeout_s=0.5, load_interval_s=0.2)
        try:
            async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0),
                                             timeout=aiohttp.ClientTimeout(total=30)) as http:  # fmt: skip
                async def one(i):
                    async with http.post(proxy.url + "/generate", json={"text": f"q{i}", "sampling_params": {}}) as r:
                        return r.status, await r.text()

                task = asyncio.gather(*(one(i) for i in range(150)))
                await asyncio.sleep(1.0)  # mid-burst: every request holds its two upstream connections
                ages = [time.monotonic() - proxy.poller.pulled_at(u) for u in (prefill.url, decode.url)]
                return await task, ages
        finally:
            await proxy.stop()
            await prefill.stop()
            await decode.stop()

    replies, ages = run(body())
    statuses = [s for s, _ in replies]
    assert statuses.count(200) == 150, [(s, t[:120]) for s, t in replies if s != 200][:3]
    assert all(a < 1.0 for a in ages), ages  # s; pulled every 0.2 s during the burst
