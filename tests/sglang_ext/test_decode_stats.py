"""Decode offload statistics: the client's bounded round-trip window, `DecodeOffload`'s counts, the
`Scheduler.get_internal_state` hook on SGLang's real `Scheduler` method and message types (through SGLang's
own msgpack IPC encoding), and the DP-rank merge the HTTP side does."""

from __future__ import annotations

import threading
import types

import pytest
import torch
from sglang.srt.managers.io_struct import (
    GetInternalStateReq,
    GetInternalStateReqOutput,
    msgpack_decode,
    msgpack_encode,
)
from sglang.srt.managers.scheduler import Scheduler
from sglang.srt.plugins.hook_registry import HookType, _wrap_fn

from adrenaline_sgl.offload import decode_state
from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.decode_state import DecodeOffload
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.base import create_channel
from adrenaline_sgl.offload.wire import RowLayout
from adrenaline_sgl.sglang_ext import decode_stats, flags
from adrenaline_sgl.sglang_ext.decode_stats import DecodeStats

LAYERS, HQ, HKV, D = 2, 4, 2, 8


def inproc_client(window: int = 16384) -> OffloadClient:
    """A real client to a real executor (inproc transport) holding one 3-token request `r`."""
    executor = AttentionExecutor(KVPool.standalone(LAYERS, 64, HKV, D), attention="reference")
    client = OffloadClient(create_channel("inproc", service=ExecutorService(executor)),
                           RowLayout(HQ, HKV, D, torch.float32), LAYERS,
                           ClientConfig(round_trip_window=window))  # fmt: skip
    client.adopt_copy("r", torch.zeros(LAYERS, 3, HKV, D), torch.zeros(LAYERS, 3, HKV, D))
    return client


def run_steps(client: OffloadClient, steps: int) -> None:
    q, kv = torch.randn(1, HQ, D), torch.randn(1, HKV, D)
    for _ in range(steps):
        client.begin_step(["r"])
        for layer in range(LAYERS):
            client.submit(layer, q, kv, kv)
            client.wait()


class FixedClient:
    """Stands in for an OffloadClient whose round trips are known."""

    def __init__(self, samples_ms):
        self.samples_ms = list(samples_ms)

    def recent_round_trips_ms(self, window_s=None):
        return list(self.samples_ms)

    def release(self, rid):
        pass


def test_round_trip_window_is_bounded_and_time_windowed():
    client = inproc_client(window=4)
    try:
        run_steps(client, 5)  # 10 layer round trips
        assert len(client.round_trip_ms) == 4 and len(client._round_trip_end_s) == 4
        recent = client.recent_round_trips_ms()
        assert recent == list(client.round_trip_ms) and min(recent) > 0
        client._round_trip_end_s[0] -= 100.0  # the oldest kept one ended 100 s ago
        assert client.recent_round_trips_ms(window_s=50.0) == list(client.round_trip_ms)[1:]
        client.round_trip_ms.clear()  # bench.py keeps only its timed steps this way
        run_steps(client, 1)
        assert client.recent_round_trips_ms(window_s=50.0) == list(client.round_trip_ms)
        assert len(client.round_trip_ms) == LAYERS
    finally:
        client.close()


def test_round_trip_window_rejects_bad_sizes():
    for bad in (0, 2_000_000):
        with pytest.raises(ValueError, match=r"round_trip_window must lie in \[1, 1000000\]"):
            ClientConfig(round_trip_window=bad)


def test_reading_round_trips_while_the_forward_thread_appends():
    client = inproc_client(window=8)
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                assert len(client.recent_round_trips_ms(60.0)) <= 8
            except Exception as err:  # "deque mutated during iteration" without the lock
                errors.append(err)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        run_steps(client, 15)
    finally:
        stop.set()
        thread.join(timeout=10)
        client.close()
    assert not errors and len(client.round_trip_ms) == 8


def test_decode_offload_counts_and_round_trips():
    clients = {"a:1": FixedClient([1.0, 3.0]), "b:2": FixedClient([2.0])}
    state = DecodeOffload(connect=clients.__getitem__)
    state.mark(0, "room-0", "a:1")
    state.mark(1, "room-1", "a:1")
    state.mark(2, "room-2", "b:2")
    state.client("a:1")
    state.client("b:2")
    state.fail([1], "executor gone")
    assert state.counts() == {"offloaded": 2, "failed": 1, "failures_total": 1, "executors": 2}
    assert sorted(state.recent_round_trips_ms(60.0)) == [1.0, 2.0, 3.0]
    stats = decode_stats.scheduler_stats(state)
    assert stats.rtt_p99_ms == pytest.approx(2.98)  # 1, 2, 3 ms: 2 + 0.98 * (3 - 2)
    assert stats == DecodeStats(rtt_samples=3, rtt_mean_ms=2.0, rtt_p50_ms=2.0, rtt_p99_ms=stats.rtt_p99_ms,
                                offloaded_reqs=2, failed_reqs=1, failed_total=1, executors=2)  # fmt: skip


def test_percentile_interpolates_like_numpy():
    assert decode_stats.percentile([], 99) == 0.0
    assert decode_stats.percentile([5.0], 50) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert decode_stats.percentile(values, 50) == pytest.approx(50.5)
    assert decode_stats.percentile(values, 99) == pytest.approx(99.01)


@pytest.fixture
def scheduler(monkeypatch):
    """SGLang's real `Scheduler` class with the hook applied as `HookRegistry` applies AROUND hooks, and an
    instance carrying only what `get_internal_state` reads (its __init__ needs a model)."""
    monkeypatch.setattr(Scheduler, "get_internal_state", _wrap_fn(Scheduler.get_internal_state,
                                                                  decode_stats.get_internal_state_hook,
                                                                  HookType.AROUND))  # fmt: skip

    def make(role: str):
        sched = Scheduler.__new__(Scheduler)
        sched.server_args = types.SimpleNamespace(_adrenaline=flags.AdrenalineArgs(role=role))
        sched.internal_state = types.SimpleNamespace(
            get_internal_state=lambda req: GetInternalStateReqOutput(internal_state={"world_size": 1}))
        return sched

    yield make
    decode_state.install(None)


def _through_ipc(output: GetInternalStateReqOutput) -> dict:
    """What the tokenizer manager receives: SGLang's own msgpack encoding of the scheduler's answer."""
    decoded = msgpack_decode(msgpack_encode(output))
    assert isinstance(decoded, GetInternalStateReqOutput)
    return decoded.internal_state


def test_hook_adds_the_decode_schedulers_stats_to_its_internal_state(scheduler):
    client = inproc_client()
    try:
        state = DecodeOffload(connect=lambda addr: client)
        state.mark(5, "room-5", "inproc")
        decode_state.install(state)
        run_steps(state.client("inproc"), 3)
        internal = _through_ipc(scheduler("decode").get_internal_state(GetInternalStateReq()))
    finally:
        client.close()
    assert internal["world_size"] == 1  # SGLang's own state is untouched
    stats = decode_stats.combine([internal])
    assert stats.rtt_samples == 3 * LAYERS and stats.offloaded_reqs == 1 and stats.executors == 1
    assert 0 < stats.rtt_p50_ms <= stats.rtt_p99_ms and stats.rtt_mean_ms > 0


def test_hook_without_the_adrenaline_backend_reports_zeros_and_other_roles_nothing(scheduler):
    decode_state.install(None)
    internal = _through_ipc(scheduler("decode").get_internal_state(GetInternalStateReq()))
    assert decode_stats.combine([internal]) == DecodeStats()
    for role in ("prefill", "none"):
        assert decode_stats.STATE_KEY not in scheduler(role).get_internal_state(GetInternalStateReq()).internal_state


def test_hook_keeps_server_info_working_when_the_stats_fail(scheduler, monkeypatch):
    def broken(_offload, window_s=decode_stats.WINDOW_S):
        raise RuntimeError("boom")

    monkeypatch.setattr(decode_stats, "scheduler_stats", broken)
    internal = scheduler("decode").get_internal_state(GetInternalStateReq()).internal_state
    assert internal == {"world_size": 1}


def test_combine_merges_dp_ranks_and_refuses_partial_answers():
    a = DecodeStats(rtt_samples=3, rtt_mean_ms=2.0, rtt_p50_ms=2.0, rtt_p99_ms=4.0, offloaded_reqs=2, executors=1)
    b = DecodeStats(rtt_samples=1, rtt_mean_ms=6.0, rtt_p50_ms=6.0, rtt_p99_ms=6.0, offloaded_reqs=1, failed_reqs=1,
                    executors=1)  # fmt: skip
    merged = decode_stats.combine([{"adrenaline": a.to_dict()}, {"adrenaline": b.to_dict()}])
    assert merged == DecodeStats(rtt_samples=4, rtt_mean_ms=3.0, rtt_p50_ms=6.0, rtt_p99_ms=6.0, offloaded_reqs=3,
                                 failed_reqs=1, executors=1)  # fmt: skip
    assert decode_stats.combine([{"adrenaline": a.to_dict()}, {"world_size": 1}]) is None  # a rank without it
    assert decode_stats.combine([{"adrenaline": {"rtt_mean_ms": -1.0}}]) is None  # garbled
    assert decode_stats.combine([]) is None
