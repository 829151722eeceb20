"""`inproc`: the executor lives in this process; a worker thread runs its layers (tests, the harness).

The worker thread gives the same overlap as a remote executor: `send_layer` queues and returns, local
attention runs on the caller's thread meanwhile (torch releases the GIL in its kernels). On a GPU the
worker runs on its own CUDA stream, ordered after the caller's stream by an event on the way in and
before it by an event on the way out, so remote and local attention can overlap on the device too.

Each channel is one client of the service (its own id, open step and worker thread): several channels on
one service are several decode instances sharing an executor. `close` disconnects it (an unfinished step
is rolled back). The rows' shapes are checked here, against the layout the channel's `hello` gave, since
this transport hands tensors over instead of unpacking bytes with that layout.
"""

from __future__ import annotations

import queue
import threading
import uuid
from typing import Any

import torch

from ..errors import OffloadError
from ..service import ExecutorService
from ..wire import RowLayout
from .base import Channel

_STOP = object()


class InprocChannel(Channel):
    def __init__(self, service: ExecutorService):
        self.address = "inproc"
        self.service = service
        self.client_id = uuid.uuid4().hex
        self._layout: RowLayout | None = None  # from this channel's hello
        device = service.executor.pool.device
        self._stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="adrenaline-inproc-executor", daemon=True)
        self._worker.start()

    def call(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor] | None, timeout_s: float):
        result = self.service.control(op, args, tensors or {}, self.client_id)
        if op == "hello":
            self._layout = RowLayout.from_json(args["layout"])
        return result

    def send_layer(self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        if self._layout is not None and not self._layout.rows_match(q, k, v):
            raise OffloadError(f"executor at {self.address}, layer {layer}: rows must be q [N, Hq, D], k, v "
                               f"[N, Hkv, D] of {self._layout}, got {tuple(q.shape)}, {tuple(k.shape)}, "
                               f"{tuple(v.shape)} {q.dtype}")
        ready = None
        if self._stream is not None:  # q, k, v are being produced on the caller's stream
            ready = torch.cuda.Event()
            ready.record()
        self._jobs.put((step_id, layer, q, k, v, ready))

    def recv_layer(self, step_id: int, layer: int, timeout_s: float) -> tuple[torch.Tensor, torch.Tensor]:
        try:
            got_step, got_layer, result = self._results.get(timeout=timeout_s)
        except queue.Empty:
            raise OffloadError(f"executor at {self.address}: no reply for layer {layer} within {timeout_s} s") \
                from None
        if isinstance(result, BaseException):
            raise OffloadError(f"executor at {self.address} failed on layer {got_layer}: {result}") from result
        if (got_step, got_layer) != (step_id, layer):
            raise OffloadError(f"executor at {self.address}: expected step {step_id} layer {layer}, "
                               f"got step {got_step} layer {got_layer}")
        o, lse, done = result
        if done is not None:
            torch.cuda.current_stream().wait_event(done)  # o, lse are written on the worker's stream
            o.record_stream(torch.cuda.current_stream())  # NOTE: keep the allocator from reusing them early
            lse.record_stream(torch.cuda.current_stream())
        return o, lse

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._worker.join(timeout=5)
        self.service.disconnect(self.client_id)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            step_id, layer, q, k, v, ready = job
            try:
                if self._stream is None:
                    result = (*self.service.layer(self.client_id, step_id, layer, q, k, v), None)
                else:
                    with torch.cuda.stream(self._stream):
                        self._stream.wait_event(ready)
                        for t in (q, k, v):
                            t.record_stream(self._stream)
                        o, lse = self.service.layer(self.client_id, step_id, layer, q, k, v)
                        done = torch.cuda.Event()
                        done.record()
                    result = (o, lse, done)
            except Exception as exc:  # handed to the waiting client, which raises OffloadError
                result = exc
            self._results.put((step_id, layer, result))
