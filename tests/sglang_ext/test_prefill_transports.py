"""The hosted executor's server by transport name (`mooncake`, `cuda_ipc`), the cuda_ipc start-up check, and
the server thread moving to a re-planned partition's stream at a step boundary."""

from __future__ import annotations

import contextlib
import json
import select
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import torch

from adrenaline_sgl import colocation
from adrenaline_sgl.colocation import replan
from adrenaline_sgl.colocation.fake import FakePartitioner
from adrenaline_sgl.colocation.partitioner import Partition
from adrenaline_sgl.offload import hosted as hosting
from adrenaline_sgl.sglang_ext import flags, prefill_colocation, prefill_executor, prefill_hooks

ROOT = Path(__file__).resolve().parents[2]
SLOTS, LAYERS, HKV, HQ, D = 64, 2, 2, 4, 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def sgl_context(tmp_path_factory, tiny_llama_context):
    return tiny_llama_context(tmp_path_factory, "prefill", HKV, LAYERS)


@pytest.fixture
def make_scheduler(prefill_scheduler):
    """`make_scheduler(args)`: a scheduler stand-in over SGLang's KV pool and allocator (conftest)."""
    return lambda args: prefill_scheduler(args, SLOTS, LAYERS, HKV, D)


class MarkedStreams(FakePartitioner):
    def _make(self, sm_share: float) -> Partition:
        part = super()._make(sm_share)
        marker = f"stream-{len(self.history)}"
        return Partition(part.backend, part.device, part.executor_sms, part.total_sms, stream=marker)


class FakeServer:
    """A RouterServer stand-in: records how it was made, serves until stopped."""

    made: list[tuple] = []

    def __init__(self, service, host, port):
        FakeServer.made.append((service, host, port))
        self.service, self.address, self._stream, self.closed = service, f"{host}:{port}", "its own stream", False

    def serve(self, stop, poll_ms: int = 100):
        stop.wait(10.0)

    def close(self):
        self.closed = True


def test_registry_resolves_each_served_transport():
    from adrenaline_sgl.offload.transports.cuda_ipc import CudaIpcServer
    from adrenaline_sgl.offload.transports.mooncake_server import MooncakeServer

    assert hosting.server_class("mooncake") is MooncakeServer
    assert hosting.server_class("cuda_ipc") is CudaIpcServer
    with pytest.raises(ValueError, match="transport='inproc'.*serves mooncake, cuda_ipc"):
        hosting.server_class("inproc")


def test_hosted_executor_takes_its_server_from_the_registry(monkeypatch):
    from adrenaline_sgl.offload.executor import AttentionExecutor
    from adrenaline_sgl.offload.pool import KVPool
    from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV

    monkeypatch.setitem(hosting.SERVERS, "cuda_ipc", lambda: FakeServer)
    monkeypatch.setattr(hosting, "stream_context", lambda stream: contextlib.nullcontext())
    FakeServer.made.clear()
    executor = AttentionExecutor(KVPool.standalone(LAYERS, 16, HKV, D), attention="reference")
    service = prefill_executor.PrefillExecutorService(executor, KeptKV(64, executor))
    hosted = hosting.HostedExecutor(service, "127.0.0.1", 4242, stream="partition stream",
                                   transport="cuda_ipc")  # fmt: skip
    try:
        assert isinstance(hosted.server, FakeServer) and FakeServer.made == [(service, "127.0.0.1", 4242)]
        assert hosted.address == "127.0.0.1:4242" and hosted.serving
        assert hosted.server._stream == "partition stream"  # cuda_ipc layers run on the executor's partition
    finally:
        hosted.close()
    assert hosted.server.closed and not hosted.serving


def test_cuda_ipc_without_a_gpu_fails_at_start_up_in_one_line(sgl_context, make_scheduler):
    if torch.cuda.is_available():
        pytest.skip("a GPU is present: cuda_ipc can be served here")
    args = flags.AdrenalineArgs(role="prefill", transport="cuda_ipc", executor_port=_free_port(),
                                executor_max_tokens=8)  # fmt: skip
    with sgl_context():
        sched = make_scheduler(args)
        free = sched.token_to_kv_pool_allocator.available_size()
        threads = threading.active_count()
        with pytest.raises(ValueError, match=r"transport=cuda_ipc: needs the prefill KV pool on a CUDA GPU.*cpu") \
                as err:
            prefill_hooks.init_disaggregation_hook(lambda self: None, sched)
    assert "\n" not in str(err.value)
    assert sched.token_to_kv_pool_allocator.available_size() == free  # nothing reserved, no thread started
    assert not hasattr(sched, prefill_hooks.SERVER_ATTR) and threading.active_count() == threads


def test_the_server_thread_moves_to_the_new_stream_between_steps(sgl_context, monkeypatch, make_scheduler):
    """Over mooncake (a real HostedExecutor): the re-planned partition's stream becomes the executor thread's
    current stream at its next begin_step, on that thread."""
    pytest.importorskip("mooncake.engine")
    from adrenaline_sgl.offload.client import OffloadClient
    from adrenaline_sgl.offload.transports.base import create_channel
    from adrenaline_sgl.offload.wire import RowLayout

    made, entered, switched = [], [], []
    monkeypatch.setattr(colocation, "executor_partitioner",
                        lambda share, device, name="auto": made.append(MarkedStreams(device).open(share)) or made[-1])
    monkeypatch.setattr(hosting, "stream_context",
                        lambda stream: entered.append(stream) or contextlib.nullcontext())
    monkeypatch.setattr(hosting, "switch_stream",
                        lambda stream: switched.append((threading.current_thread().name, stream)))
    clock = [100.0]
    monkeypatch.setattr(replan, "_clock", lambda: clock[0])
    args = flags.AdrenalineArgs(role="prefill", transport="mooncake", executor_port=_free_port(),
                                executor_max_tokens=8, ttft_slo_ms=100.0)  # fmt: skip
    with sgl_context():
        sched = make_scheduler(args)
        prefill_hooks.init_disaggregation_hook(lambda self: None, sched)
    hosted = getattr(sched, prefill_hooks.SERVER_ATTR)
    layout = RowLayout(HQ, HKV, D, torch.float32)
    client = OffloadClient(create_channel("mooncake", address=hosted.address, layout=layout), layout, LAYERS)
    try:
        assert entered == ["stream-1"]  # the server thread starts on the starting partition's stream
        kept = getattr(sched, prefill_hooks.STORE_ATTR)
        kept.executor.adopt_copy("r", torch.zeros(LAYERS, 2, HKV, D), torch.zeros(LAYERS, 2, HKV, D))
        client.begin_step(["r"])
        assert switched == []  # no plan yet
        prefill_hooks.inflight_hook(lambda self, rids_to_check=None: [], sched)  # a scheduler pass: plans
        plan = getattr(sched, prefill_colocation.COLOCATION_ATTR).last_plan
        assert plan is not None and switched == []  # not on the scheduler thread
        client.begin_step(["r"])
        assert switched == [("adrenaline-executor", "stream-2")]
        assert kept.executor.num_sms == plan.executor_sms == made[0].history[-1]
        assert client.stats()["colocation"]["executor_sms"] == plan.executor_sms
    finally:
        client.close()
        hosted.close()


_SERVER = r"""
import json, sys, types
from adrenaline_sgl.support import torchvision_stub
torchvision_stub.install()
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.colocation.replan import PrefillColocation
from adrenaline_sgl.sglang_ext.prefill_colocation import executor_partition
from adrenaline_sgl.offload.hosted import HostedExecutor
from adrenaline_sgl.sglang_ext.prefill_executor import PrefillExecutorService
from adrenaline_sgl.sglang_ext.prefill_kept import KeptKV
layers, hkv, d = (int(x) for x in sys.argv[1:4])
part = executor_partition(types.SimpleNamespace(executor_sm_share=0.5, executor_partitioner="none"), "cuda:0")
pool = KVPool.standalone(layers, 64, hkv, d, device="cuda")
executor = AttentionExecutor(pool, attention="reference", num_sms=part.num_sms)
service = PrefillExecutorService(executor, KeptKV(pool.bytes_per_slot, executor))
service.colocation = PrefillColocation(part)
hosted = HostedExecutor(service, "127.0.0.1", 0, stream=part.stream, transport="cuda_ipc")
print(json.dumps({"address": hosted.address}), flush=True)
sys.stdin.read()
hosted.close()
"""


@pytest.mark.gpu
def test_hosted_executor_serves_cuda_ipc_one_layer_from_a_client():
    """On a GPU: the prefill-hosted executor (HostedExecutor, its partition's stream) served over cuda_ipc in one
    process, a decode-side client in another; one step of every layer equals a local executor."""
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (cuda_ipc shares GPU buffers between processes)")
    from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
    from adrenaline_sgl.offload.executor import AttentionExecutor
    from adrenaline_sgl.offload.pool import KVPool
    from adrenaline_sgl.offload.transports.base import create_channel
    from adrenaline_sgl.offload.wire import RowLayout

    proc = subprocess.Popen([sys.executable, "-c", _SERVER, str(LAYERS), str(HKV), str(D)], cwd=ROOT,
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        ready, _, _ = select.select([proc.stdout], [], [], 120.0)
        assert ready, "the hosted cuda_ipc executor printed no address within 120 s"
        address = json.loads(proc.stdout.readline())["address"]
        layout = RowLayout(HQ, HKV, D, torch.float32)
        client = OffloadClient(create_channel("cuda_ipc", address=address, layout=layout, max_rows=8), layout,
                               LAYERS, ClientConfig(layer_timeout_s=5.0))  # fmt: skip
        local = AttentionExecutor(KVPool.standalone(LAYERS, 64, HKV, D, device="cuda"), "reference")
        g = torch.Generator().manual_seed(0)
        k, v = torch.randn(LAYERS, 5, HKV, D, generator=g), torch.randn(LAYERS, 5, HKV, D, generator=g)
        try:
            client.adopt_copy("a", k, v)
            local.adopt_copy("a", k.cuda(), v.cuda())
            client.begin_step(["a"])
            local.begin_step(["a"])
            for layer in range(LAYERS):
                q = torch.randn(1, HQ, D, generator=g).cuda()
                k_new, v_new = torch.randn(1, HKV, D, generator=g).cuda(), torch.randn(1, HKV, D, generator=g).cuda()
                client.submit(layer, q, k_new, v_new)
                o, lse = client.wait()
                o_ref, lse_ref = local.step(layer, ["a"], q, k_new, v_new)
                torch.testing.assert_close(o, o_ref)
                torch.testing.assert_close(lse, lse_ref)
            assert client.stats()["colocation"]["partitioner"] == "none"
        finally:
            client.close()
    finally:
        proc.stdin.close()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
