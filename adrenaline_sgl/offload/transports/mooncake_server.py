"""`mooncake` executor end: Mooncake writes for the layer data, `RouterServer` for the rest.

Per connected client it registers, once, a request buffer (q|k|v, read from the client's registered request
buffer with one Mooncake read per layer) and a reply buffer (o|lse, written into the client's registered
reply buffer with one write per layer). The loop is single-threaded: it runs the executor's layers itself,
in arrival order, each client's in its own open step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OffloadError
from ..service import ExecutorService
from ..wire import RowLayout, Staging
from .mooncake_engine import READ, WRITE, MooncakeConfig, process_engine, register, transfer, unregister
from .router import RouterServer


@dataclass
class _Peer:
    reply_to: bytes  # ZMQ routing id of the client's main socket
    session: str  # the client's Mooncake engine
    reply_addr: int  # the client's registered reply buffer
    req_src: int  # the client's registered request buffer
    layout: RowLayout
    req_buf: torch.Tensor  # [request_bytes(max_rows)] uint8, registered
    reply_buf: torch.Tensor  # [reply_bytes(max_rows)] uint8, registered
    max_rows: int
    request: Staging  # req_buf as q|k|v rows
    reply: Staging  # reply_buf as o|lse rows


class MooncakeServer(RouterServer):
    def __init__(self, service: ExecutorService, host: str = "127.0.0.1", port: int = 0,
                 mooncake: MooncakeConfig | None = None):
        self._engine, self._session = process_engine(mooncake)
        super().__init__(service, host, port)

    def _open_peer(self, identity: bytes, header: dict, layout: RowLayout, max_rows: int):
        req_buf = torch.empty(layout.request_bytes(max_rows), dtype=torch.uint8)
        reply_buf = torch.empty(layout.reply_bytes(max_rows), dtype=torch.uint8)
        register(self._engine, req_buf)
        register(self._engine, reply_buf)
        peer = _Peer(identity, header["session"], int(header["reply_addr"]), int(header["req_src"]), layout, req_buf,
                     reply_buf, max_rows, layout.request_staging(req_buf), layout.reply_staging(reply_buf))
        return peer, {"session": self._session, "req_addr": req_buf.data_ptr()}

    def _run_layer(self, peer: _Peer, client: str, step_id: int, layer: int, rows: int) -> None:
        self._move(peer, READ, peer.req_buf, peer.req_src, peer.request.nbytes(rows), f"read of layer {layer}'s rows")
        device = self.service.executor.pool.device  # host staging; the pool may sit on a GPU
        q, k, v = (t.to(device) for t in peer.request.views(rows))
        o, lse = self.service.layer(client, step_id, layer, q, k, v)
        nbytes = peer.reply.pack(o, lse)
        self._move(peer, WRITE, peer.reply_buf, peer.reply_addr, nbytes, f"write of layer {layer}'s reply")

    def _move(self, peer: _Peer, op: str, buf: torch.Tensor, remote_addr: int, nbytes: int, what: str) -> None:
        """One Mooncake transfer between our `buf` and the peer's `remote_addr` (none for no bytes)."""
        rc = transfer(self._engine, peer.session, op, buf.data_ptr(), remote_addr, nbytes) if nbytes else 0
        if rc != 0:
            raise OffloadError(f"mooncake {what} returned {rc}")

    def _close_peer(self, peer: _Peer) -> None:
        unregister(self._engine, peer.req_buf)
        unregister(self._engine, peer.reply_buf)
