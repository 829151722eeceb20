"""The event loop with the test-double costs and policy: hand-computed timelines and invariants."""


import numpy as np
import pytest

from adrenaline_sgl.scheduler.admission import Decision
from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.config import SimConfig, WorkloadConfig
from adrenaline_sgl.sim.costs import FakeCosts
from adrenaline_sgl.sim.engine import Simulator, simulate
from adrenaline_sgl.sim.policy import FakePolicy
from adrenaline_sgl.sim.records import DECODE
from adrenaline_sgl.sim.workloads import Requests, make_requests


def _one(prompt=100, output=3, arrival=1.0):
    return Requests(np.array([arrival]), np.array([prompt]), np.array([output]))


def test_single_local_request_timeline_by_hand():
    cfg = SimConfig(offload="never")
    r = Simulator(cfg, _one(), FakeCosts(), FakePolicy(0.0)).run().requests[0]
    # prefill 100 tok x 0.1 ms = 10 ms; transfer 100 x 0.01 = 1 ms; steps: 10 + 0.1 x 1 + 0.001 x ctx(101, 102)
    assert r.prefill_end_s == pytest.approx(1.010)
    assert r.first_token_s == pytest.approx(1.011)
    assert r.finish_s == pytest.approx(1.011 + 0.010201 + 0.010202)
    assert not r.offloaded and r.tokens_out == 3


def test_single_offloaded_request_timeline_by_hand():
    cfg = SimConfig(offload="always", executor_sm_share=0.2)
    r = Simulator(cfg, _one(), FakeCosts(), FakePolicy(None)).run().requests[0]
    # prefill on 80% of the SMs: 12.5 ms; metadata: one round trip 0.05 ms; each step: nonattn 10.1 ms +
    # remote attention 0.001 x ctx / 0.2 + 10 layers x 0.05 ms round trip (no local rows to hide it under)
    assert r.offloaded
    assert r.prefill_end_s == pytest.approx(1.0125)
    assert r.first_token_s == pytest.approx(1.01255)
    assert r.finish_s == pytest.approx(1.01255 + (10.1 + 0.505 + 0.5 + 10.1 + 0.51 + 0.5) / 1e3)


def test_roundtrip_hides_under_long_local_attention():
    class ShortOnes:  # offload the short request only
        def decide(self, request, stats):
            return Decision(request.prompt_tokens < 1000, "test", 1.0)

    reqs = Requests(np.array([0.0, 0.0]), np.array([3000, 100]), np.array([50, 50]))
    cfg = SimConfig(offload="ratio:1")
    res = Simulator(cfg, reqs, FakeCosts(), ShortOnes()).run()
    assert [r.offloaded for r in res.requests] == [False, True]
    both = [s for s in res.steps if s.kind == DECODE and s.batch == 2]
    assert both and all(s.exposed_roundtrip_ms == 0 and s.hidden_roundtrip_ms == pytest.approx(0.5) for s in both)


@pytest.mark.parametrize("policy", ["never", "ratio:0.5", "always"])
def test_conservation_every_request_finishes_once_with_its_tokens(policy):
    cfg = SimConfig(offload=policy)
    wl = WorkloadConfig(request_rate=4.0, num_requests=150, seed=3)
    res = simulate(cfg, wl, costs="fake", policy="fake")
    asked = make_requests(wl).output_len
    assert [r.rid for r in res.requests] == list(range(150))
    assert all(np.isfinite(r.finish_s) for r in res.requests)
    assert [r.tokens_out for r in res.requests] == asked.tolist()
    decode_tokens = sum(s.batch for s in res.steps if s.kind == DECODE)
    assert decode_tokens == int((asked - 1).sum())  # one token per row per step; the first came from prefill
    for r in res.requests:
        assert r.arrival_s <= r.prefill_start_s < r.prefill_end_s <= r.first_token_s <= r.finish_s


@pytest.mark.parametrize("admission", ["reserve-max", "watermark"])
@pytest.mark.parametrize("policy", ["never", "always"])
def test_memory_never_exceeds_capacity_under_overload(policy, admission):
    costs = FakeCosts(kv_capacity_tokens=6000)
    cfg = SimConfig(offload=policy, decode_kv_admission=admission,
                        decode_reserved_tokens=16)
    wl = WorkloadConfig(request_rate=50.0, num_requests=200, seed=1, max_context=2048)
    reqs = make_requests(wl)
    res = Simulator(cfg, reqs, costs, FakePolicy(0.0 if policy == "never" else None)).run()
    assert metrics.max_memory_excess(res.mem, costs.kv_capacity_tokens) <= 0
    assert max(m.kv_reserved_tokens for m in res.mem) > 0.8 * costs.kv_capacity_tokens  # the limit was hit
    last = {}
    for m in res.mem:
        last[(m.kind, m.instance)] = m
    assert all(m.kv_used_tokens == 0 and m.kv_reserved_tokens == 0 for m in last.values())  # all freed


def test_offload_never_is_the_pd_baseline_and_never_asks_the_policy():
    class Refuses:
        def decide(self, request, stats):
            raise AssertionError("offload never must not ask the policy")

    sim = Simulator(SimConfig(offload="never", executor_sm_share=0.5), _one(), FakeCosts(), Refuses())
    assert sim.prefill_sm_share == 1.0  # the executor takes no SMs from prefill
    r = sim.run().requests[0]
    assert not r.offloaded and r.tokens_out == r.output_len


def test_same_seed_same_run_other_seed_other_run():
    cfg = SimConfig(offload="ratio:0.6", n_prefill=2, n_decode=2)
    runs = [simulate(cfg, WorkloadConfig(request_rate=5.0, num_requests=100, seed=s), costs="fake", policy="fake")
            for s in (11, 11, 12)]
    key = [[(r.first_token_s, r.finish_s, r.offloaded) for r in run.requests] for run in runs]
    assert key[0] == key[1] and key[0] != key[2]
    assert {r.decode_instance for r in runs[0].requests} == {0, 1}
    assert {r.prefill_instance for r in runs[0].requests} == {0, 1}


def test_request_longer_than_a_gpu_is_a_clear_error():
    with pytest.raises(ValueError, match="KV tokens but a GPU holds"):
        Simulator(SimConfig(offload="never"), _one(prompt=30_000), FakeCosts(), FakePolicy(0.0))


def test_executor_gets_only_the_bandwidth_a_running_prefill_leaves():
    costs = FakeCosts()
    sim = Simulator(SimConfig(offload="always"), _one(), costs, FakePolicy(None))
    p = sim.prefill[0]
    alone = sim._executor_attn(p, rows=4, context_tokens=100_000)
    assert alone.ms == pytest.approx(0.001 * 100_000 / 0.2)  # the cost model's time at the executor's share
    p.busy, p.busy_bytes_per_s = True, costs.info.peak_hbm_bytes_per_s - 1e8  # 0.1 GB/s left over
    squeezed = sim._executor_attn(p, rows=4, context_tokens=100_000)
    assert squeezed.ms == pytest.approx(alone.bytes / 1e8 * 1e3)  # 1e8 bytes at 0.1 GB/s: 1000 ms
    assert squeezed.bytes == alone.bytes and squeezed.ms > alone.ms


def test_memory_bound_holds_on_two_by_two_with_offload():
    costs = FakeCosts(kv_capacity_tokens=8000)
    cfg = SimConfig(offload="ratio:1", n_prefill=2, n_decode=2, prefill_kv_reserve_tokens=2000)
    reqs = make_requests(WorkloadConfig(request_rate=40.0, num_requests=200, seed=5, max_context=2048))
    res = Simulator(cfg, reqs, costs, FakePolicy(1.0)).run()
    assert metrics.max_memory_excess(res.mem, costs.kv_capacity_tokens) <= 0
    assert all(np.isfinite(r.finish_s) for r in res.requests) and any(r.offloaded for r in res.requests)
    assert {(r.prefill_instance, r.decode_instance) for r in res.requests} >= {(0, 0), (1, 1)}


def test_watermark_admission_retracts_and_restores_without_losing_tokens():
    costs = FakeCosts(kv_capacity_tokens=6000)
    cfg = SimConfig(offload="never", decode_kv_admission="watermark", decode_reserved_tokens=0)
    reqs = make_requests(WorkloadConfig(request_rate=50.0, num_requests=200, seed=1, max_context=2048))
    res = Simulator(cfg, reqs, costs, FakePolicy(0.0)).run()
    retracted = [r for r in res.requests if r.retractions]
    assert retracted  # memory ran out mid-decode with no headroom reserved
    assert [r.tokens_out for r in res.requests] == reqs.output_len.tolist()
    decode_tokens = sum(s.batch for s in res.steps if s.kind == DECODE)
    assert decode_tokens == int((reqs.output_len - 1).sum())  # restored KV: nothing is decoded twice
    assert metrics.max_memory_excess(res.mem, costs.kv_capacity_tokens) <= 0
    reserve_max = Simulator(SimConfig(offload="never", decode_kv_admission="reserve-max"), reqs, costs,
                            FakePolicy(0.0)).run()
    assert not any(r.retractions for r in reserve_max.requests)


def test_decode_admission_follows_sglang_pop_preallocated_by_hand():
    # capacity 4000, 512 reserved per local request: A and B fit (4000 - 0 >= 1000 + 512; 3000 - 512 >= 1512),
    # C does not (2000 - 2 x 512 = 976 < 1512) and waits, before prefill, until A or B finishes
    costs = FakeCosts(kv_capacity_tokens=4000)
    cfg = SimConfig(offload="never", decode_kv_admission="watermark", decode_reserved_tokens=512)
    reqs = Requests(np.array([0.0, 0.0, 0.0]), np.array([1000, 1000, 1000]), np.array([20, 40, 5]))
    a, b, c = Simulator(cfg, reqs, costs, FakePolicy(0.0)).run().requests
    assert a.decode_admit_s == b.decode_admit_s == 0.0
    assert c.decode_admit_s == pytest.approx(a.finish_s)  # A frees its KV first (20 tokens < 40)
    assert c.prefill_start_s >= c.decode_admit_s and c.first_token_s > a.finish_s
    assert all(r.retractions == 0 for r in (a, b, c))


@pytest.mark.parametrize("admission", ["reserve-max", "watermark"])
def test_prefill_holds_no_kv_decode_cannot_take_and_ttft_grows_when_decode_memory_binds(admission):
    """SGLang's early allocation: decode allocates a request's KV before prefill runs it, so under overload
    requests queue before prefill (TTFT grows) instead of piling up prefilled KV on the prefill GPU."""
    costs = FakeCosts(kv_capacity_tokens=20_000)
    cfg = SimConfig(offload="never", decode_kv_admission=admission, decode_reserved_tokens=64,
                    prefill_token_budget=2048)
    runs = {}
    for rate in (2.0, 200.0):
        reqs = make_requests(WorkloadConfig(request_rate=rate, num_requests=300, seed=2, max_context=2048))
        runs[rate] = Simulator(cfg, reqs, costs, FakePolicy(0.0)).run()
    busy = runs[200.0]
    for r in busy.requests:
        assert r.arrival_s <= r.decode_admit_s <= r.prefill_start_s
    staged = max(m.kv_used_tokens for m in busy.mem if m.kind == "prefill")
    assert staged <= 2 * cfg.prefill_token_budget + 2048  # one batch computing, one being sent, one long prompt
    waited = np.mean([r.decode_admit_s - r.arrival_s for r in busy.requests])
    ttft = {rate: metrics.request_metrics(run.requests).mean_ttft_s for rate, run in runs.items()}
    assert waited > 0.5 * ttft[200.0] and ttft[200.0] > 20 * ttft[2.0]  # the wait is for decode memory


def test_offloaded_requests_take_a_decode_slot_but_no_decode_kv():
    costs = FakeCosts(kv_capacity_tokens=4000)
    cfg = SimConfig(offload="always", decode_reserved_tokens=512, max_decode_batch=2, prefill_kv_reserve_tokens=0)
    reqs = Requests(np.zeros(3), np.array([1000, 1000, 1000]), np.array([10, 10, 10]))
    res = Simulator(cfg, reqs, costs, FakePolicy(None)).run()
    assert all(r.offloaded for r in res.requests)
    assert max(m.kv_reserved_tokens for m in res.mem if m.kind == "decode") == 0
    a, b, c = res.requests
    assert a.decode_admit_s == b.decode_admit_s == 0.0  # 2 request slots
    assert c.decode_admit_s == pytest.approx(min(a.finish_s, b.finish_s))


@pytest.mark.parametrize("overlap", [True, False])
def test_a_request_joins_a_running_decode_as_sglangs_overlap_scheduler_lets_it(overlap):
    """SGLang's decode loop builds step i+1 while step i runs: a request whose KV arrives mid-step gets its first
    token out at the next step boundary (the scheduler's next iteration) and decodes from the step after the
    one starting there (the emulated servers show this one-step lag, docs/simulator.md). Without the overlap
    scheduler (`--disable-overlap-schedule`) it joins the step starting at that boundary."""
    reqs = Requests(np.array([1.0, 1.015]), np.array([100, 100]), np.array([10, 3]))
    res = Simulator(SimConfig(offload="never", decode_overlap_schedule=overlap), reqs, FakeCosts(),
                    FakePolicy(0.0)).run()  # fmt: skip
    a, b = res.requests
    assert a.first_token_s == pytest.approx(1.011)  # decode was idle: A's first token and first step at once
    starts = [s.start_s for s in res.steps if s.kind == DECODE]
    kv_here = b.prefill_end_s + 100 * 0.01e-3  # B's KV transfer ends
    boundary = min(t for t in starts if t >= kv_here)
    joined = [s.start_s for s in res.steps if s.kind == DECODE and s.batch == 2]
    assert len(joined) == b.output_len - 1 and b.tokens_out == 3
    assert b.first_token_s == pytest.approx(boundary) and boundary > kv_here
    assert joined[0] == pytest.approx(min(t for t in starts if t > boundary) if overlap else boundary)
    assert b.finish_s == pytest.approx(max(s.end_s for s in res.steps if s.kind == DECODE and s.batch == 2))
