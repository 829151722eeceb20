"""The proxy against stand-in prefill and decode servers: protocol, decisions, errors, metrics."""

from __future__ import annotations

import asyncio
import random
import socket
import time

import aiohttp
import pytest

from adrenaline_sgl.proxy.config import ProxyConfig
from adrenaline_sgl.proxy.fake_instance import StandIn, decode_load, prefill_load
from adrenaline_sgl.proxy.server import Proxy


def run(coro, timeout_s: float = 30.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class Stack:
    """prefill + decode stand-ins and a proxy in front of them (async context manager)."""

    def __init__(self, policy="always", p_load=None, d_load=None, d_delay_s=0.0, decode_url=None, **cfg):
        self.prefill = StandIn("prefill", prefill_load() if p_load is None else p_load)
        self.decode = StandIn("decode", decode_load() if d_load is None else d_load, delay_s=d_delay_s)
        self.policy, self.decode_url, self.cfg = policy, decode_url, cfg

    async def __aenter__(self):
        await self.prefill.start()
        await self.decode.start()
        cfg = ProxyConfig(prefill=((self.prefill.url, 8998),), decode=(self.decode_url or self.decode.url,),
                          port=0, policy=self.policy, **self.cfg)  # fmt: skip
        self.proxy = Proxy(cfg, rng=random.Random(0))
        await self.proxy.start()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20))
        return self

    async def __aexit__(self, *exc):
        await self.http.close()
        await self.proxy.stop()
        await self.prefill.stop()
        await self.decode.stop()

    async def post(self, path, payload=None, data=None):
        async with self.http.post(self.proxy.url + path, json=payload, data=data) as resp:
            return resp.status, await resp.json(content_type=None)


def test_mini_lb_fields_injected_and_same_body_to_both():
    async def body():
        async with Stack(policy="always") as s:
            status, out = await s.post("/generate", {"text": "hello", "sampling_params": {"max_new_tokens": 8}})
            assert status == 200 and out["text"] == "answer from decode"
            assert s.prefill.bodies == s.decode.bodies and len(s.decode.bodies) == 1
            sent = s.decode.bodies[0]
            assert sent["bootstrap_host"] == "127.0.0.1" and sent["bootstrap_port"] == 8998
            assert isinstance(sent["bootstrap_room"], int) and 0 <= sent["bootstrap_room"] < 2**63
            assert sent["sampling_params"]["max_new_tokens"] == 8
            assert sent["sampling_params"]["custom_params"] == {
                "adrenaline_offload": True,
                "adrenaline_executor": "127.0.0.1:31000",
            }

    run(body())


def test_batch_gets_per_item_bootstrap_fields_and_marks():
    async def body():
        async with Stack(policy="never") as s:
            payload = {"text": ["a", "b", "c"], "sampling_params": [{"custom_params": {"mine": 1}}, None, {}]}
            status, _ = await s.post("/generate", payload)
            assert status == 200
            sent = s.decode.bodies[0]
            assert sent["bootstrap_host"] == ["127.0.0.1"] * 3 and sent["bootstrap_port"] == [8998] * 3
            assert len(set(sent["bootstrap_room"])) == 3
            assert [sp["custom_params"]["adrenaline_offload"] for sp in sent["sampling_params"]] == [False] * 3
            assert sent["sampling_params"][0]["custom_params"]["mine"] == 1  # the client's own params kept

    run(body())


def test_ratio_policy_uses_the_scheduler_admission_and_metrics_show_it():
    """ratio:1 is the scheduler's bound OB = 1: with requests in flight, offloaded <= local (C2)."""

    async def body():
        async with Stack(policy="ratio:1", d_delay_s=0.5) as s:
            results = await asyncio.gather(*(s.post("/generate", {"input_ids": [1, 2, 3]}) for _ in range(4)))
            assert [status for status, _ in results] == [200] * 4
            marks = [b["sampling_params"]["custom_params"]["adrenaline_offload"] for b in s.decode.bodies]
            assert sorted(marks) == [False, False, True, True]  # local, off, local, off in arrival order
            assert len(s.proxy.ledger) == 0  # every request left the ledger when it finished
            async with s.http.get(s.proxy.url + "/metrics") as resp:
                text = await resp.text()
            assert "adrenaline_proxy_offloaded_share 0.5" in text
            assert 'adrenaline_proxy_requests_total{offloaded="true",reason="ok"} 2.0' in text
            assert 'adrenaline_proxy_requests_total{offloaded="false",reason="c2-tokens"} 2.0' in text
            assert "adrenaline_proxy_request_latency_seconds_count 4.0" in text

    run(body())


def test_policy_never_keeps_everything_local():
    async def body():
        async with Stack(policy="never") as s:
            assert (await s.post("/generate", {"input_ids": [1, 2, 3]}))[0] == 200
            assert s.decode.bodies[0]["sampling_params"]["custom_params"] == {"adrenaline_offload": False}

    run(body())


def test_openai_endpoints_mark_top_level_custom_params():
    async def body():
        async with Stack(policy="always") as s:
            status, out = await s.post("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})
            assert status == 200 and out["text"] == "answer from decode"
            status, _ = await s.post("/v1/completions", {"prompt": "hi", "max_tokens": 4})
            assert status == 200
            for sent in s.decode.bodies:
                assert sent["custom_params"]["adrenaline_offload"] is True
                assert "bootstrap_room" in sent

    run(body())


def test_streaming_relays_the_decode_stream():
    async def body():
        async with Stack(policy="always") as s:
            async with s.http.post(s.proxy.url + "/generate", json={"text": "x", "stream": True}) as resp:
                assert resp.status == 200
                text = await resp.text()
            assert "decode-0" in text and "decode-2" in text and "[DONE]" in text and "prefill" not in text

    run(body())


def test_logprobs_of_prefill_are_merged_like_mini_lb():
    async def body():
        async with Stack(policy="never") as s:
            _, out = await s.post("/generate", {"text": "x", "return_logprob": True})
            assert out["meta_info"]["input_token_logprobs"] == [[-0.5, 1, None]]

    run(body())


@pytest.mark.parametrize(
    "payload, data, field",
    [
        (None, b"{not json", "not valid JSON"),
        ([1, 2], None, "expected a JSON object"),
        ({"sampling_params": {}}, None, "'text' or 'input_ids'"),
        ({"text": "x", "sampling_params": "greedy"}, None, "sampling_params"),
        ({"text": "x", "sampling_params": {"custom_params": [1]}}, None, "custom_params"),
        ({"text": "x", "sampling_params": {"max_new_tokens": -3}}, None, "max_new_tokens"),
        ({"input_ids": []}, None, "input_ids"),
    ],
)
def test_malformed_generate_gets_a_4xx_json_error(payload, data, field):
    async def body():
        async with Stack() as s:
            status, out = await s.post("/generate", payload, data=data)
            assert status == 400
            assert out["error"]["type"] == "invalid_request" and field in out["error"]["message"]
            assert s.decode.bodies == [] and s.prefill.bodies == []

    run(body())


def test_malformed_chat_gets_a_4xx_json_error():
    async def body():
        async with Stack() as s:
            status, out = await s.post("/v1/chat/completions", {"messages": "hi"})
            assert status == 400 and "messages" in out["error"]["message"]

    run(body())


@pytest.mark.parametrize(
    "p_load, reason",
    [(prefill_load(healthy=False), "executor unavailable"), ({}, "executor unavailable")],
    ids=["executor-down", "no-load-endpoint-data"],
)
def test_unavailable_executor_decodes_locally(p_load, reason):
    async def body():
        async with Stack(policy="always", p_load=p_load) as s:
            status, _ = await s.post("/generate", {"text": "x"})
            assert status == 200
            assert s.decode.bodies[0]["sampling_params"]["custom_params"] == {"adrenaline_offload": False}
            async with s.http.get(s.proxy.url + "/metrics") as resp:
                assert f'reason="{reason}"' in await resp.text()

    run(body())


def test_stock_prefill_without_load_endpoint_decodes_locally():
    async def body():
        s = Stack(policy="always")
        s.prefill.load = None  # 404 on /adrenaline/load
        async with s:
            assert (await s.post("/generate", {"text": "x"}))[0] == 200
            assert s.decode.bodies[0]["sampling_params"]["custom_params"]["adrenaline_offload"] is False

    run(body())


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_decode_fails_fast_with_a_clear_error():
    async def body():
        dead = f"http://127.0.0.1:{_closed_port()}"
        async with Stack(policy="always", decode_url=dead) as s:
            t0 = time.monotonic()
            status, out = await s.post("/generate", {"text": "x"})
            assert status == 502 and out["error"]["type"] == "upstream_unreachable"
            assert dead in out["error"]["message"]
            assert time.monotonic() - t0 < 5.0
            # the unreachable decode also means no offload: its load pull failed (prefill may not even see the
            # body: decode's refused connect cancels the prefill half)
            routed = s.proxy.metrics.requests.labels(offloaded="false", reason="decode not offload-capable")
            assert routed._value.get() == 1
            assert all(b["sampling_params"]["custom_params"]["adrenaline_offload"] is False for b in s.prefill.bodies)

    run(body())


def test_slow_decode_times_out_instead_of_hanging():
    async def body():
        async with Stack(policy="never", d_delay_s=10.0, request_timeout_s=0.5) as s:
            t0 = time.monotonic()
            status, out = await s.post("/generate", {"text": "x"})
            assert status == 504 and out["error"]["type"] == "upstream_timeout"
            assert time.monotonic() - t0 < 3.0
            await asyncio.sleep(0.2)
            assert s.decode.cancelled == 1  # the proxy hung up, so the instance stops working on it

    run(body())


def test_separate_metrics_port_reports_executor_memory_and_rtt():
    async def body():
        async with Stack(p_load=prefill_load(kv_bytes=4096), d_load=decode_load(rtt_ms=1.5), metrics_port=0) as s:
            assert s.proxy.metrics_port and s.proxy.metrics_port != s.proxy.port
            async with s.http.get(f"http://127.0.0.1:{s.proxy.metrics_port}/metrics") as resp:
                text = await resp.text()
            assert f'adrenaline_executor_kv_bytes{{instance="{s.prefill.url}"}} 4096.0' in text
            assert f'adrenaline_offload_round_trip_ms{{instance="{s.decode.url}"}} 1.5' in text
            async with s.http.get(s.proxy.url + "/metrics") as resp:  # the same metrics on the proxy's own port
                assert resp.status == 200 and "adrenaline_executor_kv_bytes" in await resp.text()

    run(body())


def test_metrics_expose_decodes_own_offload_stats_and_their_staleness():
    fresh = {**decode_load(rtt_ms=1.5), "offload_stats_ok": True, "offload_rtt_p50_ms": 1.25,
             "offload_rtt_p99_ms": 4.5, "offload_rtt_samples": 300, "offloaded_reqs": 3, "offload_failed_reqs": 1}

    async def body():
        async with Stack(d_load=fresh) as s:
            async with s.http.get(s.proxy.url + "/metrics") as resp:
                text = await resp.text()
            for name, value in (("offload_round_trip_ms", 1.5), ("offload_round_trip_p99_ms", 4.5),
                                ("decode_offloaded_requests", 3.0), ("decode_offload_failed_requests", 1.0),
                                ("decode_offload_stats_ok", 1.0)):  # fmt: skip
                assert f'adrenaline_{name}{{instance="{s.decode.url}"}} {value}' in text, name
            s.decode.load = decode_load()  # an older plugin, or its scheduler did not answer: stats unknown
            await s.proxy.poller.pull_once(s.http)
            async with s.http.get(s.proxy.url + "/metrics") as resp:
                text = await resp.text()
            assert f'adrenaline_decode_offload_stats_ok{{instance="{s.decode.url}"}} 0.0' in text
            assert f'adrenaline_offload_round_trip_p99_ms{{instance="{s.decode.url}"}} 0.0' in text
            assert f'adrenaline_decode_offloaded_requests{{instance="{s.prefill.url}"}}' not in text  # decode only

    run(body())


def test_read_only_gets_are_forwarded_like_mini_lb():
    """sglang.benchmark.serving polls /v1/models before it starts; model info comes from prefill, server info
    from decode, and an unknown GET is a 404, not a forward."""

    async def body():
        async with Stack() as s:
            for path, instance in (("/v1/models", "prefill"), ("/get_server_info", "decode")):
                async with s.http.get(s.proxy.url + path) as resp:
                    assert resp.status == 200
                    assert await resp.json() == {"instance": instance, "path": path}
            async with s.http.get(s.proxy.url + "/flush_everything") as resp:
                assert resp.status == 404

    run(body())


def test_read_only_get_with_an_unreachable_instance_is_a_502_json_error():
    async def body():
        dead = f"http://127.0.0.1:{_closed_port()}"
        async with Stack(decode_url=dead) as s:
            async with s.http.get(s.proxy.url + "/get_server_info") as resp:
                out = await resp.json()
                assert resp.status == 502 and out["error"]["type"] == "upstream_unreachable"

    run(body())
