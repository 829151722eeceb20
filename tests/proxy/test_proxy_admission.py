"""Issue 18, the proxy's half of the Build list, on stand-in instances: capacity admission (never offload what the
chosen executor cannot hold), a pause of offloading to an executor whose offloads fail and its resumption,
routing around a down instance, failed offloads counted (never "ok"), token ids against the vocabulary."""

from __future__ import annotations

import asyncio
import random

import aiohttp
import pytest

from adrenaline_sgl.proxy.config import ProxyConfig
from adrenaline_sgl.proxy.fake_instance import StandIn, decode_load, prefill_load
from adrenaline_sgl.proxy.server import Proxy
from adrenaline_sgl.proxy.tokens import TokenCounter


def run(coro, timeout_s: float = 60.0):
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


class Stack:
    """Stand-ins (`prefills` x `decodes`) and a proxy in front; `cfg` goes to ProxyConfig."""

    def __init__(self, p_load: dict, decodes: int = 1, d_delay_s: float = 0.0, tokens=None, **cfg):
        self.prefill = StandIn("prefill", p_load)
        self.decodes = [StandIn("decode", decode_load(), delay_s=d_delay_s) for _ in range(decodes)]
        self.cfg, self.tokens = cfg, tokens

    async def __aenter__(self):
        await self.prefill.start()
        for d in self.decodes:
            await d.start()
        cfg = ProxyConfig(prefill=((self.prefill.url, 8998),), decode=tuple(d.url for d in self.decodes), port=0,
                          policy="always", **self.cfg)  # fmt: skip
        self.proxy = Proxy(cfg, rng=random.Random(0), tokens=self.tokens)
        await self.proxy.start()
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc):
        await self.http.close()
        await self.proxy.stop()
        await self.prefill.stop()
        for d in self.decodes:
            if d._runner is not None:
                await d.stop()

    async def generate(self, chars: int = 400, max_new_tokens: int = 300, batch: int = 0, **extra) -> tuple[int, dict]:
        text = ["x" * chars] * batch if batch else "x" * chars
        body = {"text": text, "sampling_params": {"max_new_tokens": max_new_tokens, **extra}}
        async with self.http.post(self.proxy.url + "/generate", json=body) as resp:
            return resp.status, await resp.json(content_type=None)

    async def metrics(self) -> str:
        async with self.http.get(self.proxy.url + "/metrics") as resp:
            return await resp.text()


def _offloaded(body: dict) -> bool:
    return body["sampling_params"]["custom_params"]["adrenaline_offload"]


def test_capacity_admission_counts_requests_in_flight_at_full_length():
    """Executor reserve 1000 tokens; each request needs 100 prompt (400 chars / 4) + 300 new = 400 tokens at its
    end. Two in flight fit (800), a third does not (1200): it decodes locally (stock PD) instead of running the
    reserve out mid-decode (issue 18 defect 1). Once they finish, offloading resumes."""

    async def body():
        load = prefill_load(executor_free_tokens=1000, executor_capacity_tokens=1000)
        async with Stack(load, d_delay_s=1.0, load_interval_s=0.2) as s:
            first = await asyncio.gather(*(s.generate() for _ in range(3)))
            assert [status for status, _ in first] == [200] * 3
            assert sorted(_offloaded(b) for b in s.decodes[0].bodies) == [False, True, True]
            assert 'reason="executor full"' in await s.metrics()
            assert (await s.generate())[0] == 200 and _offloaded(s.decodes[0].bodies[-1])  # room again
            assert (await s.generate(max_new_tokens=950))[0] == 200  # 1050 > 1000: never fits
            assert not _offloaded(s.decodes[0].bodies[-1])

    run(body())


def test_capacity_admission_counts_what_was_sent_since_the_last_report_and_every_sequence():
    """The report says 500 free (another proxy's requests hold the rest); until the next report the proxy counts
    what it sent there since. A batch of 2 decodes two sequences: twice the KV."""

    async def body():
        load = prefill_load(executor_free_tokens=500, executor_capacity_tokens=10_000)
        async with Stack(load, d_delay_s=0.5, load_interval_s=60.0) as s:  # no new report during the test
            await asyncio.gather(s.generate(), s.generate())
            assert sorted(_offloaded(b) for b in s.decodes[0].bodies) == [False, True]
            await s.generate()  # both finished (their KV is back): the report's 500 hold again
            assert _offloaded(s.decodes[0].bodies[-1])
        async with Stack(load, load_interval_s=60.0) as s:
            await s.generate(chars=400, max_new_tokens=100, batch=3)  # 3 x (100 + 100) = 600 > 500
            await s.generate(chars=400, max_new_tokens=100, batch=2)  # 2 x 200 = 400 <= 500
            assert [_offloaded(b) for b in s.decodes[0].bodies] == [False, True]

    run(body())


def test_failing_offloads_pause_offloading_to_that_executor_and_it_resumes():
    """The executor answers its health check but offloaded requests fail (issue 18 defect 5: a restarted
    prefill): after 2 failures in a row the proxy decodes locally for `offload_pause_s`, then offloads again.
    The failures are counted as errors and offload failures, never as ok (defect 6)."""

    async def body():
        async with Stack(prefill_load(), offload_pause_s=1.0, offload_failures_to_pause=2) as s:
            decode = s.decodes[0]
            decode.fail_offloaded = 503
            statuses = [(await s.generate(max_new_tokens=4))[0] for _ in range(3)]
            assert statuses == [503, 503, 200]
            assert [_offloaded(b) for b in decode.bodies] == [True, True, False]  # the third: paused, local
            text = await s.metrics()
            assert f'adrenaline_proxy_offload_failures_total{{instance="{s.prefill.url}"}} 2.0' in text
            assert 'adrenaline_proxy_outcomes_total{offloaded="true",outcome="error"} 2.0' in text
            assert 'outcome="ok"' in text and 'offloaded="true",outcome="ok"' not in text
            assert 'reason="executor failing"' in text
            async with s.http.get(s.proxy.url + "/adrenaline/load") as resp:
                assert (await resp.json())["offload_failures"][s.prefill.url]["failed_in_a_row"] == 2
            decode.fail_offloaded = 0  # the executor works again
            await asyncio.sleep(1.1)
            assert (await s.generate(max_new_tokens=4))[0] == 200 and _offloaded(decode.bodies[-1])
            assert 'adrenaline_proxy_outcomes_total{offloaded="true",outcome="ok"} 1.0' in await s.metrics()

    run(body())


def test_an_unhealthy_executor_gets_no_offload_until_it_is_healthy_again():
    async def body():
        async with Stack(prefill_load(healthy=False), load_interval_s=0.1) as s:
            await s.generate(max_new_tokens=4)
            assert not _offloaded(s.decodes[0].bodies[-1])
            s.prefill.load["executor_healthy"] = True
            await asyncio.sleep(0.4)  # the next load pulls
            await s.generate(max_new_tokens=4)
            assert _offloaded(s.decodes[0].bodies[-1])

    run(body())


def test_a_down_decode_instance_is_routed_around():
    async def body():
        async with Stack(prefill_load(), decodes=2, load_interval_s=0.1) as s:
            dead, alive = s.decodes
            await dead.stop()
            dead._runner = None
            await asyncio.sleep(0.4)  # a pull sees it refuse connections
            statuses = [(await s.generate(max_new_tokens=4))[0] for _ in range(8)]
            assert statuses == [200] * 8 and len(alive.bodies) == 8
            async with s.http.get(s.proxy.url + "/adrenaline/load") as resp:
                instances = (await resp.json())["instances"]
            assert instances[dead.url]["up"] is False and instances[alive.url]["up"] is True

    run(body())


@pytest.mark.parametrize("ids, ok", [([0, 5, 99], True), ([1, 100], False), ([[1, 2], [3, 100]], False),
                                     ([1, True], False)])  # fmt: skip
def test_token_ids_are_checked_against_the_served_vocabulary(ids, ok):
    async def body():
        async with Stack(prefill_load(), tokens=TokenCounter(vocab_size=100)) as s:
            async with s.http.post(s.proxy.url + "/generate", json={"input_ids": ids}) as resp:
                status, out = resp.status, await resp.json(content_type=None)
            async with s.http.post(s.proxy.url + "/v1/completions", json={"prompt": ids}) as resp:
                completions = resp.status
            return status, out, completions, len(s.decodes[0].bodies)

    status, out, completions, forwarded = run(body())
    if ok:
        assert (status, completions, forwarded) == (200, 200, 2)
    else:
        assert (status, completions, forwarded) == (400, 400, 0) and "input_ids" in out["error"]["message"]
