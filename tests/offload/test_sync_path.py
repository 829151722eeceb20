"""The per-layer sync path's pieces: staging views built once, packed doorbells, Mooncake transfers that yield."""

import pytest
import torch
import zmq

from adrenaline_sgl.offload.executor import AttentionExecutor
from adrenaline_sgl.offload.pool import KVPool
from adrenaline_sgl.offload.service import ExecutorService
from adrenaline_sgl.offload.transports import mooncake_engine
from adrenaline_sgl.offload.transports.mooncake_engine import READ, WRITE, transfer
from adrenaline_sgl.offload.transports.router import RouterServer
from adrenaline_sgl.offload.wire import RowLayout, decode, decode_layer, encode_layer

from .conftest import HKV, HQ, LAYERS, D, random_rows

LAYOUT = RowLayout(HQ, HKV, D, torch.bfloat16)


def test_staging_packs_the_same_bytes_as_pack_request_for_every_row_count():
    staged = LAYOUT.request_staging(torch.zeros(LAYOUT.request_bytes(8), dtype=torch.uint8))
    plain = torch.zeros(LAYOUT.request_bytes(8), dtype=torch.uint8)
    for rows in (3, 1, 8, 3):  # a row count seen again reuses its views
        q, k, v = (t.to(torch.bfloat16) for t in random_rows(rows, seed=rows))
        nbytes = staged.pack(q, k, v)
        assert nbytes == LAYOUT.pack_request(plain, q, k, v) == LAYOUT.request_bytes(rows) == staged.nbytes(rows)
        assert torch.equal(staged.buf[:nbytes], plain[:nbytes])
        for got, want in zip(staged.views(rows), (q, k, v)):
            assert torch.equal(got, want)
    assert staged.views(3)[0].data_ptr() == staged.buf.data_ptr()  # views, no copy


def test_staging_copy_out_survives_the_next_layer():
    staged = LAYOUT.reply_staging(torch.zeros(LAYOUT.reply_bytes(4), dtype=torch.uint8))
    o1, lse1 = torch.randn(2, HQ, D).to(torch.bfloat16), torch.randn(2, HQ)
    staged.pack(o1, lse1)
    o, lse = staged.copy_out(2)
    staged.pack(torch.zeros_like(o1), torch.zeros_like(lse1))  # the next layer reuses the buffer
    assert torch.equal(o, o1) and torch.equal(lse, lse1) and o.dtype == torch.bfloat16 and lse.dtype == torch.float32


def test_layer_doorbells_round_trip_and_refuse_malformed_frames():
    frames = encode_layer("layer", "c" * 32, 7, 29, 16)
    assert frames[0] == b"layer" and decode_layer(frames) == ("c" * 32, 7, 29, 16)
    for bad in ([b"layer"], [b"layer", b"short"], [b"layer", frames[1], b"extra"]):
        with pytest.raises(ValueError, match="layer doorbell"):
            decode_layer(bad)


class _FakeEngine:
    """Mooncake's async calls: `statuses` are what `transfer_check_status` answers in turn (0: not done)."""

    def __init__(self, statuses, batch=1234):
        self.statuses, self.batch, self.calls = list(statuses), batch, []

    def batch_transfer_async_read(self, session, local, remote, lengths):
        self.calls.append(("read", session, local, remote, lengths))
        return self.batch

    def batch_transfer_async_write(self, session, local, remote, lengths):
        self.calls.append(("write", session, local, remote, lengths))
        return self.batch

    def transfer_check_status(self, batch):
        assert batch == self.batch
        return self.statuses.pop(0) if self.statuses else 0


def test_transfer_submits_once_and_yields_until_done(monkeypatch):
    yields = []
    monkeypatch.setattr(mooncake_engine.os, "sched_yield", lambda: yields.append(1))
    engine = _FakeEngine([0, 0, 0, 1])
    assert transfer(engine, "peer:1", READ, 100, 200, 48) == 0
    assert engine.calls == [("read", "peer:1", [100], [200], [48])] and len(yields) == 3
    engine = _FakeEngine([1])
    assert transfer(engine, "peer:1", WRITE, 300, 400, 8) == 0 and engine.calls[0][0] == "write"


def test_transfer_reports_failures_and_gives_up_after_its_timeout(monkeypatch):
    monkeypatch.setattr(mooncake_engine.os, "sched_yield", lambda: None)
    assert transfer(_FakeEngine([], batch=0), "peer:1", READ, 1, 2, 3) == -1  # nothing was submitted
    assert transfer(_FakeEngine([], batch=(1 << 64) - 1), "peer:1", READ, 1, 2, 3) == -1
    assert transfer(_FakeEngine([0, -1]), "peer:1", WRITE, 1, 2, 3) == -1
    assert transfer(_FakeEngine([]), "peer:1", WRITE, 1, 2, 3, timeout_s=0.01) == -3  # never done


def test_a_malformed_layer_doorbell_gets_an_error_and_the_server_keeps_serving():
    pool = KVPool.standalone(LAYERS, 16, HKV, D, torch.float32)
    server = RouterServer(ExecutorService(AttentionExecutor(pool, "reference")))
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.ROUTING_ID, b"client-main")
    sock.connect(f"tcp://{server.address}")
    try:
        sock.send_multipart([b"call", b'{"header": {"op": "stats", "seq": 1}, "tensors": []}'])
        assert server._router.poll(5000, zmq.POLLIN)
        call = server._router.recv_multipart()
        server.handle([b"client-main", b"layer", b"short"])
        server.handle([b"client-main", *encode_layer("layer", "never-connected", 0, 0, 1)])  # nobody to answer
        server.handle(call)
        answers = []
        while sock.poll(1000, zmq.POLLIN):
            answers.append(decode(sock.recv_multipart()))
        assert [(kind, header.get("seq")) for kind, header, _ in answers] == [("err", None), ("ok", 1)]
        assert "malformed message" in answers[0][1]["error"] and answers[1][1]["result"]["requests"] == 0
    finally:
        sock.close()
        server.close()
