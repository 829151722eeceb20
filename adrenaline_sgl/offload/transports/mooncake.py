"""`mooncake` client end: staging buffers registered once; per layer one Mooncake transfer each way.

Per layer:  pack q|k|v into the registered request buffer and ring the doorbell (a ZMQ message): nothing
else, so `send_layer` returns at once. The executor pulls the rows with one Mooncake read, runs the layer,
writes o|lse into our registered reply buffer with one Mooncake write and rings back; `recv_layer` polls
for that doorbell with a timeout. The request buffer is read only between our doorbell and the executor's
answer, and the next layer is packed only after that answer (`OffloadClient` keeps one layer pending).

NOTE: pulled, not pushed: a push needed a sender thread (a Mooncake transfer blocks its caller) and a
hand-off to it per layer, and the doorbell could only follow the finished write.

Sockets: the DEALER of `RouterChannel` for control calls and the doorbells both ways (this thread only).
"""

from __future__ import annotations

import torch

from ..wire import RowLayout, encode_layer
from .mooncake_engine import MooncakeConfig, process_engine, register, unregister
from .router import RouterChannel


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
        # NOTE: registered once for the channel's life; the per-layer path only copies into them.
        self._send_buf = torch.empty(layout.request_bytes(max_rows), dtype=torch.uint8)  # q|k|v of N rows
        self._recv_buf = torch.empty(layout.reply_bytes(max_rows), dtype=torch.uint8)  # o|lse of N rows
        self._request_rows = layout.request_staging(self._send_buf)
        self._reply_rows = layout.reply_staging(self._recv_buf)
        self._device = torch.device("cpu")
        reply = self._register_and_connect(connect_timeout_s)
        self._peer_session = reply["session"]
        self._peer_req_addr = int(reply["req_addr"])  # the executor's request buffer (tools time raw transfers)

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
            return self._connect({"session": self._session, "reply_addr": self._recv_buf.data_ptr(),
                                  "req_src": self._send_buf.data_ptr()}, timeout_s)
        except BaseException:
            for buf in registered:
                unregister(self._engine, buf)
            self._close_main()
            raise

    def send_layer(self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        rows = q.shape[0]
        self._check_rows(layer, rows)
        self._device = q.device  # replies go back where the queries came from
        self._request_rows.pack(q, k, v)
        self._main.send_multipart(encode_layer("layer", self._client_id, step_id, layer, rows))

    def recv_layer(self, step_id: int, layer: int, timeout_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._wait_layer(step_id, layer, timeout_s)
        o, lse = self._reply_rows.copy_out(rows)
        return o.to(self._device), lse.to(self._device)

    def close(self) -> None:
        self._say_goodbye()
        unregister(self._engine, self._send_buf)
        unregister(self._engine, self._recv_buf)
        self._close_main()
