"""OffloadClient over the inproc transport: answers, overlap, timeouts, errors; the wire format."""

import threading
import time

import pytest
import torch

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient
from adrenaline_sgl.offload.errors import OffloadError, UnknownRequestError
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports.base import create_channel
from adrenaline_sgl.offload.wire import RowLayout, decode, encode

from .conftest import HKV, HQ, LAYERS, D, random_kv, random_rows

LAYOUT = RowLayout(HQ, HKV, D, torch.float32)


def _client(ex, **cfg) -> OffloadClient:
    return OffloadClient(create_channel("inproc", service=ExecutorService(ex)), LAYOUT, LAYERS, ClientConfig(**cfg))


def test_submit_wait_equals_direct_executor_step(make_executor):
    remote, direct = make_executor(), make_executor()
    client = _client(remote)
    try:
        for rid, n in (("a", 5), ("b", 2)):
            client.adopt_copy(rid, *random_kv(n, seed=n))
            direct.adopt_copy(rid, *random_kv(n, seed=n))
        client.begin_step(["a", "b"])
        direct.begin_step(["a", "b"])
        for layer in range(LAYERS):
            q, k, v = random_rows(2, seed=layer)
            client.submit(layer, q, k, v)
            o, lse = client.wait()
            o_ref, lse_ref = direct.step(layer, ["a", "b"], q, k, v)
            assert torch.equal(o, o_ref) and torch.equal(lse, lse_ref)
        assert len(client.round_trip_ms) == LAYERS and min(client.round_trip_ms) > 0
        assert client.stats()["tokens_held"] == 9
    finally:
        client.close()


def test_submit_returns_before_the_executor_finishes(make_executor):
    ex = make_executor()
    gate = threading.Event()
    real_run_layer = ex.run_layer
    ex.run_layer = lambda *a: (gate.wait(5), real_run_layer(*a))[1]  # a slow executor
    client = _client(ex)
    try:
        client.adopt_copy("a", *random_kv(3))
        client.begin_step(["a"])
        start = time.perf_counter()
        client.submit(0, *random_rows(1))
        assert time.perf_counter() - start < 1.0  # local attention could run now
        gate.set()
        o, _ = client.wait()
        assert o.shape == (1, HQ, D)
    finally:
        client.close()


def test_stalled_executor_times_out_with_address_and_layer(make_executor):
    ex = make_executor()
    gate = threading.Event()
    ex.run_layer = lambda *a: gate.wait(10)
    client = _client(ex, layer_timeout_s=0.3)
    try:
        client.adopt_copy("a", *random_kv(3))
        client.begin_step(["a"])
        client.submit(1, *random_rows(1))
        start = time.perf_counter()
        with pytest.raises(OffloadError, match=r"executor at inproc.*layer 1 within 0.3 s"):
            client.wait()
        assert time.perf_counter() - start < 2.0
    finally:
        gate.set()
        client.close()


def test_executor_errors_surface_as_offload_errors(make_executor):
    client = _client(make_executor())
    try:
        with pytest.raises(UnknownRequestError):
            client.release("ghost")
        with pytest.raises(OffloadError, match="no open step"):
            client.submit(0, *random_rows(1))
        client.adopt_copy("a", *random_kv(3))
        client.begin_step(["a"])
        client.submit(0, *random_rows(1))
        with pytest.raises(OffloadError, match="still pending"):
            client.submit(1, *random_rows(1))
        client.wait()
        with pytest.raises(OffloadError, match="nothing was submitted"):
            client.wait()
    finally:
        client.close()


@pytest.mark.parametrize("field,value", [("layer_timeout_s", 0), ("control_timeout_s", -1.0)])
def test_client_config_validates(field, value):
    with pytest.raises(ValueError, match=field):
        ClientConfig(**{field: value})


def test_wire_roundtrips_tensors_and_rows():
    t = {"k": torch.randn(2, 3, 4), "idx": torch.arange(5), "empty": torch.empty(0, 2)}
    kind, header, back = decode(encode("call", {"op": "x", "n": 3}, t))
    assert kind == "call" and header == {"op": "x", "n": 3}
    assert all(torch.equal(t[name], back[name]) for name in t)
    buf = torch.empty(LAYOUT.request_bytes(3), dtype=torch.uint8)
    q, k, v = random_rows(3)
    assert LAYOUT.pack_request(buf, q, k, v) == buf.numel()
    assert all(torch.equal(a, b) for a, b in zip((q, k, v), LAYOUT.unpack_request(buf, 3)))
    with pytest.raises(ValueError, match="multiple of num_kv_heads"):
        RowLayout(3, 2, 8, torch.float32)
