"""The cuda_ipc transport between two processes on one GPU (skipped without a GPU)."""

import time

import pytest
import torch

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.errors import OffloadError, UnknownRequestError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.transports.base import create_channel
from adrenaline_sgl.offload.wire import RowLayout

from .conftest import HKV, HQ, LAYERS, D, random_kv, random_rows

LAYOUT = RowLayout(HQ, HKV, D, torch.float32)


def test_cuda_ipc_without_a_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(OffloadError, match="needs a CUDA GPU"):
        create_channel("cuda_ipc", address="127.0.0.1:1", layout=LAYOUT)


@pytest.mark.gpu
def test_cuda_ipc_steps_equal_a_local_executor_and_a_kill_is_noticed():
    from adrenaline_sgl.offload.process import ExecutorProcess

    cuda = lambda ts: [t.cuda() for t in ts]  # noqa: E731
    local = AttentionExecutor(KVPool.standalone(LAYERS, 64, HKV, D, device="cuda"), "reference")
    with ExecutorProcess(LAYERS, HKV, D, 64, attention="reference", transport="cuda_ipc") as proc:
        channel = create_channel("cuda_ipc", address=proc.address, layout=LAYOUT, max_rows=8)
        client = OffloadClient(channel, LAYOUT, LAYERS, ClientConfig(layer_timeout_s=2.0))
        try:
            for rid, n in (("a", 6), ("b", 3)):
                client.adopt_copy(rid, *random_kv(n, seed=n))
                local.adopt_copy(rid, *cuda(random_kv(n, seed=n)))
            client.begin_step(["b", "a"])
            local.begin_step(["b", "a"])
            for layer in range(LAYERS):
                q, k, v = cuda(random_rows(2, seed=layer))
                client.submit(layer, q, k, v)
                o, lse = client.wait()
                o_ref, lse_ref = local.step(layer, ["b", "a"], q, k, v)
                torch.testing.assert_close(o, o_ref)
                torch.testing.assert_close(lse, lse_ref)
            with pytest.raises(UnknownRequestError):
                client.release("ghost")
            client.begin_step(["a"])
            proc.kill()
            client.submit(0, *cuda(random_rows(1)))
            start = time.perf_counter()
            with pytest.raises(OffloadError, match="layer 0"):
                client.wait()
            assert time.perf_counter() - start < 5
        finally:
            client.close()
