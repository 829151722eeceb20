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


# ---- executor colocation: the simulator's `executor_colocation`, same inputs -> same step times ----------------
CPU_DECODE, CPU_PREFILL = "cpu-epyc-1core-sgl", "cpu-epyc-1core-sgl-exec"  # the real CPU experiment's profiles


def _simulator(colocation: str, gpu: str, prefill_gpu: str, model: str, predictor: str, share: float = 0.2):
    """The simulator's engine for one PD pair with offloading (its `_executor_attn`, `prefill_sm_share`)."""
    import numpy as np

    from adrenaline_sgl.sim.costs import get_costs
    from adrenaline_sgl.sim.engine import Simulator
    from adrenaline_sgl.sim.policy import get_policy
    from adrenaline_sgl.sim.workloads import Requests

    cfg = SimConfig(model=model, gpu=gpu, prefill_gpu=prefill_gpu, predictor=predictor, offload="ratio:4",
                    executor_sm_share=share, executor_colocation=colocation,
                    **({"decode_kv_capacity_tokens": 320, "prefill_kv_capacity_tokens": 8192,
                        "decode_reserved_tokens": 64} if predictor == "table" else {}))  # fmt: skip
    costs = get_costs("scheduler", cfg)
    stream = Requests(np.zeros(1), np.array([16]), np.array([64]))
    return Simulator(cfg, stream, costs, get_policy("scheduler", cfg, costs)), costs


def _emulated(colocation: str, gpu: str, prefill_gpu: str, model: str, predictor: str, share: float = 0.2):
    return StepModel(EmulateConfig(gpu=gpu, prefill_gpu=prefill_gpu, model=model, predictor=predictor,
                                   profile=f"adrenaline_sgl/scheduler/profiles/{gpu}__{model}.csv"
                                   if predictor == "table" else None, max_total_tokens=320,
                                   prefill_max_total_tokens=8192, executor_sm_share=share,
                                   executor_colocation=colocation))  # fmt: skip


@pytest.mark.parametrize("colocation, gpu, prefill_gpu, model, predictor", [
    ("timeshare", CPU_DECODE, CPU_PREFILL, "smollm2-135m", "table"),  # the real CPU experiment (compare.py)
    ("partition", CPU_DECODE, CPU_PREFILL, "smollm2-135m", "table"),
    ("timeshare", "a100-80g", "a100-80g", "llama2-13b", "roofline"),
    ("partition", "a100-80g", "a100-80g", "llama2-13b", "roofline"),
])  # fmt: skip
def test_executor_colocation_composes_as_the_simulator(colocation, gpu, prefill_gpu, model, predictor):
    """Prefill's share, remote attention idle and beside a running prefill batch, and whole decode steps:
    the emulator's numbers are the simulator engine's for the same inputs."""
    sim, costs = _simulator(colocation, gpu, prefill_gpu, model, predictor)
    emu = _emulated(colocation, gpu, prefill_gpu, model, predictor)
    assert emu.prefill_sm_share(hosts_executor=True) == sim.prefill_sm_share
    assert emu.prefill([16, 16], emu.prefill_sm_share(True)).ms == pytest.approx(
        costs.prefill([16, 16], sim.prefill_sm_share).ms)
    p = sim.prefill[0]
    prefill_bps = emu.prefill([16] * 8, emu.prefill_sm_share(True)).bytes_per_s
    for rows, ctx in ((1, 17), (3, 3 * 48), (12, 12 * 70)):
        for busy in (False, True):
            p.busy, p.busy_bytes_per_s = busy, prefill_bps if busy else 0.0
            remote = RemoteRows(rows, ctx, prefill_bps if busy else 0.0)
            want_attn = sim._executor_attn(p, rows, ctx).ms
            rt = costs.num_layers * costs.offload_roundtrip_ms(rows)
            t = emu.decode(2, 2 * 40, [remote])
            assert t.remote_ms == pytest.approx(want_attn + rt, rel=1e-9)
            want = costs.decode_nonattn(2 + rows).ms + max(costs.decode_attn(2, 80, 1.0).ms, want_attn + rt)
            assert t.ms == pytest.approx(want, rel=1e-9)


def test_timeshare_runs_the_executor_on_the_whole_core_and_halves_it_beside_prefill():
    """One core hosts prefill and the executor: each alone at the whole core's speed (prefill share 1, the
    executor's attention the prefill device's profile at share 1), the attention twice as long while a
    prefill batch runs; a partitioned GPU instead gives prefill 1 - share and the executor its share."""
    ts = _emulated("timeshare", CPU_DECODE, CPU_PREFILL, "smollm2-135m", "table")
    part = _emulated("partition", CPU_DECODE, CPU_PREFILL, "smollm2-135m", "table")
    exec_pred = get_predictor("table", CPU_PREFILL, "smollm2-135m")
    alone = exec_pred.op_cost("attn", "decode", 4, 4 * 50, 4, 1.0).ms * ts.num_layers
    rt = ts.num_layers * ts.pred.offload_layer_roundtrip_ms(4, "nvlink")
    idle, busy = ts.decode(0, 0, [RemoteRows(4, 200)]), ts.decode(0, 0, [RemoteRows(4, 200, busy_bytes_per_s=1e9)])
    assert idle.remote_ms == pytest.approx(alone + rt) and busy.remote_ms == pytest.approx(2 * alone + rt)
    assert (ts.prefill_sm_share(True), part.prefill_sm_share(True), part.prefill_sm_share(False)) == (1.0, 0.8, 1.0)
    assert part.decode(0, 0, [RemoteRows(4, 200)]).remote_ms != pytest.approx(idle.remote_ms)


def test_prefill_and_its_executor_run_on_the_prefill_device():
    """`prefill_gpu`: prefill steps and the executor's attention come from that device's model, decode's own
    steps from decode's."""
    emu = _emulated("partition", "a100-80g", "h200", "llama2-13b", "roofline")
    pre, dec = get_predictor("roofline", "h200", "llama2-13b"), get_predictor("roofline", "a100-80g", "llama2-13b")
    assert emu.prefill([161, 300]).ms == pytest.approx(pre.prefill_step_ms([161, 300]))
    assert pre.prefill_step_ms([161, 300]) < 0.8 * dec.prefill_step_ms([161, 300])
    assert emu.decode(3, 1500).ms == pytest.approx(dec.decode_nonattn_ms(3) + dec.decode_attn_ms(3, 1500))
    t = emu.decode(0, 0, [RemoteRows(8, 8000)])
    assert t.remote_ms - t.roundtrip_ms == pytest.approx(pre.decode_attn_ms(8, 8000, sm_share=0.2))
    cpu = _emulated("timeshare", CPU_DECODE, CPU_PREFILL, "smollm2-135m", "table")
    exec_attn = get_predictor("table", CPU_PREFILL, "smollm2-135m").decode_attn_ms(4, 200)
    assert exec_attn != pytest.approx(cpu.pred.decode_attn_ms(4, 200))  # the executor's kernel, not SGLang's
    t = cpu.decode(0, 0, [RemoteRows(4, 200)])
    assert t.remote_ms - t.roundtrip_ms == pytest.approx(exec_attn)
