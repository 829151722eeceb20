"""`mooncake` client end: staging buffers registered once, one batched write per layer and direction.

Per layer:  pack q|k|v into the registered send buffer (this thread), then a sender thread does one
`batch_transfer_sync_write` into the executor's request buffer and rings the doorbell (a ZMQ message);
Mooncake sync calls block a thread, so `send_layer` returns at once. The executor answers with one write
of o|lse into our registered reply buffer and a doorbell back; `recv_layer` polls for it with a timeout.

Sockets: one ZMQ DEALER for control calls and doorbells back (this thread only) and one for the sender
thread's doorbells (ZMQ sockets are single-threaded). The server routes replies to the first by id.
"""

from __future__ import annotations

import queue
import threading
import time
import uuid
from typing import Any

import torch
import zmq

from .. import errors
from ..errors import OffloadError
from ..wire import RowLayout, decode, encode
from .base import Channel
from .mooncake_engine import MooncakeConfig, process_engine, register, unregister

_POLL_SLICE_MS = 50
_STOP = object()


def raise_remote(address: str, what: str, header: dict[str, Any]) -> None:
    """Re-raise an executor-side error with its class (UnknownRequestError, PoolFullError, ...)."""
    cls = getattr(errors, header.get("type", ""), None)
    if not (isinstance(cls, type) and issubclass(cls, OffloadError)):
        cls = OffloadError
    raise cls(f"executor at {address}: {what}: {header.get('error', 'unknown error')}")


class MooncakeChannel(Channel):
    def __init__(
        self,
        address: str,
        layout: RowLayout,
        max_rows: int = 256,
        connect_timeout_s: float = 30.0,
        mooncake: MooncakeConfig | None = None,
    ):
        if max_rows < 1:
            raise ValueError(f"max_rows must be >= 1, got {max_rows}")
        self.address = address
        self.layout = layout
        self.max_rows = max_rows
        self._engine, self._session = process_engine(mooncake)
        self._client_id = uuid.uuid4().hex
        self._ctx = zmq.Context.instance()
        self._main = self._socket(f"{self._client_id}-main")
        self._sender = self._socket(f"{self._client_id}-send")
        # NOTE: registered once for the channel's life; the per-layer path only copies into them.
        self._send_buf = torch.empty(layout.request_bytes(max_rows), dtype=torch.uint8)  # q|k|v of N rows
        self._recv_buf = torch.empty(layout.reply_bytes(max_rows), dtype=torch.uint8)  # o|lse of N rows
        register(self._engine, self._send_buf)
        register(self._engine, self._recv_buf)
        self._seq = 0
        self._broken: str | None = None
        self._send_error: str | None = None
        self._jobs: queue.Queue = queue.Queue()
        header = {"client": self._client_id, "session": self._session, "reply_addr": self._recv_buf.data_ptr(),
                  "max_rows": max_rows, "layout": layout.to_json()}
        reply, _ = self._request("connect", header, None, connect_timeout_s, "connect")
        self._peer_session = reply["session"]
        self._peer_req_addr = int(reply["req_addr"])
        self._thread = threading.Thread(target=self._send_loop, name="adrenaline-mooncake-send", daemon=True)
        self._thread.start()

    # ---- Channel ----

    def call(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor] | None, timeout_s: float):
        self._check_usable(op)
        return self._request("call", {"op": op, "args": args}, tensors, timeout_s, op)

    def send_layer(self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._check_usable(f"layer {layer}")
        rows = q.shape[0]
        if rows > self.max_rows:
            raise OffloadError(f"executor at {self.address}, layer {layer}: {rows} rows exceed max_rows "
                               f"{self.max_rows} of this channel")
        nbytes = self.layout.pack_request(self._send_buf, q, k, v)
        self._jobs.put((step_id, layer, rows, nbytes))

    def recv_layer(self, step_id: int, layer: int, timeout_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        deadline = time.monotonic() + timeout_s
        while True:
            if self._send_error is not None:
                self._broken = self._send_error
                raise OffloadError(f"executor at {self.address}, layer {layer}: {self._send_error}")
            frames = self._poll(deadline)
            if frames is None and self._send_error is not None:
                continue  # reported at the top of the loop
            if frames is None:
                self._broken = f"no reply for layer {layer} within {timeout_s} s"
                raise OffloadError(f"executor at {self.address}: no reply for layer {layer} within {timeout_s} s "
                                   "(executor dead or stalled)")
            kind, header, _ = decode(frames)
            if kind not in ("layer_done", "layer_err") or (header.get("step_id"), header.get("layer")) != (
                    step_id, layer):
                continue  # a late answer to an earlier, abandoned request
            if kind == "layer_err":
                raise_remote(self.address, f"layer {layer}", header)
            rows = int(header["rows"])
            return self.layout.unpack_reply(self._recv_buf, rows)

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=2.0)
        if self._broken is None:
            try:
                self._main.send_multipart(encode("disconnect", {"client": self._client_id}), zmq.NOBLOCK)
            except zmq.ZMQError:
                pass
        if not self._thread.is_alive():  # NOTE: a transfer still in flight may use the buffers: keep them then
            unregister(self._engine, self._send_buf)
            unregister(self._engine, self._recv_buf)
        self._main.close(linger=0)
        if not self._thread.is_alive():
            self._sender.close(linger=0)

    # ---- internals ----

    def _socket(self, identity: str) -> zmq.Socket:
        sock = self._ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.ROUTING_ID, identity.encode())
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(f"tcp://{self.address}")
        return sock

    def _check_usable(self, what: str) -> None:
        if self._broken is not None:
            raise OffloadError(f"executor at {self.address}: {what}: channel is broken ({self._broken})")

    def _poll(self, deadline: float) -> list[bytes] | None:
        while True:
            left_ms = (deadline - time.monotonic()) * 1e3
            if left_ms <= 0:
                return None
            if self._main.poll(min(_POLL_SLICE_MS, max(1, int(left_ms))), zmq.POLLIN):
                return self._main.recv_multipart()
            if self._send_error is not None:
                return None

    def _request(self, kind: str, header: dict, tensors, timeout_s: float, what: str):
        self._seq += 1
        header = {**header, "client": self._client_id, "seq": self._seq}
        self._main.send_multipart(encode(kind, header, tensors))
        deadline = time.monotonic() + timeout_s
        while True:
            frames = self._poll(deadline)
            if frames is None:
                self._broken = f"{what} timed out"
                raise OffloadError(f"executor at {self.address}: {what}: no reply within {timeout_s} s")
            reply_kind, reply, reply_tensors = decode(frames)
            if reply.get("seq") != self._seq:
                continue  # a stale layer reply or an answer to a timed-out call
            if reply_kind == "err":
                raise_remote(self.address, what, reply)
            return reply.get("result"), reply_tensors

    def _send_loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            step_id, layer, rows, nbytes = job
            rc = self._engine.batch_transfer_sync_write(
                self._peer_session, [self._send_buf.data_ptr()], [self._peer_req_addr], [nbytes]
            )
            if rc != 0:
                self._send_error = f"mooncake write of layer {layer} returned {rc}"
                continue
            header = {"client": self._client_id, "step_id": step_id, "layer": layer, "rows": rows}
            self._sender.send_multipart(encode("layer", header))
