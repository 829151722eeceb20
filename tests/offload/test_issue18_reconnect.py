"""Issue 18 defect 5, the transport's half, with real Mooncake on loopback: a restarted executor was unusable
for offload (`register_memory ... returned -7`) until decode restarted too.

Found cause: a connect that failed (an executor restarting, or busy past the connect timeout) left its staging
buffers registered with the process's Mooncake engine while Python freed them; the next channel's buffers
landed at the same addresses and every later `register_memory` failed as an overlapped region. Now a failed
connect unregisters what it registered, and an executor that no longer knows a client (it restarted since the
client connected) refuses its steps at once with `NotConnectedError`, so decode connects again."""

from __future__ import annotations

import socket
import time

import pytest
import torch
import zmq

pytest.importorskip("mooncake.engine", reason="mooncake-transfer-engine is not installed")

from adrenaline_sgl.offload.client import ClientConfig, OffloadClient  # noqa: E402
from adrenaline_sgl.offload.decode_state import DecodeOffload  # noqa: E402
from adrenaline_sgl.offload.errors import NotConnectedError, OffloadError  # noqa: E402
from adrenaline_sgl.offload.process import ExecutorProcess  # noqa: E402
from adrenaline_sgl.offload.transports.base import create_channel  # noqa: E402
from adrenaline_sgl.offload.wire import RowLayout  # noqa: E402

from .conftest import HKV, HQ, LAYERS, D, random_kv, random_rows  # noqa: E402

LAYOUT = RowLayout(HQ, HKV, D, torch.float32)
NUM_SLOTS = 64


def _connect(address: str, connect_timeout_s: float = 30.0) -> OffloadClient:
    channel = create_channel("mooncake", address=address, layout=LAYOUT, max_rows=512,
                             connect_timeout_s=connect_timeout_s)  # fmt: skip
    return OffloadClient(channel, LAYOUT, LAYERS, ClientConfig(layer_timeout_s=5.0))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failed_connect_leaves_no_buffer_registered():
    """Before: the second and every later attempt failed with `register_memory ... returned -7`."""
    silent = zmq.Context.instance().socket(zmq.ROUTER)  # an executor that never answers the connect
    silent.setsockopt(zmq.LINGER, 0)
    port = silent.bind_to_random_port("tcp://127.0.0.1")
    try:
        for _ in range(3):
            with pytest.raises(OffloadError, match="connect: no reply within 0.3 s"):
                _connect(f"127.0.0.1:{port}", connect_timeout_s=0.3)
    finally:
        silent.close(linger=0)
    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference") as proc:
        client = _connect(proc.address)  # the same buffer sizes register fine afterwards
        try:
            client.adopt_copy("a", *random_kv(3))
            client.begin_step(["a"])
            client.submit(0, *random_rows(1))
            assert client.wait()[0].shape == (1, HQ, D)
        finally:
            client.close()


def test_decode_follows_an_executor_restarted_on_the_same_address():
    port = _free_port()
    args = ["--port", str(port)]
    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference", extra_args=args) as proc:
        address = proc.address
        offload = DecodeOffload(connect=_connect)
        old = offload.client(address)
        old.adopt_copy("a", *random_kv(3))
        old.begin_step(["a"])
        proc.kill()
    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference", extra_args=args) as proc:
        assert proc.address == address
        old.abort_step()  # the step on the dead executor is gone; the channel still points at that address
        stale = offload.client(address)
        assert stale is old  # decode saw no failure: its client predates the restart
        stale.adopt_copy("b", *random_kv(4))  # a new request, prefilled by the restarted instance
        t0 = time.monotonic()
        with pytest.raises(NotConnectedError, match="not connected to this executor"):
            stale.begin_step(["b"])  # refused at once, not after a layer timeout
        assert time.monotonic() - t0 < 2.0
        client = offload.reconnect(address)  # what the backend does on NotConnectedError
        try:
            assert client is not old and offload.client(address) is client
            client.begin_step(["b"])
            for layer in range(LAYERS):
                client.submit(layer, *random_rows(1, seed=layer))
                o, _ = client.wait()
                assert torch.isfinite(o).all()
            client.release("b")
            assert client.stats()["tokens_held"] == 0
        finally:
            offload.close()


def test_a_killed_executor_ends_the_layer_wait_in_about_a_second_not_at_the_timeout():
    """chaos: after prefill's SIGKILL or the executor's stop, decode's wait for a layer ran to its 5 s timeout
    (and the decode batch stalled with it). The closed connection now ends it: a 10 s layer timeout here,
    an error within PEER_GONE_S (1 s) plus slack on a busy 2-core machine."""
    from adrenaline_sgl.offload.transports.router import PEER_GONE_S

    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference") as proc:
        channel = create_channel("mooncake", address=proc.address, layout=LAYOUT, max_rows=512)
        client = OffloadClient(channel, LAYOUT, LAYERS, ClientConfig(layer_timeout_s=10.0))
        try:
            client.adopt_copy("a", *random_kv(3))
            client.begin_step(["a"])
            client.submit(0, *random_rows(1))
            client.wait()
            proc.kill()
            client.submit(1, *random_rows(1))
            t0 = time.monotonic()
            with pytest.raises(OffloadError, match="closed its connection"):
                client.wait()
            took_s = time.monotonic() - t0
            assert PEER_GONE_S <= took_s + 0.1 and took_s < PEER_GONE_S + 3.0, took_s
        finally:
            client.close()


def test_nothing_listening_fails_the_connect_in_about_a_second():
    """A decode told to use an executor whose process is gone waited the whole connect timeout (5 s in chaos's
    executor-stop: the request sent just after the stop)."""
    t0 = time.monotonic()
    with pytest.raises(OffloadError, match="nothing listens there"):
        _connect(f"127.0.0.1:{_free_port()}", connect_timeout_s=10.0)
    assert time.monotonic() - t0 < 4.0


def test_a_reply_that_came_while_decode_was_stopped_is_taken_not_timed_out(monkeypatch):
    """chaos decode-sigstop: decode frozen for 6 s mid-wait (layer timeout 3 s) woke past its deadline and failed
    the step although the executor's reply sat in its socket. The clock here jumps past the deadline at once."""
    from adrenaline_sgl.offload.transports import router

    with ExecutorProcess(LAYERS, HKV, D, NUM_SLOTS, attention="reference") as proc:
        client = _connect(proc.address)  # layer timeout 5 s
        try:
            client.adopt_copy("a", *random_kv(3))
            client.begin_step(["a"])
            client.submit(0, *random_rows(1))
            time.sleep(0.5)  # the reply arrives
            real = time.monotonic
            calls = iter(range(10**6))
            monkeypatch.setattr(router.time, "monotonic", lambda: real() + (0 if next(calls) == 0 else 60.0))
            o, _ = client.wait()  # the deadline is taken, then every later reading is a minute on
            assert o.shape == (1, HQ, D)
        finally:
            monkeypatch.undo()
            client.close()
