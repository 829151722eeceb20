"""`ExecutorService` with several clients: what is checked once at connect, and a waiting `begin_step` that
does not hold up another client's layers (the server loop parks it)."""

from __future__ import annotations

import importlib.util
import threading
import time

import pytest
import torch

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.errors import NotReadyError, OffloadError, UnknownRequestError
from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.base import create_channel
from adrenaline_sgl.offload.wire import RowLayout

from .conftest import HKV, HQ, LAYERS, D, random_kv, random_rows

LAYOUT = RowLayout(HQ, HKV, D, torch.float32)


def _service() -> ExecutorService:
    return ExecutorService(AttentionExecutor(KVPool.standalone(LAYERS, 64, HKV, D), "reference"))


def test_connect_checks_the_rows_against_the_pool_once_per_client():
    service = _service()
    with pytest.raises(OffloadError, match="connect: client rows are Hkv=1 D=8"):
        service.connect("A", RowLayout(HQ, 1, D, torch.float32))
    with pytest.raises(OffloadError, match="D=16 torch.float32, the executor pool is Hkv=2 D=8"):
        service.connect("A", RowLayout(HQ, HKV, 16, torch.float32))
    with pytest.raises(OffloadError, match="torch.bfloat16"):
        service.connect("A", RowLayout(HQ, HKV, D, torch.bfloat16))
    service.connect("A", LAYOUT, max_rows=4)
    with pytest.raises(OffloadError, match="client rows have Hq=8, the executor Hq=4"):  # one model per executor
        service.connect("B", RowLayout(2 * HQ, HKV, D, torch.float32))
    with pytest.raises(OffloadError, match="differ from the ones given at connect"):
        service.control("hello", {"layout": RowLayout(2 * HQ, HKV, D, torch.float32).to_json()}, {}, "A")
    with pytest.raises(OffloadError, match="client model has 3 layers, the pool 2"):
        service.control("hello", {"layout": LAYOUT.to_json(), "num_layers": 3}, {}, "A")
    service.control("hello", {"layout": LAYOUT.to_json(), "num_layers": LAYERS}, {}, "A")
    assert list(service.sessions) == ["A"] and service.executor.num_q_heads == HQ


def test_inproc_rows_of_another_shape_are_refused_at_submit():
    client = OffloadClient(create_channel("inproc", service=_service()), LAYOUT, LAYERS)
    try:
        client.adopt_copy("a", *random_kv(3))
        client.begin_step(["a"])
        q, k, v = random_rows(1)
        with pytest.raises(OffloadError, match="rows must be q"):
            client.submit(0, q[:, :2], k, v)  # Hq 2, the layout says 4
        client.abort_step()  # what decode does after a failed submit
        assert client.stats()["layer_calls"] == 0  # the refused rows never reached the executor
        client.begin_step(["a"])
        client.submit(0, q, k, v)
        assert client.wait()[0].shape == (1, HQ, D)
    finally:
        client.close()


WAIT_S = 1.5


class AdoptsLater(ExecutorService):
    """`begin_step` waits for requests not adopted yet (`NotReadyError`), as the prefill instance's does while
    its scheduler has not handed a request over."""

    def _op_begin_step(self, args, tensors, client):
        missing = [rid for rid in args["rids"] if rid not in self.executor.rids]
        if missing:
            raise NotReadyError(UnknownRequestError(f"begin_step: unknown request {missing[0]!r}"), WAIT_S)
        return super()._op_begin_step(args, tensors, client)


def test_blocking_control_retries_until_ready_or_raises_the_final_error():
    service = AdoptsLater(_service().executor)
    threading.Timer(0.2, lambda: service.executor.adopt_copy("late", *random_kv(2))).start()
    assert service.control("begin_step", {"rids": ["late"]}, {}) == (0, {})
    start = time.monotonic()
    with pytest.raises(UnknownRequestError, match="'never'"):
        service.control("begin_step", {"rids": ["never"]}, {})
    assert WAIT_S <= time.monotonic() - start < WAIT_S + 1


@pytest.mark.skipif(importlib.util.find_spec("mooncake") is None, reason="mooncake is not installed")
def test_a_parked_begin_step_does_not_hold_up_another_clients_layers():
    from adrenaline_sgl.offload.transports.mooncake_server import MooncakeServer

    service = AdoptsLater(_service().executor)
    server = MooncakeServer(service)
    stop = threading.Event()
    loop = threading.Thread(target=server.serve, args=(stop,), daemon=True)
    loop.start()
    clients = []
    try:
        for _ in range(2):
            channel = create_channel("mooncake", address=server.address, layout=LAYOUT, max_rows=4)
            clients.append(OffloadClient(channel, LAYOUT, LAYERS, ClientConfig(layer_timeout_s=10)))
        a, b = clients
        b.adopt_copy("b", *random_kv(3))
        outcome = {}
        waiting = threading.Thread(target=lambda: outcome.update(step=a.begin_step(["late"]) or "open"))
        waiting.start()
        time.sleep(0.1)  # a's begin_step is parked at the executor now
        t0 = time.monotonic()
        for step in range(3):
            b.begin_step(["b"])
            for layer in range(LAYERS):
                b.submit(layer, *random_rows(1, seed=10 * step + layer))
                b.wait()
        served_s = time.monotonic() - t0
        assert waiting.is_alive() and served_s < WAIT_S, served_s  # b's 3 steps went through meanwhile
        service.executor.adopt_copy("late", *random_kv(2))  # the "scheduler" hands it over
        waiting.join(timeout=5)
        assert outcome == {"step": "open"}
        start = time.monotonic()
        with pytest.raises(UnknownRequestError, match="'never'"):
            a.begin_step(["never"])
        assert WAIT_S <= time.monotonic() - start < WAIT_S + 2
        print(f"3 steps of client b served in {served_s * 1e3:.0f} ms while client a's begin_step was parked")
    finally:
        for client in clients:
            client.close()
        stop.set()
        loop.join(timeout=5)
        server.close()
