"""The paper's 7B calibration data against the ShareGPT samples: which in-flight context it implies."""

import numpy as np
import pytest

from adrenaline_sgl.sim import workload_calibration as wc


def test_kv_tokens_per_request_from_the_hbm_share():
    kv_bytes_per_token = 2 * 32 * 4096 * 2  # K and V, 32 layers, hidden 4096, fp16: Llama-2 7B
    assert wc.kv_tokens_per_request() == pytest.approx(0.573 * 80 * 2**30 / kv_bytes_per_token / 80)
    assert wc.kv_tokens_per_request(batch=40) == pytest.approx(2 * wc.kv_tokens_per_request())


def test_attention_share_rises_with_the_context_and_inverts():
    shares = [wc.attention_share(n) for n in (100, 500, 1000, 2000, 4000)]
    assert all(a < b for a, b in zip(shares, shares[1:])) and 0 < shares[0] and shares[-1] < 1
    ctx = wc.context_for_attention_share()
    assert wc.attention_share(ctx) == pytest.approx(0.695, abs=1e-4) and 1000 < ctx < 1400
    with pytest.raises(ValueError, match="out of the model's reach"):
        wc.context_for_attention_share(0.999)


def test_in_flight_context_weighs_requests_by_their_decode_steps():
    prompt, output = np.array([100, 0]), np.array([10, 30])
    assert wc.in_flight_context(prompt, output) == pytest.approx((10 * 105 + 30 * 15) / 40)
    assert wc.simple_context(prompt, output) == pytest.approx(50 + 10)


def test_the_calibration_points_to_the_multiturn_sample_not_the_first_turns():
    lo, hi = wc.calibration_band()
    assert 1000 < lo < hi < 1400  # both statements imply about 1,170-1,220 tokens (module docstring)
    multi, first = wc.check("sharegpt_multiturn"), wc.check("sharegpt")
    assert multi.within_band and lo <= multi.simple_tokens <= hi
    assert multi.attn_share == pytest.approx(wc.PAPER_ATTN_SHARE, abs=0.03)
    assert not first.within_band and first.in_flight_tokens < lo / 1.8 and first.simple_tokens < lo / 2
    assert first.attn_share < wc.PAPER_ATTN_SHARE - 0.15
