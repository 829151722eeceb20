"""Run-time SM re-planning on a prefill instance (paper technique 2), on CPU with the fake partitioner.

Real: SGLang's `MHATokenToKVPool` / `TokenToKVPoolAllocator` under the executor, our hooks (called as
HookRegistry's AROUND wrappers call them), `host_executor`, the colocation planner and manager with the
committed default profile, `OffloadClient` over `inproc`. Fakes: the partitioner (an H100-shaped
`FakePartitioner` whose partitions carry a marker "stream"), the clock, the scheduler object around the pool.
"""

from __future__ import annotations

import logging
import math
import types

import pytest
import torch

from adrenaline_sgl import colocation
from adrenaline_sgl.colocation import replan
from adrenaline_sgl.colocation.fake import FakePartitioner
from adrenaline_sgl.colocation.partitioner import Partition
from adrenaline_sgl.colocation.planner import PrefillLoad, predicted_ttft_ms
from adrenaline_sgl.offload.attention import AttentionOps
from adrenaline_sgl.sglang_ext import flags, prefill_colocation, prefill_executor, prefill_hooks
from adrenaline_sgl.sglang_ext.prefill_colocation import COLOCATION_ATTR

SLOTS, LAYERS, HKV, HQ, D = 64, 2, 2, 4, 8
SLO_MS = 100.0


@pytest.fixture(scope="module")
def sgl_context(tmp_path_factory, tiny_llama_context):
    return tiny_llama_context(tmp_path_factory, "prefill", HKV, LAYERS)


class Clock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class MarkedStreams(FakePartitioner):
    """The fake, with a marker object as each partition's stream (the real ones carry a CUDA stream)."""

    def _make(self, sm_share: float) -> Partition:
        part = super()._make(sm_share)
        marker = f"stream-{len(self.history)}"
        return Partition(part.backend, part.device, part.executor_sms, part.total_sms, stream=marker)


@pytest.fixture
def clock(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(replan, "_clock", clock)
    return clock


def _use_fake(monkeypatch, live: bool = True) -> list[FakePartitioner]:
    made = []

    def fake_executor_partitioner(sm_share, device, name="auto"):
        made.append(MarkedStreams(device, live=live).open(sm_share))
        return made[-1]

    monkeypatch.setattr(colocation, "executor_partitioner", fake_executor_partitioner)
    return made


@pytest.fixture
def make_scheduler(prefill_scheduler):
    """`make_scheduler(args)`: a scheduler stand-in over SGLang's KV pool and allocator (conftest)."""
    return lambda args: prefill_scheduler(args, SLOTS, LAYERS, HKV, D)


def _prefill_args(**kw) -> flags.AdrenalineArgs:
    base = {"role": "prefill", "transport": "inproc", "executor_sm_share": 0.5, "executor_max_tokens": 16}
    return flags.AdrenalineArgs(**{**base, **kw})


def _admit(sched, tokens: int) -> None:
    """A request arriving at this prefill instance, through the admission hook (SGLang's method stubbed)."""
    req = types.SimpleNamespace(origin_input_ids=list(range(tokens)))
    prefill_hooks.add_request_hook(lambda self, req, is_retracted=False: None, sched, req)


def _scheduler_pass(sched) -> None:
    """One prefill loop pass: the inflight-queue hook (nothing in flight)."""
    prefill_hooks.inflight_hook(lambda self, rids_to_check=None: [], sched)


def _recording_plans(executor) -> list:
    """Wrap the executor's kernel ops so that every per-step kernel plan records the `num_sms` it was given."""
    seen, ops = [], executor.ops

    def plan(*args):
        seen.append(args[-1])  # num_sms is the last argument of AttentionOps.plan
        return ops.plan(*args)

    executor.ops = AttentionOps(ops.name, ops.append_kv, plan, ops.run)
    return seen


def _client(service):
    """A decode-side client of the service over inproc (HostedExecutor serves the same service over TCP)."""
    from adrenaline_sgl.offload.client import OffloadClient
    from adrenaline_sgl.offload.transports.inproc import InprocChannel
    from adrenaline_sgl.offload.wire import RowLayout

    channel = InprocChannel(service)
    return OffloadClient(channel, RowLayout(HQ, HKV, D, torch.float32), LAYERS), channel


def _host(sched, args, monkeypatch):
    """host_executor, keeping its service reachable for an inproc client."""
    built = {}
    real = prefill_executor.build_prefill_executor

    def keep_service(*a, **kw):
        kept, service = real(*a, **kw)
        built["service"] = service
        return kept, service

    monkeypatch.setattr(prefill_executor, "build_prefill_executor", keep_service)
    kept, hosted = prefill_executor.host_executor(sched, args)
    return kept, hosted, built["service"]


def _layer(client, layer: int, g: torch.Generator):
    client.submit(layer, torch.randn(1, HQ, D, generator=g), torch.randn(1, HKV, D, generator=g),
                  torch.randn(1, HKV, D, generator=g))  # fmt: skip
    return client.wait()


def test_batch_tokens_come_from_sglangs_prefill_limits():
    ns = types.SimpleNamespace
    assert prefill_colocation.batch_tokens_of(ns(chunked_prefill_size=4096, max_prefill_tokens=16384)) == 4096
    assert prefill_colocation.batch_tokens_of(ns(chunked_prefill_size=None, max_prefill_tokens=8192)) == 8192
    assert prefill_colocation.batch_tokens_of(ns(), default=123) == 123


# ---- re-planning, end to end through the hooks and the executor ----


def test_rising_load_moves_sms_to_prefill_at_the_next_step_not_mid_step(sgl_context, monkeypatch, clock, caplog,
                                                                        make_scheduler):
    made = _use_fake(monkeypatch)
    args = _prefill_args(ttft_slo_ms=SLO_MS, replan_interval_s=1.0, arrival_window_s=10.0)
    caplog.set_level(logging.INFO, logger="adrenaline_sgl")
    with sgl_context():
        sched = make_scheduler(args)
        kept, hosted, service = _host(sched, args, monkeypatch)
    assert hosted is None  # inproc: nothing listens
    coloc, fake, executor = getattr(sched, COLOCATION_ATTR), made[0], kept.executor
    assert coloc is service.colocation and coloc.replanning and coloc.batch_tokens == 2048
    assert fake.history == [64] and executor.num_sms == 64  # the starting split: 0.5 x 132 SMs, multiples of 8
    streams = []
    service.on_new_partition = lambda part: streams.append(part.stream)  # what HostedExecutor's thread does
    plans = _recording_plans(executor)
    g = torch.Generator().manual_seed(0)
    executor.adopt_copy("r", torch.randn(LAYERS, 3, HKV, D, generator=g), torch.randn(LAYERS, 3, HKV, D, generator=g))
    client, channel = _client(service)
    try:
        # idle instance: the first pass plans at once; the executor gets the most SMs the SLO allows
        _scheduler_pass(sched)
        idle = coloc.last_plan
        assert idle is not None and idle.slo_met and idle.executor_sms > 64
        assert fake.history == [64] and executor.num_sms == 64  # not applied before the executor's next step
        client.begin_step(["r"])
        assert fake.history == [64, idle.executor_sms] and executor.num_sms == idle.executor_sms
        assert plans == [idle.executor_sms] and streams == ["stream-2"]
        _layer(client, 0, g)

        # load rises past what this split serves within the SLO, while a step is in flight
        busy_load = PrefillLoad(40000.0, 2048)
        service_ms = coloc.manager.planner.profile.prefill_ms(idle.prefill_share, 2048, False, LAYERS)
        assert predicted_ttft_ms(service_ms, busy_load) > SLO_MS  # the idle split would miss the SLO
        for _ in range(20):
            _admit(sched, 2000)  # 40000 prompt tokens within the last second
        clock.now += 1.0
        _scheduler_pass(sched)
        busy = coloc.last_plan
        assert coloc.last_load == busy_load
        assert busy.slo_met and busy.executor_sms < idle.executor_sms  # SMs move to prefill: executor share drops
        _layer(client, 1, g)  # the step in flight finishes on its stream and kernel plan
        assert fake.history == [64, idle.executor_sms] and executor.num_sms == idle.executor_sms
        assert plans == [idle.executor_sms] and streams == ["stream-2"]
        assert client.stats()["colocation"]["plan_waiting_for_step"]

        client.begin_step(["r"])  # the next step runs on the new partition
        assert fake.history == [64, idle.executor_sms, busy.executor_sms] and executor.num_sms == busy.executor_sms
        assert plans == [idle.executor_sms, busy.executor_sms] and streams == ["stream-2", "stream-3"]
        _layer(client, 0, g)

        # flat load: hysteresis holds the split
        for _ in range(20):
            _admit(sched, 2000)
        clock.now += 1.0
        _scheduler_pass(sched)
        assert coloc.last_load == busy_load and coloc.last_plan is busy and coloc.plans == 2
        client.begin_step(["r"])
        assert len(fake.history) == 3 and streams == ["stream-2", "stream-3"]

        # between intervals a pass does not re-plan (O(1))
        for _ in range(40):
            _admit(sched, 2000)
        clock.now += 0.5
        _scheduler_pass(sched)
        assert coloc.last_load == busy_load

        stats = client.stats()["colocation"]  # what /adrenaline/load reads
        assert stats["executor_sms"] == busy.executor_sms and stats["executor_sm_share"] == busy.executor_share
        assert stats["plan"]["predicted_ttft_ms"] == busy.predicted_ttft_ms and stats["plan"]["slo_met"]
        assert not stats["plan_waiting_for_step"] and not stats["restart_required"]
    finally:
        channel.close()
    decided = [r.getMessage() for r in caplog.records if "adrenaline colocation: load" in r.getMessage()]
    assert len(decided) == 2 and "applied at the executor's next step" in decided[1]
    assert f"executor {busy.executor_sms}/132 SMs" in decided[1] and "SLO 100.0 ms met" in decided[1]


def test_mps_keeps_a_pending_plan_and_changes_nothing(sgl_context, monkeypatch, clock, caplog, make_scheduler):
    made = _use_fake(monkeypatch, live=False)  # like MPS: no re-partitioning inside a running process
    args = _prefill_args(ttft_slo_ms=SLO_MS)
    caplog.set_level(logging.INFO, logger="adrenaline_sgl")
    with sgl_context():
        sched = make_scheduler(args)
        kept, _, service = _host(sched, args, monkeypatch)
    coloc = getattr(sched, COLOCATION_ATTR)
    client, channel = _client(service)
    try:
        kept.executor.adopt_copy("r", torch.zeros(LAYERS, 2, HKV, D), torch.zeros(LAYERS, 2, HKV, D))
        _scheduler_pass(sched)
        assert coloc.last_plan is not None and coloc.manager.restart_required
        assert coloc.manager.pending is coloc.last_plan
        client.begin_step(["r"])
        assert made[0].history == [64] and kept.executor.num_sms == 64  # nothing moved
        stats = client.stats()["colocation"]
        assert stats["restart_required"] and stats["executor_sms"] == 64
        assert stats["plan"]["executor_sms"] == coloc.last_plan.executor_sms
    finally:
        channel.close()
    assert any("pending" in r.getMessage() and "restart this instance with --adrenaline-executor-sm-share"
               in r.getMessage() for r in caplog.records)  # fmt: skip


def test_without_a_ttft_slo_the_share_stays_fixed(sgl_context, monkeypatch, clock, make_scheduler):
    made = _use_fake(monkeypatch)
    args = _prefill_args()  # no --adrenaline-ttft-slo-ms
    with sgl_context():
        sched = make_scheduler(args)
        kept, _, service = _host(sched, args, monkeypatch)
    assert not hasattr(sched, COLOCATION_ATTR)  # the hooks have nothing to feed
    assert not service.colocation.replanning
    client, channel = _client(service)
    try:
        kept.executor.adopt_copy("r", torch.zeros(LAYERS, 2, HKV, D), torch.zeros(LAYERS, 2, HKV, D))
        for _ in range(5):
            _admit(sched, 5000)
            clock.now += 2.0
            _scheduler_pass(sched)
            client.begin_step(["r"])
        assert made[0].history == [64] and kept.executor.num_sms == 64
        stats = client.stats()["colocation"]
        assert stats["plan"] is None and stats["executor_sms"] == 64 and not stats["replanning"]
    finally:
        channel.close()


def test_the_cpu_partitioner_plans_for_the_profiles_gpu_and_records_only(sgl_context, monkeypatch, clock, caplog,
                                                                         make_scheduler):
    """`none` on CPU knows no SM count: the planner splits the profile's GPU; nothing changes for the executor."""
    args = _prefill_args(ttft_slo_ms=SLO_MS)
    caplog.set_level(logging.INFO, logger="adrenaline_sgl")
    with sgl_context():
        sched = make_scheduler(args)
        kept, _, service = _host(sched, args, monkeypatch)
    coloc = getattr(sched, COLOCATION_ATTR)
    assert coloc.partitioner.name == "none" and coloc.manager.planner.device.total_sms == 108  # the A100 profile
    _scheduler_pass(sched)
    assert coloc.last_plan is not None and coloc.last_plan.total_sms == 108
    assert service.colocation.at_step_boundary() is None  # nothing to move to: none enforces no split
    assert kept.executor.num_sms is None  # the kernel keeps its default
    assert service.colocation.stats()["executor_sm_share"] is None
    assert any("recorded only: the none partitioner enforces no split" in r.getMessage() for r in caplog.records)


def test_a_profile_flag_pointing_at_a_committed_profile_is_used(sgl_context, monkeypatch, clock, make_scheduler):
    from adrenaline_sgl.colocation.profiles import PROFILES_DIR

    _use_fake(monkeypatch)
    folder = next(p for p in sorted(PROFILES_DIR.iterdir()) if (p / "prefill.csv").is_file())
    args = _prefill_args(ttft_slo_ms=SLO_MS, colocation_profile=str(folder))
    with sgl_context():
        sched = make_scheduler(args)
        _host(sched, args, monkeypatch)
    assert getattr(sched, COLOCATION_ATTR).manager.planner.profile.path == folder


def test_load_report_carries_the_share_and_the_last_plan():
    from adrenaline_sgl.protocol import LoadReport
    from adrenaline_sgl.sglang_ext.load_endpoint import colocation_report, report_from_loads

    args = _prefill_args(ttft_slo_ms=SLO_MS)
    plan = {"predicted_ttft_ms": 87.5, "slo_met": True}
    executor = {"tokens_held": 0, "colocation": {"executor_sm_share": 96 / 132, "plan": plan}}
    report = report_from_loads(args, [], executor)
    assert (report.executor_sm_share, report.colocation_ttft_ms, report.colocation_slo_met) == (96 / 132, 87.5, True)
    assert LoadReport.from_dict(report.to_dict()) == report
    unreachable = {"colocation": {"executor_sm_share": 8 / 132, "plan": {"predicted_ttft_ms": math.inf,
                                                                         "slo_met": False}}}  # fmt: skip
    assert colocation_report(unreachable) == {"executor_sm_share": 8 / 132, "colocation_ttft_ms": -1.0,
                                              "colocation_slo_met": False}  # fmt: skip
    fixed = {"colocation": {"executor_sm_share": None, "plan": None}}  # none partitioner, no planner
    assert colocation_report(fixed) == colocation_report(None) == {
        "executor_sm_share": 0.0, "colocation_ttft_ms": 0.0, "colocation_slo_met": True}
    with pytest.raises(ValueError, match="executor_sm_share"):
        LoadReport(role="prefill", executor_sm_share=1.5)


@pytest.mark.gpu
def test_green_context_replan_moves_the_executor_thread_between_steps():
    """On a GPU: a hosted executor (mooncake) on a green-context partition; a re-plan recorded mid-run is taken at
    the next begin_step, whose kernel plan runs on the new partition's stream with its SM count; outputs stay
    equal to a reference executor before and after."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (green contexts)")
    pytest.importorskip("mooncake.engine")
    import socket

    from adrenaline_sgl.colocation.partitioner import PartitionerUnavailable, make_partitioner
    from adrenaline_sgl.colocation.replan import PrefillColocation
    from adrenaline_sgl.offload.client import OffloadClient
    from adrenaline_sgl.offload.executor import AttentionExecutor
    from adrenaline_sgl.offload.hosted import HostedExecutor
    from adrenaline_sgl.offload.pool import KVPool
    from adrenaline_sgl.offload.transports.base import create_channel
    from adrenaline_sgl.offload.wire import RowLayout
    from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV

    try:
        part = make_partitioner("green_context", 0.25, "cuda:0")
    except PartitionerUnavailable as err:
        pytest.skip(f"no green contexts here: {err}")
    pool = KVPool.standalone(LAYERS, 64, HKV, D, device="cuda")
    executor = AttentionExecutor(pool, "auto", num_sms=part.num_sms)
    service = prefill_executor.PrefillExecutorService(executor, KeptKV(pool.bytes_per_slot, executor))
    service.colocation = PrefillColocation(part)
    seen, ops = [], executor.ops  # (num_sms, the thread's current stream) of every per-step kernel plan

    def plan(*args):
        seen.append((args[-1], torch.cuda.current_stream().cuda_stream))
        return ops.plan(*args)

    executor.ops = AttentionOps(ops.name, ops.append_kv, plan, ops.run)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    hosted = HostedExecutor(service, "127.0.0.1", port, stream=part.stream)
    layout = RowLayout(HQ, HKV, D, torch.float32)
    client = OffloadClient(create_channel("mooncake", address=hosted.address, layout=layout), layout, LAYERS)
    local = AttentionExecutor(KVPool.standalone(LAYERS, 64, HKV, D, device="cuda"), "reference")
    g = torch.Generator().manual_seed(0)
    try:
        k, v = torch.randn(LAYERS, 5, HKV, D, generator=g), torch.randn(LAYERS, 5, HKV, D, generator=g)
        client.adopt_copy("a", k, v)
        local.adopt_copy("a", k.cuda(), v.cuda())

        def one_step():
            client.begin_step(["a"])
            local.begin_step(["a"])
            for layer in range(LAYERS):
                q, k_new, v_new = (torch.randn(1, h, D, generator=g) for h in (HQ, HKV, HKV))
                client.submit(layer, q, k_new, v_new)
                o, lse = client.wait()
                o_ref, lse_ref = local.step(layer, ["a"], q.cuda(), k_new.cuda(), v_new.cuda())
                torch.testing.assert_close(o.cpu(), o_ref.cpu(), atol=1e-4, rtol=1e-4)
                torch.testing.assert_close(lse.cpu(), lse_ref.cpu(), atol=1e-4, rtol=1e-4)

        one_step()
        first = (part.num_sms, part.stream.cuda_stream)
        assert seen == [first]
        service.colocation.boundary.repartition(0.5)  # what ColocationManager.on_load does with a new plan
        assert part.num_sms == first[0]  # nothing moves before the executor's next step
        one_step()
        assert part.num_sms > first[0] and seen[-1] == (part.num_sms, part.stream.cuda_stream) != first
        assert client.stats()["colocation"]["executor_sms"] == part.num_sms
    finally:
        client.close()
        hosted.close()
        part.close()
