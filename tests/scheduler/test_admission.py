"""Admission C1/C2 and the policies: properties (hypothesis), named cases, one-line errors."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from adrenaline_sgl.scheduler.admission import (
    AutoPolicy,
    LiveStats,
    RatioPolicy,
    RequestInfo,
    admit,
    make_policy,
    parse_policy,
)
from adrenaline_sgl.scheduler.cost_model import get_predictor

P = get_predictor("roofline", "a100-80g", "llama2-7b")
FAST = settings(max_examples=200, deadline=None)

tokens = st.integers(0, 200_000)
stats_st = st.builds(
    LiveStats,
    local_requests=st.integers(0, 300),
    local_tokens=tokens,
    offloaded_requests=st.integers(0, 300),
    offloaded_tokens=tokens,
    offloaded_max_tokens=tokens,
    decode_kv_capacity_tokens=st.integers(0, 200_000),
    prefill_offload_capacity_tokens=st.lists(st.integers(0, 200_000), max_size=3).map(tuple),
)
request_st = st.builds(RequestInfo, prompt_tokens=st.integers(0, 4096), max_new_tokens=st.integers(0, 4096))
ob_st = st.floats(min_value=0.0, max_value=10.0)


@FAST
@given(stats=stats_st, req=request_st, ob=ob_st)
def test_admission_never_exceeds_ob(stats, req, ob):
    d = admit(req, stats, ob)
    if d.offload:
        after = stats.with_request(req, offloaded=True)
        assert after.offloaded_max_tokens <= ob * after.decode_kv_capacity_tokens  # C1 budget
        assert after.offloaded_max_tokens <= after.prefill_capacity_tokens  # C1 memory
        assert after.offloaded_tokens <= ob * after.local_tokens  # C2 sequence lengths
        assert after.offloaded_requests <= ob * after.local_requests  # C2 batch sizes


@FAST
@given(stats=stats_st, req=request_st, ob=ob_st)
def test_no_spare_prefill_memory_means_no_offload(stats, req, ob):
    from dataclasses import replace

    full = replace(stats, prefill_offload_capacity_tokens=(stats.offloaded_max_tokens,))
    if req.max_seq_tokens > 0:
        assert not admit(req, full, ob).offload
        assert not make_policy("always").decide(req, full).offload


@FAST
@given(reqs=st.lists(request_st, max_size=30), ob=ob_st)
def test_sequential_admission_keeps_the_batch_ratio(reqs, ob):
    stats = LiveStats(decode_kv_capacity_tokens=100_000, prefill_offload_capacity_tokens=(80_000,))
    decisions, final = RatioPolicy(ob).decide_all(reqs, stats)
    assert final.offloaded_requests == sum(d.offload for d in decisions)
    assert final.offloaded_requests <= ob * final.local_requests + 1e-9


def test_empty_system_decodes_locally_then_offloads():
    stats = LiveStats(decode_kv_capacity_tokens=100_000, prefill_offload_capacity_tokens=(50_000,))
    r = RequestInfo(100, 200)
    assert admit(r, stats, 0.8).reason == "c2-tokens"  # nothing local to hide remote attention under
    decisions, final = make_policy("ratio:0.5").decide_all([r] * 6, stats)
    assert [d.offload for d in decisions] == [False, False, True, False, False, True]
    assert (final.local_requests, final.offloaded_requests) == (4, 2)


def test_named_rejections():
    s = LiveStats(10, 5000, 1, 400, 1000, 10_000, (3000,))
    assert admit(RequestInfo(100, 100), s, 0.5).offload
    assert admit(RequestInfo(100, 4000), s, 0.5).reason == "c1-budget"  # 5200 > 0.5 * 10000
    assert admit(RequestInfo(100, 2000), s, 1.0).reason == "c1-prefill-memory"  # 3100 > 3000
    roomy = LiveStats(10, 5000, 1, 400, 1000, 10_000, (10_000,))
    assert admit(RequestInfo(2200, 0), roomy, 0.5).reason == "c2-tokens"  # 400 + 2200 > 0.5 * 5000
    assert admit(RequestInfo(10, 10), LiveStats(2, 50_000, 1, 10, 20, 100_000, (50_000,)), 0.8).reason == "c2-batch"


def test_policies():
    s = LiveStats(10, 5000, 0, 0, 0, 10_000, (3000,))
    r = RequestInfo(100, 100)
    assert not make_policy("never").decide(r, s).offload
    assert make_policy("always").decide(r, s).offload
    assert make_policy("ratio:0.4").spec == "ratio:0.4" and make_policy("ratio:0.4").decide(r, s).offload
    assert not make_policy("ratio:0").decide(r, s).offload


def test_auto_policy_uses_the_bounds():
    auto = make_policy("auto", P, tpot_slo_ms=100.0)
    assert isinstance(auto, AutoPolicy)
    cap = 118_000
    s = LiveStats(100, 100 * 512, 0, 0, 0, cap, (cap,))
    ob = auto.bounds(s).ob
    assert 0.0 < ob < 10.0
    assert auto.decide(RequestInfo(500, 500), s).ob == ob
    assert not auto.decide(RequestInfo(500, 500), LiveStats(100, 51200, 0, 0, 0, cap, (0,))).offload
    tight = make_policy("auto", P, tpot_slo_ms=10.0)
    assert tight.bounds(s).ob == 0.0 and not tight.decide(RequestInfo(500, 500), s).offload


def test_auto_policy_takes_each_prefills_live_sm_share():
    """A prefill reporting its executor's share: the prefill-bandwidth bound follows it; 0 = unknown falls back
    to the policy's own share (the default, 0.2)."""
    auto, cap = make_policy("auto", P), 118_000

    def ob(*shares):
        return auto.bounds(LiveStats(100, 100 * 512, 0, 0, 0, cap, (3 * cap,), shares)).ob

    assert ob() == ob(0.0) == ob(0.2) == make_policy("auto", P, executor_sm_share=0.2).bounds(
        LiveStats(100, 100 * 512, 0, 0, 0, cap, (3 * cap,))).ob  # fmt: skip
    assert ob(0.05) < ob(0.2) < ob(0.6)
    fixed = make_policy("auto", P, executor_sm_share=0.6)
    assert fixed.bounds(LiveStats(100, 100 * 512, 0, 0, 0, cap, (3 * cap,))).ob == ob(0.6)
    with pytest.raises(ValueError, match=r"prefill_executor_sm_shares must be at most one share in \[0, 1\]"):
        LiveStats(prefill_offload_capacity_tokens=(1,), prefill_executor_sm_shares=(0.5, 0.5))
    with pytest.raises(ValueError, match=r"prefill_executor_sm_shares"):
        LiveStats(prefill_offload_capacity_tokens=(1,), prefill_executor_sm_shares=(1.5,))


@pytest.mark.parametrize(
    "text, parsed", [("never", ("never", 0.0)), ("always", ("always", 0.0)), ("auto", ("auto", 0.0)),
                     ("ratio:0.4", ("ratio", 0.4)), ("ratio:0", ("ratio", 0.0)), ("ratio:10", ("ratio", 10.0))],
)  # fmt: skip
def test_parse_policy_is_the_one_grammar(text, parsed):
    assert parse_policy(text) == parsed
    with pytest.raises(ValueError, match=r"^offload='ratio:11': expected never, always, auto or ratio:F"):
        parse_policy("ratio:11", "offload")


@pytest.mark.parametrize(
    "spec, match",
    [
        ("ratio:1.5e9", r"policy='ratio:1.5e9': expected never, always, auto or ratio:F with 0 <= F <= 10"),
        ("ratio:-0.1", r"policy='ratio:-0.1': expected never, always, auto or ratio:F with 0 <= F <= 10"),
        ("ratio:abc", r"policy='ratio:abc': expected never"),
        ("ratio:nan", r"policy='ratio:nan': expected never"),
        ("share:0.5", r"policy='share:0.5': expected never"),
        ("sometimes", r"policy='sometimes': expected never, always, auto or ratio:F"),
        ("auto", r"policy 'auto' needs a predictor"),
    ],
)
def test_bad_policy_specs_are_one_line_errors(spec, match):
    with pytest.raises(ValueError, match=match) as exc:
        make_policy(spec)
    assert "\n" not in str(exc.value)


def test_bad_live_stats_and_requests():
    with pytest.raises(ValueError, match="LiveStats.local_tokens must be >= 0"):
        LiveStats(local_tokens=-1)
    with pytest.raises(ValueError, match="prompt_tokens and max_new_tokens must be >= 0"):
        RequestInfo(-1, 10)
    with pytest.raises(ValueError, match="ob must be >= 0"):
        admit(RequestInfo(1, 1), LiveStats(), -0.5)
    with pytest.raises(ValueError, match=r"tpot_slo_ms must be > 0"):
        AutoPolicy(P, tpot_slo_ms=-5)
