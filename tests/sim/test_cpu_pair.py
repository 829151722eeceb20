"""The simulator's settings for a pinned CPU pair (issue 14): KV pools given in tokens, a prefill device other
than decode's, and the executor time-sharing one core with prefill."""

import numpy as np
import pytest

from adrenaline_sgl.scheduler.cost_model import get_predictor
from adrenaline_sgl.sim.config import SimConfig
from adrenaline_sgl.sim.costs import FakeCosts, SchedulerCosts
from adrenaline_sgl.sim.engine import Simulator
from adrenaline_sgl.sim.policy import FakePolicy
from adrenaline_sgl.sim.records import EXECUTOR
from adrenaline_sgl.sim.workloads import Requests

CPU = dict(model="smollm2-135m", gpu="cpu-epyc-1core", predictor="table")


def test_pools_in_tokens_replace_the_predictors_capacity():
    costs = SchedulerCosts(SimConfig(**CPU, decode_kv_capacity_tokens=640, prefill_kv_capacity_tokens=8192))
    assert costs.info.kv_capacity_tokens == 640 and costs.prefill_kv_capacity_tokens == 8192
    default = SchedulerCosts(SimConfig(**CPU))
    assert default.info.kv_capacity_tokens == default.prefill_kv_capacity_tokens > 100_000  # 23 GiB of RAM


@pytest.mark.parametrize("field, value, match", [
    ("decode_kv_capacity_tokens", -1, "decode_kv_capacity_tokens=-1 is out of range"),
    ("prefill_kv_capacity_tokens", 2.0**31, "prefill_kv_capacity_tokens=2147483648.0 is out of range"),
    ("executor_colocation", "mps", "executor_colocation='mps' is unknown; valid: partition, timeshare"),
    ("prefill_gpu", None, "prefill_gpu=None must be a device name"),
])  # fmt: skip
def test_bad_cpu_pair_settings_are_one_line_errors(field, value, match):
    with pytest.raises(ValueError, match=match):
        SimConfig(**{field: value})


def test_prefill_device_costs_prefill_and_the_executor_decode_the_rest():
    cfg = SimConfig(model="llama2-7b", gpu="a100-80g", prefill_gpu="h100-sxm")
    costs = SchedulerCosts(cfg)
    a100, h100 = (get_predictor("roofline", g, "llama2-7b") for g in ("a100-80g", "h100-sxm"))
    assert costs.prefill([512], 1.0).ms == pytest.approx(h100.prefill_step_ms([512]))
    assert costs.decode_nonattn(8).ms == pytest.approx(a100.decode_nonattn_ms(8))
    assert costs.decode_attn(8, 8 * 500, 1.0).ms == pytest.approx(a100.decode_attn_ms(8, 8 * 500))
    assert costs.executor_attn(8, 8 * 500, 1.0).ms == pytest.approx(h100.decode_attn_ms(8, 8 * 500))
    assert costs.prefill_kv_capacity_tokens == h100.kv_capacity_tokens(cfg.gpu_mem_util)
    assert costs.info.kv_capacity_tokens == a100.kv_capacity_tokens(cfg.gpu_mem_util)


def _offloaded_run(colocation: str, arrivals, prompts):
    reqs = Requests(np.array(arrivals), np.array(prompts), np.array([20] * len(arrivals)))
    cfg = SimConfig(offload="always", executor_sm_share=0.2, executor_colocation=colocation)
    return Simulator(cfg, reqs, FakeCosts(), FakePolicy(None)).run()


def test_timeshare_prefill_runs_at_full_speed_and_halves_the_executor_while_it_runs():
    # one offloaded request decoding; a long prompt arrives later and its prefill overlaps some steps
    part = _offloaded_run("partition", [0.0], [100])
    share = _offloaded_run("timeshare", [0.0], [100])
    # prefill 100 tokens: 0.1 ms each on the whole core (timeshare) vs on 80% of the SMs (partition)
    assert share.requests[0].prefill_end_s == pytest.approx(0.010)
    assert part.requests[0].prefill_end_s == pytest.approx(0.0125)
    alone = [s for s in share.steps if s.kind == EXECUTOR]
    assert alone[0].end_s - alone[0].start_s == pytest.approx(0.001 * 101 / 1e3)  # whole core: no / share
    both = _offloaded_run("timeshare", [0.0, 0.02], [100, 5000])
    p = both.requests[1]
    during = [s for s in both.steps if s.kind == EXECUTOR and p.prefill_start_s <= s.start_s < p.prefill_end_s]
    assert during and p.prefill_end_s - p.prefill_start_s == pytest.approx(0.5)  # 5000 x 0.1 ms, not slowed
    for s in during:  # the executor's attention at half speed while the prefill runs: 2 x 0.001 ms per token
        ctx = (s.end_s - s.start_s) * 1e3 / 0.001 / 2
        assert 101 <= round(ctx) < 121  # request 0's context (101 + steps so far), not twice it


def test_watermark_admission_charges_an_offloaded_request_no_kv():
    """As the plugin's admission hook (sglang_ext/decode_alloc.admission_tokens_hook): an offloaded request is
    admitted while decode's budget for local requests is not overdrawn, even when it is below the reserve a
    local newcomer needs; once local reserves overdraw it, it waits as SGLang's `prealloc_fits` would."""
    reqs = Requests(np.array([0.0, 0.0]), np.array([10, 10]), np.array([20, 20]))
    sim = Simulator(SimConfig(decode_kv_admission="watermark", decode_reserved_tokens=8), reqs, FakeCosts(),
                    FakePolicy(None))  # fmt: skip
    d = sim.decode[0]
    d.reserved_tokens, d.local_active = d.capacity_tokens - 10, 1  # 10 free - 8 reserved: budget 2
    offloaded, local = sim.reqs
    offloaded.offloaded = True
    assert sim._admit_tokens(d, offloaded) == 0
    assert sim._admit_tokens(d, local) is None  # needs its prompt + the reserve: 18 > 2
    d.local_active = 2  # budget 10 - 16 < 0
    assert sim._admit_tokens(d, offloaded) is None


@pytest.mark.parametrize("first", [True, False])
def test_an_offloaded_request_does_not_wait_behind_a_local_one_waiting_for_decode_memory(first):
    """The plugin's pre-allocation order (sglang_ext/decode_alloc.offloaded_first_hook): a local request
    that does not fit stops SGLang's FIFO admission, but an offloaded request behind it asks for no decode KV
    and is admitted (offloaded_admission_first); with SGLang's plain FIFO it waits behind the local one."""
    reqs = Requests(np.array([0.0, 0.0, 0.0]), np.array([10, 10, 10]), np.array([20, 20, 20]))
    sim = Simulator(SimConfig(decode_kv_admission="watermark", decode_reserved_tokens=8,
                              offloaded_admission_first=first), reqs, FakeCosts(), FakePolicy(None))  # fmt: skip
    d = sim.decode[0]
    d.reserved_tokens, d.local_active = d.capacity_tokens - 10, 1  # budget 2: no local newcomer fits
    local_a, offloaded, local_b = sim.reqs
    offloaded.offloaded = True
    d.prealloc.extend([local_a.rid, offloaded.rid, local_b.rid])
    sim._try_prealloc(0.0, d)
    assert list(d.prealloc) == ([local_a.rid, local_b.rid] if first else [local_a.rid, offloaded.rid, local_b.rid])
    assert (offloaded.decode_admit_s == 0.0) == first and d.offloaded_admitted == int(first)
