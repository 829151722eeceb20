"""`mooncake` executor end: a ZMQ ROUTER for control and doorbells, Mooncake writes for the layer data.

Per connected client it registers, once, a request buffer (the client writes q|k|v into it) and a reply
buffer (o|lse, written into the client's registered reply buffer with one batched write per layer). The
loop is single-threaded: it runs the executor's layers itself, in arrival order.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import zmq

from ..errors import OffloadError
from ..service import ExecutorService
from ..wire import RowLayout, decode, encode
from .mooncake_engine import MooncakeConfig, process_engine, register, unregister


@dataclass
class _Peer:
    reply_to: bytes  # ZMQ routing id of the client's main socket
    session: str  # the client's Mooncake engine
    reply_addr: int  # the client's registered reply buffer
    layout: RowLayout
    req_buf: torch.Tensor  # [request_bytes(max_rows)] uint8, registered
    reply_buf: torch.Tensor  # [reply_bytes(max_rows)] uint8, registered
    max_rows: int


class MooncakeServer:
    def __init__(self, service: ExecutorService, host: str = "127.0.0.1", port: int = 0,
                 mooncake: MooncakeConfig | None = None):
        self.service = service
        self._engine, self._session = process_engine(mooncake)
        self._ctx = zmq.Context.instance()
        self._router = self._ctx.socket(zmq.ROUTER)
        self._router.setsockopt(zmq.LINGER, 0)
        if port == 0:
            port = self._router.bind_to_random_port(f"tcp://{host}")
        else:
            self._router.bind(f"tcp://{host}:{port}")
        self.address = f"{host}:{port}"
        self._peers: dict[str, _Peer] = {}
        self.layers_served = 0

    def serve(self, stop: threading.Event, poll_ms: int = 100) -> None:
        """Answer messages until `stop` is set."""
        while not stop.is_set():
            if self._router.poll(poll_ms, zmq.POLLIN):
                self.handle(self._router.recv_multipart())

    def close(self) -> None:
        for peer in self._peers.values():
            self._drop(peer)
        self._peers.clear()
        self._router.close(linger=0)

    def handle(self, frames: list[bytes]) -> None:
        identity, frames = frames[0], frames[1:]
        try:
            kind, header, tensors = decode(frames)
        except (ValueError, UnicodeDecodeError) as exc:
            self._reply(identity, "err", {"error": f"malformed message: {exc}", "type": "OffloadError"})
            return
        if kind == "layer":
            self._layer(header)
            return
        seq = header.get("seq")
        try:
            if kind == "connect":
                result = self._connect(identity, header)
            elif kind == "disconnect":
                peer = self._peers.pop(header.get("client"), None)
                if peer is not None:
                    self._drop(peer)
                return
            elif kind == "call":
                result, out_tensors = self.service.control(header["op"], header.get("args", {}), tensors)
                self._reply(identity, "ok", {"seq": seq, "result": result}, out_tensors)
                return
            else:
                raise OffloadError(f"unknown message kind {kind!r}")
        except Exception as exc:  # every failure goes back to the caller, the loop keeps serving
            self._reply(identity, "err", {"seq": seq, "error": str(exc), "type": type(exc).__name__})
            return
        self._reply(identity, "ok", {"seq": seq, "result": result})

    def _connect(self, identity: bytes, header: dict) -> dict:
        layout = RowLayout.from_json(header["layout"])
        max_rows = int(header["max_rows"])
        if not 1 <= max_rows <= 65536:
            raise OffloadError(f"connect: max_rows must lie in [1, 65536], got {max_rows}")
        old = self._peers.pop(header["client"], None)
        if old is not None:
            self._drop(old)
        req_buf = torch.empty(layout.request_bytes(max_rows), dtype=torch.uint8)
        reply_buf = torch.empty(layout.reply_bytes(max_rows), dtype=torch.uint8)
        register(self._engine, req_buf)
        register(self._engine, reply_buf)
        self._peers[header["client"]] = _Peer(identity, header["session"], int(header["reply_addr"]), layout,
                                              req_buf, reply_buf, max_rows)
        return {"session": self._session, "req_addr": req_buf.data_ptr()}

    def _layer(self, header: dict) -> None:
        peer = self._peers.get(header.get("client"))
        if peer is None:
            return  # a doorbell from a client that never connected: nobody to answer
        step_id, layer, rows = int(header["step_id"]), int(header["layer"]), int(header["rows"])
        answer = {"step_id": step_id, "layer": layer, "rows": rows}
        try:
            if not 0 <= rows <= peer.max_rows:
                raise OffloadError(f"layer {layer}: {rows} rows exceed max_rows {peer.max_rows}")
            q, k, v = peer.layout.unpack_request(peer.req_buf, rows)
            o, lse = self.service.layer(step_id, layer, q, k, v)
            nbytes = peer.layout.pack_reply(peer.reply_buf, o, lse)
            rc = self._engine.batch_transfer_sync_write(peer.session, [peer.reply_buf.data_ptr()],
                                                        [peer.reply_addr], [nbytes])
            if rc != 0:
                raise OffloadError(f"mooncake write of layer {layer}'s reply returned {rc}")
        except Exception as exc:
            self._reply(peer.reply_to, "layer_err", {**answer, "error": str(exc), "type": type(exc).__name__})
            return
        self.layers_served += 1
        self._reply(peer.reply_to, "layer_done", answer)

    def _reply(self, identity: bytes, kind: str, header: dict, tensors=None) -> None:
        try:
            self._router.send_multipart([identity, *encode(kind, header, tensors)], zmq.NOBLOCK)
        except zmq.ZMQError:
            pass  # the client is gone; it will time out on its side

    def _drop(self, peer: _Peer) -> None:
        unregister(self._engine, peer.req_buf)
        unregister(self._engine, peer.reply_buf)
