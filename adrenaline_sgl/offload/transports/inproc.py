"""`inproc`: the executor lives in this process; a worker thread runs its layers (tests, the harness).

The worker thread gives the same overlap as a remote executor: `send_layer` queues and returns, local
attention runs on the caller's thread meanwhile (torch releases the GIL in its kernels).
"""

from __future__ import annotations

import queue
import threading
from typing import Any

import torch

from ..errors import OffloadError
from ..service import ExecutorService
from .base import Channel

_STOP = object()


class InprocChannel(Channel):
    def __init__(self, service: ExecutorService):
        self.address = "inproc"
        self.service = service
        self._jobs: queue.Queue = queue.Queue()
        self._results: queue.Queue = queue.Queue()
        self._worker = threading.Thread(target=self._run, name="adrenaline-inproc-executor", daemon=True)
        self._worker.start()

    def call(self, op: str, args: dict[str, Any], tensors: dict[str, torch.Tensor] | None, timeout_s: float):
        return self.service.control(op, args, tensors or {})

    def send_layer(self, step_id: int, layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> None:
        self._jobs.put((step_id, layer, q, k, v))

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
        return result

    def close(self) -> None:
        self._jobs.put(_STOP)
        self._worker.join(timeout=5)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is _STOP:
                return
            step_id, layer, q, k, v = job
            try:
                result = self.service.layer(step_id, layer, q, k, v)
            except Exception as exc:  # handed to the waiting client, which raises OffloadError
                result = exc
            self._results.put((step_id, layer, result))
