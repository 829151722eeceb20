"""Modelled step times are the scheduler's cost model composed as the simulator composes them."""

import pytest

from adrenaline_sgl.emulate.config import EmulateConfig
from adrenaline_sgl.emulate.timing import RemoteRows, StepModel
from adrenaline_sgl.scheduler.cost_model import get_predictor
from adrenaline_sgl.sim.config import SimConfig
from adrenaline_sgl.sim.costs import SchedulerCosts


@pytest.fixture(scope="module")
def model():
    return StepModel(EmulateConfig(gpu="a100-80g", model="llama2-13b", executor_sm_share=0.2))


@pytest.fixture(scope="module")
def pred():
    return get_predictor("roofline", "a100-80g", "llama2-13b")


def test_decode_without_offload_is_the_predictors_step(model, pred):
    t = model.decode(48, 48 * 500)
    assert t.ms == pytest.approx(pred.decode_nonattn_ms(48) + pred.decode_attn_ms(48, 48 * 500))
    assert t.remote_ms == 0 and t.local_attn_ms == pytest.approx(pred.decode_attn_ms(48, 24_000))
    assert model.decode(0, 0).ms == 0


def test_decode_with_offload_overlaps_remote_with_local_attention(model, pred):
    local, remote = (30, 30 * 400), RemoteRows(10, 10 * 400)
    t = model.decode(*local, [remote])
    rt = 40 * pred.offload_layer_roundtrip_ms(10, "nvlink")
    remote_attn = pred.decode_attn_ms(10, 4000, sm_share=0.2)
    assert t.roundtrip_ms == pytest.approx(rt)
    assert t.remote_ms == pytest.approx(remote_attn + rt)
    assert t.ms == pytest.approx(pred.decode_nonattn_ms(40) + max(pred.decode_attn_ms(30, 12_000), remote_attn + rt))


def test_a_busy_prefill_gpu_slows_remote_attention(model):
    idle = model.decode(1, 100, [RemoteRows(20, 20 * 2000)])
    busy = model.decode(1, 100, [RemoteRows(20, 20 * 2000, busy_bytes_per_s=1.9e12)])
    assert busy.remote_ms > idle.remote_ms


def test_matches_the_simulators_step_formula(model):
    """Same numbers as the simulator's cost adapter for the same step (its engine composes them alike)."""
    sim = SchedulerCosts(SimConfig(model="llama2-13b", gpu="a100-80g"))
    assert model.decode(64, 64 * 700).ms == pytest.approx(sim.decode_nonattn(64).ms + sim.decode_attn(64, 44_800, 1).ms)
    assert model.prefill([161, 300], 0.8).ms == pytest.approx(sim.prefill([161, 300], 0.8).ms)
    assert model.kv_transfer_ms(161) == pytest.approx(sim.kv_transfer_ms(161))


def test_prefill_on_the_prefill_share_and_its_bandwidth(model, pred):
    full, share = model.prefill([512]), model.prefill([512], 0.8)
    assert full.ms == pytest.approx(pred.prefill_step_ms([512])) and share.ms > full.ms
    assert full.bytes_per_s > 0 and model.prefill([]).ms == 0
