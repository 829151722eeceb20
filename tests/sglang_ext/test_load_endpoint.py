"""`/adrenaline/load`: SGLang's load snapshots summed into the report the proxy parses."""

import asyncio
import socket
import time

from fastapi import FastAPI
from fastapi.testclient import TestClient
from sglang.srt.managers.load_snapshot import LoadSnapshot

from adrenaline_sgl.protocol import LOAD_PATH, LoadReport
from adrenaline_sgl.sglang_ext import flags
from adrenaline_sgl.sglang_ext.decode_stats import DecodeStats
from adrenaline_sgl.sglang_ext.load_endpoint import make_handler, report_from_loads


class FakeTokenizerManager:
    def __init__(self, snapshots):
        self.snapshots = snapshots

    async def get_loads(self, include=None, dp_rank=None):
        return self.snapshots


class DecodeTokenizerManager(FakeTokenizerManager):
    """Answers `get_internal_state` (one dict per DP rank) after `delay_s`, as the decode scheduler would."""

    def __init__(self, snapshots, states, delay_s=0.0):
        super().__init__(snapshots)
        self.states, self.delay_s = states, delay_s

    async def get_internal_state(self):
        await asyncio.sleep(self.delay_s)
        return self.states


def _client(args, snapshots, manager=None, **handler_kw):
    app = FastAPI()
    manager = manager or FakeTokenizerManager(snapshots)
    app.add_api_route(LOAD_PATH, make_handler(args, lambda: manager, **handler_kw), methods=["GET"])
    return TestClient(app)


class ExecutorControlSocket:
    """The executor's control socket as `MooncakeServer` runs it (ZMQ ROUTER, wire frames), `call` only."""

    def __init__(self, tokens_held: int):
        import threading

        import torch
        import zmq

        from adrenaline_sgl.offload.executor import AttentionExecutor
        from adrenaline_sgl.offload.pool import KVPool
        from adrenaline_sgl.offload.service import ExecutorService

        executor = AttentionExecutor(KVPool.standalone(2, 64, 2, 8), attention="reference")
        executor.adopt_copy("room-1", torch.zeros(2, tokens_held, 2, 8), torch.zeros(2, tokens_held, 2, 8))
        self.service = ExecutorService(executor)
        self.sock = zmq.Context.instance().socket(zmq.ROUTER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.port = self.sock.bind_to_random_port("tcp://127.0.0.1")
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self):
        from adrenaline_sgl.offload.wire import decode, encode

        while not self._stop.is_set():
            if self.sock.poll(20):
                identity, *frames = self.sock.recv_multipart()
                _, header, tensors = decode(frames)
                result, _ = self.service.control(header["op"], header.get("args", {}), tensors)
                self.sock.send_multipart([identity, *encode("ok", {"seq": header.get("seq"), "result": result})])

    def close(self):
        self._stop.set()
        self._thread.join(timeout=5)
        self.sock.close(linger=0)


def test_prefill_report_sums_dp_ranks_and_reads_the_executor():
    executor = ExecutorControlSocket(tokens_held=5)
    try:
        args = flags.AdrenalineArgs(role="prefill", executor_port=executor.port)
        snapshots = [LoadSnapshot(dp_rank=r, num_running_reqs=2, num_waiting_reqs=1, num_used_tokens=100,
                                  max_total_num_tokens=1000) for r in range(2)]  # fmt: skip
        body = _client(args, snapshots).get(LOAD_PATH).json()
    finally:
        executor.close()
    report = LoadReport.from_dict(body)
    assert report == LoadReport(role="prefill", num_running_reqs=4, num_waiting_reqs=2, token_usage=0.1,
                                max_total_tokens=2000, executor_addr=f"127.0.0.1:{executor.port}",
                                executor_healthy=True, executor_kv_tokens=5,
                                executor_kv_bytes=5 * 2 * 2 * 2 * 8 * 4, offloaded_reqs=1,
                                executor_free_tokens=64 - 5, executor_capacity_tokens=64)  # fmt: skip


def test_executor_capacity_is_the_configured_reserve_when_there_is_one():
    """What the proxy's capacity admission compares a request's full length with."""
    from adrenaline_sgl.sglang_ext.load_endpoint import executor_capacity_tokens

    stats = {"slots_free": 59, "tokens_held": 5, "capacity_slots": 16384}  # a reserve inside prefill's pool
    assert executor_capacity_tokens(flags.AdrenalineArgs(role="prefill", executor_max_tokens=1024), stats) == 1024
    assert executor_capacity_tokens(flags.AdrenalineArgs(role="prefill"), stats) == 64
    assert executor_capacity_tokens(flags.AdrenalineArgs(role="prefill"), None) == 0  # no answer: unknown


def test_dead_executor_is_reported_unhealthy():
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before the check
    args = flags.AdrenalineArgs(role="prefill", executor_port=port)
    assert _client(args, []).get(LOAD_PATH).json()["executor_healthy"] is False


def test_decode_report_names_no_executor():
    report = report_from_loads(flags.AdrenalineArgs(role="decode"), [{"num_running_reqs": 3}], False)
    assert report.role == "decode" and report.executor_addr == "" and report.num_running_reqs == 3


DECODE_SNAPSHOT = LoadSnapshot(dp_rank=0, num_running_reqs=3, num_used_tokens=10, max_total_num_tokens=100)


def test_decode_report_carries_the_schedulers_offload_stats():
    stats = DecodeStats(rtt_samples=60, rtt_mean_ms=2.5, rtt_p50_ms=2.0, rtt_p99_ms=9.0, offloaded_reqs=2,
                        failed_reqs=1, executors=1)  # fmt: skip
    manager = DecodeTokenizerManager([DECODE_SNAPSHOT], [{"world_size": 1, "adrenaline": stats.to_dict()}])
    report = LoadReport.from_dict(_client(flags.AdrenalineArgs(role="decode"), [], manager).get(LOAD_PATH).json())
    assert report == LoadReport(role="decode", num_running_reqs=3, token_usage=0.1, max_total_tokens=100,
                                offloaded_reqs=2, offload_rtt_ms=2.5, offload_stats_ok=True, offload_rtt_p50_ms=2.0,
                                offload_rtt_p99_ms=9.0, offload_rtt_samples=60, offload_failed_reqs=1)  # fmt: skip


def test_decode_report_degrades_when_the_scheduler_does_not_answer_in_time():
    stats = DecodeStats(rtt_samples=1, rtt_mean_ms=2.5, offloaded_reqs=2)
    manager = DecodeTokenizerManager([DECODE_SNAPSHOT], [{"adrenaline": stats.to_dict()}], delay_s=30.0)
    t0 = time.monotonic()
    body = _client(flags.AdrenalineArgs(role="decode"), [], manager, stats_timeout_s=0.2).get(LOAD_PATH).json()
    assert time.monotonic() - t0 < 5.0  # the timeout, not the scheduler's 30 s
    report = LoadReport.from_dict(body)
    assert report.offload_stats_ok is False and report.offload_rtt_ms == 0.0 and report.offloaded_reqs == 0
    assert report.num_running_reqs == 3  # SGLang's own load still reported


def test_decode_report_without_our_key_is_unknown_not_zero_load():
    manager = DecodeTokenizerManager([DECODE_SNAPSHOT], [{"world_size": 1}])  # the hook did not run there
    body = _client(flags.AdrenalineArgs(role="decode"), [], manager).get(LOAD_PATH).json()
    assert body["offload_stats_ok"] is False and body["offload_rtt_ms"] == 0.0
