"""`mooncake` client end: staging buffers registered once, one batched write per layer and direction.

Per layer:  pack q|k|v into the registered send buffer (this thread), then a sender thread does one
`batch_transfer_sync_write` into the executor's request buffer and rings the doorbell (a ZMQ message);
Mooncake sync calls block a thread, so `send_layer` returns at once. The executor answers with one write
of o|lse into our registered reply buffer and a doorbell back; `recv_layer` polls for it with a timeout.

Sockets: the DEALER of `RouterChannel` for control calls and doorbells back (this thread only) and one
for the sender thread's doorbells (ZMQ sockets are single-threaded). The server routes replies to the
first by id.
"""

from __future__ import annotations

import queue
import threading

import torch

from ..wire import RowLayout, encode
from .mooncake_engine import MooncakeConfig, process_engine, register, unregister
from .router import RouterChannel

_STOP = object()


class MooncakeChannel(RouterChannel):
    def __init__(
        self,
        address: str,
        layout: RowLayout,
        max_rows: int = 256,
        connect_timeout_s: float = 30.0,
        mooncake: MooncakeConfig | None = None,
    ):
        super().__init__(address, layout, max_rows)
        self._engine, self._session = process_engine(mooncake)
        self._sender = self._socket(f"{self._client_id}-send")
        # NOTE: registered once for the channel's life; the per-layer path only copies into them.
        self._send_buf = torch.empty(layout.request_bytes(max_rows), dtype=torch.uint8)  # q|k|v of N rows
        self._recv_buf = torch.empty(layout.reply_bytes(max_rows), dtype=torch.uint8)  # o|lse of N rows
        self._send_error: str | None = None
        self._device = torch.device("cpu")
        self._jobs: queue.Queue = queue.Queue()
        reply = self._register_and_connect(connect_timeout_s)
        self._peer_session = reply["session"]
        self._peer_req_addr = int(reply["req_addr"])
        self._thread = threading.Thread(target=self._send_loop, name="adrenaline-mooncake-send", daemon=True)
        self._thread.start()

    def _register_and_connect(self, timeout_s: float) -> dict:
        """Register both staging buffers and connect; on any failure unregister what was registered and close
        the sockets before raising. Why: a failed connect (an executor restarting, busy past the timeout) used to
        leave the buffers registered while Python freed them; the next channel's buffers then landed at the
        same addresses and every later `register_memory` returned -7 (overlapped region), so decode could
        never reach a restarted executor again (issue 18 defect 5). Nothing writes into them before `connect`
        is answered, so unregistering here is safe."""
        registered = []
        try:
            for buf in (self._send_buf, self._recv_buf):
                register(self._engine, buf)
                registered.append(buf)
            return self._connect({"session": self._session, "reply_addr": self._recv_buf.data_ptr()}, timeout_s)
        except BaseException:
            for buf in registered:
                unregister(self._engine, buf)
            self._sender.close(linger=0)
            self._main.close(linger=0)
            raise

    def send_layer(self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._check_rows(layer, q.shape[0])
        self._device = q.device  # replies go back where the queries came from
        nbytes = self.layout.pack_request(self._send_buf, q, k, v)
        self._jobs.put((step_id, layer, q.shape[0], nbytes))

    def recv_layer(self, step_id: int, layer: int, timeout_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        header = self._wait_layer(step_id, layer, timeout_s)
        o, lse = self.layout.unpack_reply(self._recv_buf, int(header["rows"]))
        return o.to(self._device), lse.to(self._device)

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._thread.join(timeout=2.0)
        self._say_goodbye()
        if not self._thread.is_alive():  # NOTE: a transfer still in flight may use the buffers: keep them then
            unregister(self._engine, self._send_buf)
            unregister(self._engine, self._recv_buf)
            self._sender.close(linger=0)
        self._main.close(linger=0)

    def _local_error(self) -> str | None:
        return self._send_error

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
