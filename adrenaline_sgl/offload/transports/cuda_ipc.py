"""`cuda_ipc`: decode and executor processes on one node share GPU staging buffers (GPU only).

The client allocates, once, a request buffer (q|k|v of up to `max_rows` rows) and a reply buffer (o|lse)
on its GPU, plus two interprocess CUDA events, and hands their IPC handles to the executor at `connect`.
Per layer:
    client:   pack q|k|v into the request buffer on its current stream, record `req_ready`, doorbell
    executor: its stream waits for `req_ready`, runs the layer, packs o|lse into the reply buffer,
              records `reply_ready`, doorbell back
    client:   its current stream waits for `reply_ready`, then copies o|lse out
Nothing blocks the host on the GPU: ordering is by events, the doorbells are ZMQ messages (`router.py`).
NOTE: buffer reuse is safe because a layer's doorbell back comes only after the executor has queued all
reads of that layer's request, and the client queues the next request after waiting on `reply_ready`.

Handles travel as JSON (hex bytes), not pickle. Only for a trusted peer on the same node: whoever holds
the handles can read and write the buffers. Not runnable without CUDA; the tests skip it on CPU machines.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import OffloadError
from ..service import ExecutorService
from ..wire import RowLayout, encode_layer
from .router import RouterChannel, RouterServer


def share_buffer(buf: torch.Tensor) -> dict:
    """JSON-able IPC description of a CUDA uint8 buffer (from `UntypedStorage._share_cuda_`)."""
    (device, handle, size_bytes, offset_bytes, ref_counter_handle, ref_counter_offset, event_handle,
     event_sync_required) = buf.untyped_storage()._share_cuda_()
    return {"device": device, "handle": handle.hex(), "size_bytes": size_bytes, "offset_bytes": offset_bytes,
            "ref_counter_handle": ref_counter_handle.hex(), "ref_counter_offset": ref_counter_offset,
            "event_handle": event_handle.hex() if event_handle else None,
            "event_sync_required": event_sync_required, "storage_offset": buf.storage_offset(),
            "numel": buf.numel()}


def open_buffer(desc: dict) -> torch.Tensor:
    """The peer's buffer as a uint8 tensor in this process (no copy)."""
    torch.cuda._lazy_init()
    storage = torch.UntypedStorage._new_shared_cuda(
        desc["device"], bytes.fromhex(desc["handle"]), desc["size_bytes"], desc["offset_bytes"],
        bytes.fromhex(desc["ref_counter_handle"]), desc["ref_counter_offset"],
        bytes.fromhex(desc["event_handle"]) if desc["event_handle"] else None, desc["event_sync_required"])
    flat = torch.empty(0, dtype=torch.uint8, device=f"cuda:{desc['device']}")
    flat.set_(storage, desc["storage_offset"], (desc["numel"],), (1,))
    return flat


def _require_cuda() -> None:
    if not torch.cuda.is_available():
        raise OffloadError("the cuda_ipc transport needs a CUDA GPU (torch.cuda.is_available() is False)")


class CudaIpcChannel(RouterChannel):
    def __init__(self, address: str, layout: RowLayout, max_rows: int = 256, connect_timeout_s: float = 30.0,
                 device: str | torch.device = "cuda"):
        _require_cuda()
        super().__init__(address, layout, max_rows)
        self.device = torch.device(device)
        self._req_buf = torch.empty(layout.request_bytes(max_rows), dtype=torch.uint8, device=self.device)
        self._reply_buf = torch.empty(layout.reply_bytes(max_rows), dtype=torch.uint8, device=self.device)
        self._req_ready = torch.cuda.Event(interprocess=True)
        self._reply_ready = torch.cuda.Event(interprocess=True)
        self._req_ready.record()  # NOTE: an event must have been recorded once before its handle is shared
        self._reply_ready.record()
        torch.cuda.current_stream(self.device).synchronize()
        self._connect({"req_buf": share_buffer(self._req_buf), "reply_buf": share_buffer(self._reply_buf),
                       "req_ready": self._req_ready.ipc_handle().hex(),
                       "reply_ready": self._reply_ready.ipc_handle().hex()}, connect_timeout_s)

    def send_layer(self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._check_rows(layer, q.shape[0])
        self.layout.pack_request(self._req_buf, q, k, v)  # queued on the current stream
        self._req_ready.record()
        self._main.send_multipart(encode_layer("layer", self._client_id, step_id, layer, q.shape[0]))

    def recv_layer(self, step_id: int, layer: int, timeout_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        rows = self._wait_layer(step_id, layer, timeout_s)
        torch.cuda.current_stream(self.device).wait_event(self._reply_ready)
        return self.layout.unpack_reply(self._reply_buf, rows)

    def close(self) -> None:
        self._say_goodbye()
        self._close_main()


@dataclass
class _Peer:
    reply_to: bytes
    layout: RowLayout
    req_buf: torch.Tensor  # the client's, opened through IPC
    reply_buf: torch.Tensor
    req_ready: torch.cuda.Event
    reply_ready: torch.cuda.Event
    max_rows: int


class CudaIpcServer(RouterServer):
    def __init__(self, service: ExecutorService, host: str = "127.0.0.1", port: int = 0):
        _require_cuda()
        super().__init__(service, host, port)
        self.device = service.executor.pool.device
        if self.device.type != "cuda":
            raise OffloadError(f"cuda_ipc: the executor pool must be on a GPU, it is on {self.device}")
        self._stream = torch.cuda.Stream(self.device)

    def _open_peer(self, identity: bytes, header: dict, layout: RowLayout, max_rows: int):
        req_buf, reply_buf = open_buffer(header["req_buf"]), open_buffer(header["reply_buf"])
        if req_buf.numel() < layout.request_bytes(max_rows) or reply_buf.numel() < layout.reply_bytes(max_rows):
            raise OffloadError("cuda_ipc connect: the shared buffers are smaller than max_rows needs")
        req_ready = torch.cuda.Event.from_ipc_handle(self.device, bytes.fromhex(header["req_ready"]))
        reply_ready = torch.cuda.Event.from_ipc_handle(self.device, bytes.fromhex(header["reply_ready"]))
        return _Peer(identity, layout, req_buf, reply_buf, req_ready, reply_ready, max_rows), {}

    def _run_layer(self, peer: _Peer, client: str, step_id: int, layer: int, rows: int) -> None:
        with torch.cuda.stream(self._stream):
            self._stream.wait_stream(torch.cuda.default_stream(self.device))  # begin_step's plan tensors
            self._stream.wait_event(peer.req_ready)
            q, k, v = peer.layout.unpack_request(peer.req_buf, rows)
            o, lse = self.service.layer(client, step_id, layer, q, k, v)
            peer.layout.pack_reply(peer.reply_buf, o, lse)
            peer.reply_ready.record(self._stream)
