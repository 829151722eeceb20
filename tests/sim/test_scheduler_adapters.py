"""The simulator on the real scheduler code (cost model and admission), and its name errors."""

import pytest

from adrenaline_sgl.scheduler.cost_model import get_predictor
from adrenaline_sgl.sim import metrics
from adrenaline_sgl.sim.config import SimConfig, WorkloadConfig
from adrenaline_sgl.sim.costs import SchedulerCosts
from adrenaline_sgl.sim.engine import simulate


def test_costs_are_the_predictors():
    cfg = SimConfig(model="llama2-7b", gpu="a100-80g")
    costs, pred = SchedulerCosts(cfg), get_predictor("roofline", "a100-80g", "llama2-7b")
    assert costs.prefill([512, 1024], 1.0).ms == pytest.approx(pred.prefill_step_ms([512, 1024]))
    assert costs.decode_nonattn(64).ms == pytest.approx(pred.decode_nonattn_ms(64))
    assert costs.decode_attn(64, 64 * 700, 0.2).ms == pytest.approx(pred.decode_attn_ms(64, 64 * 700, 0.2))
    assert costs.kv_transfer_ms(1000) == pytest.approx(pred.kv_transfer_ms(1000, "nvlink"))
    assert costs.offload_roundtrip_ms(16) == pytest.approx(pred.offload_layer_roundtrip_ms(16, "nvlink"))
    assert 100_000 < costs.info.kv_capacity_tokens < 130_000  # (0.9 x 80 GiB - 13.5 GB) / 512 KiB per token


@pytest.mark.parametrize("policy", ["never", "ratio:0.6", "auto"])
def test_small_run_on_the_scheduler(policy):
    cfg = SimConfig(offload=policy, model="llama2-7b")
    res = simulate(cfg, WorkloadConfig(request_rate=10.0, num_requests=120, seed=0))
    m = metrics.request_metrics(res.requests)
    assert m.completed == 120 and 5 < m.mean_tpot_ms < 200
    assert (m.offloaded_frac == 0) == (policy == "never")
    assert metrics.max_memory_excess(res.mem, res.info.kv_capacity_tokens) <= 0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "gpt-5"}, "model must be one of"),
        ({"gpu": "tpu-v5"}, "gpu must be one of"),
        ({"predictor": "oracle"}, "predictor must be one of"),
        ({"link": "carrier-pigeon"}, "link must be one of"),
        ({"offload": "sometimes"}, "offload='sometimes': expected never, always, auto or ratio:F"),
        ({"offload": "ratio:x"}, "offload='ratio:x': expected never"),
        ({"model": "llama2-70b"}, r"llama2-70b does not fit on a100-80g at tp=1: .* use tp >= 2"),
        ({"model": "llama2-70b", "tp": 3}, r"tp=3 cannot split llama2-70b"),
    ],
)
def test_unknown_names_are_one_line_errors(kwargs, match):
    with pytest.raises(ValueError, match=match) as err:  # at construction (offload) or when simulated
        simulate(SimConfig(**kwargs), WorkloadConfig(num_requests=5))
    assert "\n" not in str(err.value)


def test_attention_line_cache_equals_the_predictor():
    costs = SchedulerCosts(SimConfig(model="llama2-13b"))
    for batch, ctx, share in [(1, 1, 1.0), (7, 7 * 3000, 0.2), (64, 64 * 330, 1.0), (250, 250 * 4096, 0.2)]:
        fast, exact = costs.decode_attn(batch, ctx, share), costs._decode_attn_exact(batch, ctx, share)
        assert fast.ms == pytest.approx(exact.ms, rel=1e-12)
        assert fast.bytes == pytest.approx(exact.bytes, rel=1e-12)
    assert all(line is not None for line in costs._lines.values())


def test_tp_costs_are_one_gpus_shard_plus_the_collectives():
    cfg = SimConfig(model="llama2-70b", tp=4)
    costs, pred = SchedulerCosts(cfg), get_predictor("roofline", "a100-80g", "llama2-70b", tp=4)
    assert costs.decode_nonattn(64).ms == pytest.approx(pred.decode_nonattn_ms(64))  # includes the all-reduces
    assert costs.decode_nonattn(64).ms > sum(
        c.ms for c in pred.decode_nonattn_costs(64) if c.op != "comm"
    )  # fmt: skip
    assert costs.prefill([2048], 1.0).ms == pytest.approx(pred.prefill_step_ms([2048]))
    assert costs.info.kv_capacity_tokens == pred.kv_capacity_tokens(cfg.gpu_mem_util)
    assert costs.info.weight_bytes == pred.shard.weight_bytes < 33 * 1024**3  # 128.5 GiB / 4 per GPU
    with pytest.raises(ValueError, match=r"tp=0 is out of range"):
        SimConfig(tp=0)


def test_70b_npmd_at_tp4_runs():
    """2 prefill + 2 decode instances of 4 A100s each (16 GPUs), Llama-2 70B, with and without offload."""
    runs = {}
    for offload in ("never", "auto"):
        cfg = SimConfig(model="llama2-70b", tp=4, n_prefill=2, n_decode=2, offload=offload)
        res = simulate(cfg, WorkloadConfig(request_rate=4.0, num_requests=80, seed=1))
        m = metrics.request_metrics(res.requests)
        assert m.completed == 80 and metrics.max_memory_excess(res.mem, res.info.kv_capacity_tokens) <= 0
        assert {r.decode_instance for r in res.requests} == {r.prefill_instance for r in res.requests} == {0, 1}
        assert res.config["cluster"]["tp"] == 4
        runs[offload] = m
    # one 70B decode step on 4 A100s moves 32 GiB of weights per GPU: about 25 to 60 ms per token
    assert 20 < runs["never"].mean_tpot_ms < 80
