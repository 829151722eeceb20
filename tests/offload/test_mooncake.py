"""The mooncake transport with the executor in a second process: exact answers, remote errors, a crash."""

import time

import pytest
import torch

pytest.importorskip("mooncake.engine", reason="mooncake-transfer-engine is not installed")

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient  # noqa: E402
from adrenaline_sgl.offload.errors import OffloadError, PoolFullError, UnknownRequestError  # noqa: E402
from adrenaline_sgl.offload.process import ExecutorProcess  # noqa: E402
from adrenaline_sgl.offload.transports.base import create_channel  # noqa: E402
from adrenaline_sgl.offload.wire import RowLayout  # noqa: E402

from .conftest import HKV, HQ, LAYERS, D, random_kv, random_rows  # noqa: E402

LAYOUT = RowLayout(HQ, HKV, D, torch.float32)
NUM_SLOTS = 64


@pytest.fixture(scope="module")
def executor_process():
    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference") as proc:
        yield proc


def _connect(address: str, **cfg) -> OffloadClient:
    channel = create_channel("mooncake", address=address, layout=LAYOUT, max_rows=8, connect_timeout_s=30)
    return OffloadClient(channel, LAYOUT, LAYERS, ClientConfig(**cfg))


def test_remote_steps_equal_a_local_executor(executor_process, make_executor):
    client, local = _connect(executor_process.address), make_executor(NUM_SLOTS)
    try:
        assert client.executor_info["num_slots"] == NUM_SLOTS
        for rid, n in (("a", 6), ("b", 3), ("c", 1)):
            client.adopt_copy(rid, *random_kv(n, seed=n))
            local.adopt_copy(rid, *random_kv(n, seed=n))
        for step in range(2):
            client.begin_step(["c", "a", "b"])
            local.begin_step(["c", "a", "b"])
            for layer in range(LAYERS):
                q, k, v = random_rows(3, seed=10 * step + layer)
                client.submit(layer, q, k, v)
                o, lse = client.wait()
                o_ref, lse_ref = local.step(layer, ["c", "a", "b"], q, k, v)
                assert torch.equal(o, o_ref) and torch.equal(lse, lse_ref)
        assert client.stats()["tokens_held"] == 10 + 2 * 3
        for rid in ("a", "b", "c"):
            client.release(rid)
        assert client.stats()["slots_free"] == NUM_SLOTS
    finally:
        client.close()


def test_remote_errors_keep_their_type(executor_process):
    client = _connect(executor_process.address)
    try:
        with pytest.raises(UnknownRequestError, match=executor_process.address):
            client.release("ghost")
        with pytest.raises(PoolFullError, match="free slots"):
            client.adopt_copy("huge", *random_kv(NUM_SLOTS + 1))
        assert client.stats()["slots_free"] == NUM_SLOTS  # the refused adoption took nothing
        with pytest.raises(OffloadError, match="unknown request"):
            client.begin_step(["nobody"])
    finally:
        client.close()


def test_killed_executor_raises_within_the_timeout():
    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference") as proc:
        client = _connect(proc.address, layer_timeout_s=1.0)
        try:
            client.adopt_copy("a", *random_kv(4))
            client.begin_step(["a"])
            client.submit(0, *random_rows(1))
            client.wait()
            proc.kill()
            client.submit(1, *random_rows(1))
            start = time.perf_counter()
            with pytest.raises(OffloadError, match=rf"executor at {proc.address}.*layer 1"):
                client.wait()
            assert time.perf_counter() - start < 3.0
            with pytest.raises(OffloadError, match="broken"):
                client.submit(0, *random_rows(1))
        finally:
            client.close()
