"""Bounds OB_mem, OB_comp, OB: properties (hypothesis) and a worked example."""

import math

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adrenaline_sgl.scheduler.bounds import (
    DEFAULT_EXECUTOR_SM_SHARE,
    BoundsInput,
    PrefillCapacity,
    check_executor_sm_share,
    compute_bounds,
    kv_capacity_bytes,
)
from adrenaline_sgl.scheduler.cost_model import get_predictor

P = get_predictor("roofline", "a100-80g", "llama2-7b")
GIB = 1024**3
DECODE_KV = kv_capacity_bytes(P.gpu, P.model)
FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

slo_ms = st.floats(min_value=1.0, max_value=500.0)
context = st.floats(min_value=0.0, max_value=4096.0)
spare = st.floats(min_value=0.0, max_value=80.0 * GIB)
share = st.floats(min_value=0.05, max_value=1.0)


ONE_PREFILL = (PrefillCapacity(40 * GIB),)


def _inp(slo=100.0, ctx=512.0, decode_kv=DECODE_KV, prefill=ONE_PREFILL):
    return BoundsInput(P, slo, decode_kv, tuple(prefill), ctx)


def test_worked_example_llama2_7b_a100():
    b = compute_bounds(_inp())
    assert b.b_mem == int(DECODE_KV // (512 * P.model.kv_bytes_per_token))
    assert b.b_tpot == min(b.b_slo, b.b_mem) and b.b_max >= b.b_tpot
    assert b.ob_mem_hbm == pytest.approx(40 * GIB / DECODE_KV)
    assert b.ob == pytest.approx(min(b.ob_mem, b.ob_comp)) and b.ob == min(b.ob_mem_hbm, b.ob_mem_bw, b.ob_comp)
    assert b.ob_comp == pytest.approx((b.b_max - b.b_tpot) / b.b_tpot)
    # B_max is the largest batch whose non-attention work plus the local attention meets the SLO
    local = P.decode_attn_ms(b.b_tpot, round(b.b_tpot * 512))
    assert P.decode_nonattn_ms(b.b_max) + local <= 100.0 < P.decode_nonattn_ms(b.b_max + 1) + local
    assert b.binding in ("prefill-hbm", "prefill-bandwidth", "compute") and b.reason


@FAST
@given(slo_a=slo_ms, slo_b=slo_ms, ctx=context, sp=spare, s=share)
def test_tighter_tpot_slo_never_raises_the_bound(slo_a, slo_b, ctx, sp, s):
    tight, loose = sorted((slo_a, slo_b))
    cap = (PrefillCapacity(sp, s),)
    bt, bl = compute_bounds(_inp(tight, ctx, prefill=cap)), compute_bounds(_inp(loose, ctx, prefill=cap))
    assert bt.ob <= bl.ob + 1e-12
    assert bt.b_tpot <= bl.b_tpot and bt.b_max <= bl.b_max


@FAST
@given(slo=slo_ms, ctx=context, s=share, n=st.integers(0, 4))
def test_no_spare_prefill_memory_means_no_offload(slo, ctx, s, n):
    b = compute_bounds(_inp(slo, ctx, prefill=(PrefillCapacity(0.0, s),) * n))
    assert b.ob_mem == 0.0 and b.ob == 0.0


@FAST
@given(
    slo=slo_ms,
    ctx=context,
    caps=st.lists(st.tuples(spare, share), min_size=0, max_size=4),
    extra=st.tuples(spare, share),
)
def test_more_prefill_instances_never_lower_ob_mem(slo, ctx, caps, extra):
    base = tuple(PrefillCapacity(sp, s) for sp, s in caps)
    more = base + (PrefillCapacity(*extra),)
    assert compute_bounds(_inp(slo, ctx, prefill=more)).ob_mem >= compute_bounds(_inp(slo, ctx, prefill=base)).ob_mem


@FAST
@given(slo=slo_ms, ctx=context, decode_kv=st.sampled_from([0.0, 1.0, 1e6, DECODE_KV]), n=st.integers(0, 2))
def test_nothing_divides_by_zero_at_empty_state(slo, ctx, decode_kv, n):
    b = compute_bounds(_inp(slo, ctx, decode_kv, (PrefillCapacity(0.0),) * n))
    for v in (b.ob, b.ob_mem, b.ob_comp, b.ob_mem_hbm, b.ob_mem_bw):
        assert math.isfinite(v) and v >= 0.0


def test_slo_bound_decode_has_no_compute_headroom():
    b = compute_bounds(_inp(slo=15.0))
    assert b.b_slo <= b.b_mem and b.ob_comp == 0.0 and b.ob == 0.0 and b.binding == "slo"


def test_impossible_slo_is_empty_not_an_error():
    b = compute_bounds(_inp(slo=0.5))
    assert b.b_tpot == 0 and b.ob == 0.0 and b.binding == "empty"


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"slo": -1.0}, r"tpot_slo_ms must be > 0"),
        ({"slo": 0.0}, r"tpot_slo_ms must be > 0"),
        ({"ctx": -1.0}, r"avg_context_tokens must be >= 0"),
        ({"decode_kv": -1.0}, r"decode_kv_capacity_bytes must be >= 0"),
    ],
)
def test_bad_inputs_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as exc:
        _inp(**kwargs)
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize("share", [0.0, 1.0, 1.5, -0.1, float("nan"), True, "0.2"])
def test_the_executor_sm_share_knob_is_a_fraction_strictly_inside_0_1(share):
    assert check_executor_sm_share(DEFAULT_EXECUTOR_SM_SHARE) == 0.2
    with pytest.raises(ValueError, match=r"^sm_share must be in \(0, 1\) \(the executor's fraction"):
        check_executor_sm_share(share, "sm_share")


def test_bad_prefill_capacity():
    with pytest.raises(ValueError, match=r"executor_sm_share must be in \(0, 1\]"):
        PrefillCapacity(1.0, 1.5)
    with pytest.raises(ValueError, match=r"bw_contention_frac must be in \[0, 1\)"):
        PrefillCapacity(1.0, 0.5, 1.0)
    with pytest.raises(ValueError, match="spare_kv_bytes must be >= 0"):
        PrefillCapacity(-1.0)
    with pytest.raises(ValueError, match=r"mem_fraction must be in \(0, 1\]"):
        kv_capacity_bytes(P.gpu, P.model, 1.5)
