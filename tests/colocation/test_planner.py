"""The SM-share planner against synthetic profiles: monotone in the SLO and the load, granular, never
starving either side, optimal (one more executor granule would miss the SLO), hysteresis; the prompt-token
arrival window it is fed at run time."""

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adrenaline_sgl.colocation.arch import DeviceInfo, ShareError
from adrenaline_sgl.colocation.planner import (
    PlannerConfig,
    PrefillLoad,
    SMSharePlanner,
    plan,
    predicted_ttft_ms,
)
from adrenaline_sgl.colocation.replan import ArrivalWindow

from .conftest import synthetic_profile

H100 = DeviceInfo("H100", 132, (9, 0))
A100 = DeviceInfo("A100", 108, (8, 0))
LOAD = PrefillLoad(arrival_tokens_per_s=5000, batch_tokens=2048)


def test_mdl_queue_ttft():
    assert predicted_ttft_ms(100.0, PrefillLoad(0, 2048)) == 100.0
    # rho = 10240 tok/s * 0.1 s / 2048 = 0.5 -> W = 0.5 * 100 / (2 * 0.5) = 50
    assert predicted_ttft_ms(100.0, PrefillLoad(10240, 2048)) == pytest.approx(150.0)
    assert predicted_ttft_ms(100.0, PrefillLoad(20480, 2048)) == math.inf


@pytest.mark.parametrize("device", [H100, A100], ids=["h100", "a100"])
@pytest.mark.parametrize("alpha", [0.5, 0.8, 1.0])
def test_monotone_in_the_slo(device, alpha):
    prof = synthetic_profile(alpha)
    slos = [10 * 1.25**i for i in range(40)]
    prefill = [plan(prof, LOAD, PlannerConfig(ttft_slo_ms=s), device).prefill_sms for s in slos]
    assert all(a >= b for a, b in zip(prefill, prefill[1:])), prefill  # looser SLO, never more prefill SMs
    assert prefill[0] > prefill[-1]  # the grid spans both ends


@settings(max_examples=60, deadline=None)
@given(
    slo=st.floats(1, 1e5),
    rate=st.floats(0, 2e4),
    batch=st.integers(1, 8192),
    alpha=st.floats(0.3, 1.2),
    min_exec=st.floats(0, 0.4),
    min_prefill=st.floats(0, 0.4),
)
def test_never_below_granularity_never_starving(slo, rate, batch, alpha, min_exec, min_prefill):
    cfg = PlannerConfig(ttft_slo_ms=slo, min_executor_share=min_exec, min_prefill_share=min_prefill)
    p = plan(synthetic_profile(alpha), PrefillLoad(rate, batch), cfg, H100)
    g = H100.granularity
    assert p.executor_sms + p.prefill_sms == 132
    assert p.executor_sms >= g.min_sms and p.executor_sms % g.multiple == 0
    assert p.prefill_sms >= g.min_sms
    assert p.executor_sms >= min_exec * 132 and p.prefill_sms >= min_prefill * 132
    assert p.executor_gbs > 0
    assert p.slo_met == (p.predicted_ttft_ms <= slo)


@pytest.mark.parametrize("slo", [150, 300, 1000])
def test_optimal_one_more_executor_granule_would_miss_the_slo(slo, profile):
    cfg = PlannerConfig(ttft_slo_ms=slo)
    p = plan(profile, LOAD, cfg, H100)
    assert p.slo_met
    if p.executor_sms < H100.partition_sizes()[-1]:
        bigger = p.executor_sms + 8
        service = profile.prefill_ms((132 - bigger) / 132, LOAD.batch_tokens)
        assert predicted_ttft_ms(service, LOAD) > slo


def test_unreachable_slo_gives_prefill_all_it_may_have(profile):
    p = plan(profile, LOAD, PlannerConfig(ttft_slo_ms=1.0, min_executor_share=0.1), H100)
    assert not p.slo_met and p.executor_sms == 16  # the smallest executor partition >= 13.2 SMs


def test_idle_prefill_gives_the_executor_the_largest_partition(profile):
    p = plan(profile, PrefillLoad(0, 512), PlannerConfig(ttft_slo_ms=1e6), H100)
    assert p.executor_sms == 120 and p.prefill_sms == 12 and p.slo_met  # 124 is no multiple of 8


def test_monotone_in_the_load(profile):
    cfg = PlannerConfig(ttft_slo_ms=400)
    prefill = [plan(profile, PrefillLoad(r, 2048), cfg, H100).prefill_sms for r in range(0, 12000, 500)]
    assert all(a <= b for a, b in zip(prefill, prefill[1:])), prefill


def test_contended_profile_needs_more_prefill_sms():
    calm, busy = synthetic_profile(0.8), synthetic_profile(0.8, contention=1.3)
    cfg = PlannerConfig(ttft_slo_ms=300)
    assert plan(busy, LOAD, cfg, H100).prefill_sms > plan(calm, LOAD, cfg, H100).prefill_sms
    off = PlannerConfig(ttft_slo_ms=300, use_contended=False)
    assert plan(busy, LOAD, off, H100).prefill_sms == plan(calm, LOAD, cfg, H100).prefill_sms


def test_model_layers_scale_the_prefill_time(profile):
    four = plan(profile, LOAD, PlannerConfig(ttft_slo_ms=400), H100)  # the profile times 4 layers
    eight = plan(profile, LOAD, PlannerConfig(ttft_slo_ms=400, model_layers=8), H100)
    assert eight.prefill_sms > four.prefill_sms


def test_hysteresis_grows_at_once_and_shrinks_only_by_a_margin(profile):
    planner = SMSharePlanner(profile, PlannerConfig(ttft_slo_ms=400, hysteresis_granules=2), H100)
    first = planner.update(PrefillLoad(6000, 2048))
    assert first is not None
    assert planner.update(PrefillLoad(6000, 2048)) is None  # same load, no change
    up = planner.update(PrefillLoad(7000, 2048))
    assert up is not None and up.prefill_sms > first.prefill_sms  # more load: more prefill SMs at once
    # a small drop that frees fewer than 2 granules keeps the current split
    targets = {r: plan(profile, PrefillLoad(r, 2048), planner.cfg, H100).prefill_sms for r in range(6000, 7001, 50)}
    small = max(r for r, n in targets.items() if up.prefill_sms - 16 < n < up.prefill_sms)
    assert planner.update(PrefillLoad(small, 2048)) is None and planner.current == up
    down = planner.update(PrefillLoad(0, 2048))
    assert down is not None and down.prefill_sms <= up.prefill_sms - 16


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(ttft_slo_ms=0), "ttft_slo_ms must be > 0"),
        (dict(ttft_slo_ms=100, min_executor_share=1.0), r"min_executor_share must be in \[0, 1\)"),
        (dict(ttft_slo_ms=100, min_executor_share=0.6, min_prefill_share=0.5), "must be < 1"),
        (dict(ttft_slo_ms=100, hysteresis_granules=-1), "hysteresis_granules must be >= 0"),
    ],
)
def test_bad_planner_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        PlannerConfig(**kwargs)


def test_bad_load():
    with pytest.raises(ValueError, match="arrival_tokens_per_s must be >= 0"):
        PrefillLoad(-1)
    with pytest.raises(ValueError, match="batch_tokens must be >= 1"):
        PrefillLoad(10, 0)


def test_min_shares_that_leave_no_partition(profile):
    cfg = PlannerConfig(ttft_slo_ms=100, min_executor_share=0.5, min_prefill_share=0.49)
    with pytest.raises(ShareError, match="no executor partition"):
        plan(profile, LOAD, cfg, H100)


def test_arrival_window_is_exact_for_a_known_sequence():
    w = ArrivalWindow(window_s=10.0, start_s=0.0, min_span_s=1.0)
    w.add(100, 0.5)
    assert w.tokens_per_s(0.5) == 100.0  # span floored at min_span_s: not a burst of 200 tokens/s
    w.add(300, 2.0)
    w.add(600, 5.0)
    assert w.tokens_per_s(5.0) == 1000 / 5.0  # span = time since start while it is shorter than the window
    assert w.tokens_per_s(10.0) == 1000 / 10.0
    assert w.tokens_per_s(12.0) == 600 / 10.0  # admissions at 0.5 and 2.0 left the window (t <= now - 10)
    assert w.tokens_per_s(15.0) == 0.0  # the one at 5.0 too
    w.add(50, 20.0)
    assert w.tokens_per_s(20.0) == 5.0


@pytest.mark.parametrize("kwargs", [{"window_s": 0.0}, {"window_s": math.nan}, {"window_s": 1.0, "min_span_s": 2.0}])
def test_arrival_window_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="arrival") as err:
        ArrivalWindow(start_s=0.0, **kwargs)
    assert "\n" not in str(err.value)
