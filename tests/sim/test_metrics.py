"""The metrics module against timelines computed by hand."""

import math

import numpy as np
import pytest

from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.records import (
    DECODE,
    EXECUTOR,
    PREFILL,
    InstanceInfo,
    MemSample,
    RequestRecord,
    SimResult,
    StepSample,
)

INFO = InstanceInfo(hbm_bytes=100.0, weight_bytes=20.0, kv_bytes_per_token=1.0, kv_capacity_tokens=80,
                    peak_flops=1e3, peak_hbm_bytes_per_s=1e2)


def _req(rid, arrival, first, finish, tokens, offloaded=False):
    r = RequestRecord(rid, arrival, prompt_len=10, output_len=tokens, offloaded=offloaded)
    r.first_token_s, r.finish_s, r.tokens_out = first, finish, tokens
    return r


def test_request_metrics_by_hand():
    reqs = [
        _req(0, 0.0, 0.5, 2.5, 5),  # ttft 0.5, tpot 2.0 / 4 = 500 ms
        _req(1, 1.0, 1.2, 1.2, 1),  # ttft 0.2, single token: no tpot
        _req(2, 2.0, 3.0, 4.0, 11, offloaded=True),  # ttft 1.0, tpot 1.0 / 10 = 100 ms
    ]
    m = metrics.request_metrics(reqs)
    assert m.completed == 3 and m.output_tokens == 17
    assert m.mean_ttft_s == pytest.approx((0.5 + 0.2 + 1.0) / 3)
    assert m.mean_tpot_ms == pytest.approx(300.0)
    assert m.p99_tpot_ms == pytest.approx(100 + 0.99 * 400)  # linear interpolation between 100 and 500
    assert m.duration_s == pytest.approx(4.0)
    assert m.decode_throughput_tok_s == pytest.approx(17 / 4.0)
    assert m.offloaded_frac == pytest.approx(1 / 3)


def test_unfinished_requests_are_ignored_and_none_is_an_error():
    done, pending = _req(0, 0.0, 1.0, 2.0, 3), RequestRecord(1, 0.5, 10, 3)
    assert metrics.request_metrics([done, pending]).completed == 1
    with pytest.raises(ValueError, match="no finished request"):
        metrics.request_metrics([pending])


def test_work_rate_counts_overlap_pro_rata():
    steps = [
        StepSample(DECODE, 0, 0.0, 2.0, flops=100.0, bytes=10.0, batch=1),  # half inside [1, 3]
        StepSample(DECODE, 0, 2.0, 3.0, flops=50.0, bytes=5.0, batch=1),  # fully inside
        StepSample(PREFILL, 0, 1.0, 2.0, flops=1e6, bytes=1e6, batch=1),  # other kind
        StepSample(DECODE, 0, 3.0, 4.0, flops=1e6, bytes=1e6, batch=1),  # outside
    ]
    flops, bytes_ = metrics.work_rate(steps, (DECODE,), (1.0, 3.0), n_instances=1)
    assert flops == pytest.approx((50 + 50) / 2.0)
    assert bytes_ == pytest.approx((5 + 5) / 2.0)
    flops2, _ = metrics.work_rate(steps, (DECODE,), (1.0, 3.0), n_instances=2)
    assert flops2 == pytest.approx(flops / 2)


def test_capacity_timeline_is_the_last_sample_step_function():
    mem = [MemSample(DECODE, 0, 1.0, 10, 20), MemSample(DECODE, 0, 3.0, 40, 50), MemSample(PREFILL, 0, 0.0, 5, 5)]
    result = SimResult([], [], mem, INFO)
    frac = metrics.capacity_timeline(result, DECODE, 0, np.array([0.5, 1.0, 2.9, 3.0, 10.0]))
    np.testing.assert_allclose(frac, [0.2, 0.3, 0.3, 0.6, 0.6])  # (20 + kv) / 100
    assert metrics.mean_capacity(result, DECODE, (1.0, 5.0), points=5) == pytest.approx((0.3 + 0.3 + 0.6 * 3) / 5)


def test_utilization_combines_prefill_and_executor_work():
    reqs = [_req(0, 0.0, 1.0, 2.0, 3), _req(1, 10.0, 11.0, 12.0, 3)]
    steps = [
        StepSample(PREFILL, 0, 0.0, 10.0, flops=1000.0, bytes=100.0, batch=1),
        StepSample(EXECUTOR, 0, 0.0, 10.0, flops=0.0, bytes=400.0, batch=1),
        StepSample(DECODE, 0, 0.0, 10.0, flops=2000.0, bytes=300.0, batch=2),
    ]
    result = SimResult(reqs, steps, [MemSample(PREFILL, 0, 0.0, 30, 30)], INFO)
    u = metrics.utilization(result, 1, 1, window=(0.0, 10.0))
    assert u.prefill_hbm_bw_gbs == pytest.approx(50.0 / 1e9)
    assert u.prefill_bw_util == pytest.approx(0.5)
    assert u.decode_tflops == pytest.approx(200.0 / 1e12)
    assert u.decode_compute_util == pytest.approx(0.2)
    assert u.prefill_hbm_capacity_frac == pytest.approx(0.5)
    assert math.isclose(metrics.steady_window(reqs, 0.0, 1.0)[1], 10.0)


def test_memory_excess_and_roundtrip_share():
    ok = [MemSample(DECODE, 0, 0.0, 5, 10)]
    assert metrics.max_memory_excess(ok, 10) <= 0
    assert metrics.max_memory_excess([MemSample(DECODE, 0, 0.0, 11, 10)], 10) == 1
    assert metrics.max_memory_excess([MemSample(DECODE, 0, 0.0, 5, 12)], 10) == 2
    steps = [StepSample(DECODE, 0, 0, 1, 0, 0, 2, offloaded_rows=1, hidden_roundtrip_ms=3.0, exposed_roundtrip_ms=1.0)]
    assert metrics.roundtrip_hidden_frac(steps) == pytest.approx(0.75)
    assert math.isnan(metrics.roundtrip_hidden_frac([]))


def test_finish_window_and_decode_token_rate_by_hand():
    reqs = [_req(i, 0.0, 0.5, float(f), 3) for i, f in enumerate([1, 2, 3, 4, 5, 6])]
    assert metrics.finish_window(reqs, 0.0, 1.0) == (1.0, 6.0)
    steps = [
        StepSample(DECODE, 0, 0.0, 2.0, 0.0, 0.0, batch=10),  # half inside [1, 3]: 5 tokens
        StepSample(DECODE, 1, 2.0, 3.0, 0.0, 0.0, batch=4),  # another instance, inside: 4 tokens
        StepSample(EXECUTOR, 0, 1.0, 3.0, 0.0, 0.0, batch=99),  # not a decode step
    ]
    assert metrics.decode_token_rate(steps, (1.0, 3.0)) == pytest.approx(9 / 2.0)


def test_steady_state_window_excludes_warmup_and_drain_and_counts_first_tokens():
    # arrivals at 0..9 s; the window is the 10% arrival quantile to the last arrival: [0.9, 9.0]
    reqs = [_req(i, float(i), float(i) + 0.5, 30.0, 3) for i in range(10)]
    for r in reqs:
        r.prefill_end_s = r.arrival_s + 0.4
    assert metrics.steady_window(reqs) == pytest.approx((0.9, 9.0))
    steps = [StepSample(DECODE, 0, 0.0, 9.0, 0.0, 0.0, batch=9),  # 9 tokens over 9 s, 8.1 s inside
             StepSample(DECODE, 0, 9.0, 30.0, 0.0, 0.0, batch=100)]  # the drain: outside
    result = SimResult(reqs, steps, [], INFO)
    st = metrics.steady_throughput(result)
    inside = [r for r in reqs if 0.9 <= r.prefill_end_s < 9.0]  # prefills of requests 1..8
    assert len(inside) == 8
    assert st.decode_tok_s == pytest.approx((9 * 8.1 / 9 + 8) / 8.1)
    assert st.total_tok_s == pytest.approx(st.decode_tok_s + 8 * 10 / 8.1)
    whole = metrics.request_metrics(reqs)
    assert whole.decode_throughput_tok_s == pytest.approx(30 / 30.0)  # the drain dilutes the whole-run value
    assert whole.total_throughput_tok_s == pytest.approx((30 + 100) / 30.0)
