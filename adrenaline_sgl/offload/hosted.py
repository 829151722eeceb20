"""The executor served on a thread of another process (the prefill instance's scheduler process), by
transport name (`mooncake`, `cuda_ipc`), on the CUDA stream of its SM partition. SGLang-free: what serves
it over SGLang's pool is `adrenaline_sgl.sglang_ext.prefill_executor`."""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable

import torch

from adrenaline_sgl.offload.transports.base import DEFAULT_TRANSPORT

logger = logging.getLogger(__name__)


def _mooncake_server():
    from adrenaline_sgl.offload.transports.mooncake_server import MooncakeServer

    return MooncakeServer


def _cuda_ipc_server():
    from adrenaline_sgl.offload.transports.cuda_ipc import CudaIpcServer

    return CudaIpcServer


# The executor end of each transport a prefill instance serves (lazy: cuda_ipc never imported for mooncake).
SERVERS: dict[str, Callable[[], type]] = {"mooncake": _mooncake_server, "cuda_ipc": _cuda_ipc_server}


def server_class(transport: str) -> type:
    if transport not in SERVERS:
        raise ValueError(f"adrenaline transport={transport!r}: a prefill instance serves {', '.join(SERVERS)}")
    return SERVERS[transport]()


def check_transport_here(transport: str, device) -> None:
    """A transport this instance cannot serve fails here, at start-up, in one line (not in the server thread)."""
    if transport == "cuda_ipc" and (torch.device(device).type != "cuda" or not torch.cuda.is_available()):
        raise ValueError(f"adrenaline transport=cuda_ipc: needs the prefill KV pool on a CUDA GPU, this instance's "
                         f"is on {device} (torch.cuda.is_available()={torch.cuda.is_available()}); use mooncake")


def stream_context(stream):
    """Run the thread's kernels on `stream` (None: the thread's current stream)."""
    return torch.cuda.stream(stream) if stream is not None else contextlib.nullcontext()


def switch_stream(stream) -> None:
    """Make `stream` this thread's current stream (between steps; the `stream_context` exit restores)."""
    if stream is not None:
        torch.cuda.set_stream(stream)


class HostedExecutor:
    """The executor's server thread in this process (transport `mooncake` or `cuda_ipc`). `service` is an
    `ExecutorService` with the `on_fault_stop` and `on_new_partition` attributes (PrefillExecutorService)."""

    def __init__(self, service, host: str, port: int, fault_injection: bool = False,
                 stream=None, transport: str = DEFAULT_TRANSPORT):
        self.stream = stream  # the executor partition's CUDA stream; None: the thread's current stream
        self.server = server_class(transport)(service, host, port)
        self._use_layer_stream(stream)
        self.address = self.server.address
        self._stop = threading.Event()
        self._closed = False
        self._close_lock = threading.Lock()
        if fault_injection:
            service.on_fault_stop = self._stop.set
        service.on_new_partition = self._on_new_partition
        self._thread = threading.Thread(target=self._serve, daemon=True, name="adrenaline-executor")
        self._thread.start()

    def _use_layer_stream(self, stream) -> None:
        # NOTE: CudaIpcServer runs each layer on its own `_stream`; hosted, the layers belong on the partition's.
        if stream is not None and hasattr(self.server, "_stream"):
            self.server._stream = stream

    def _on_new_partition(self, part) -> None:
        """On the server thread, between steps (PrefillExecutorService._step_boundary)."""
        self.stream = part.stream
        switch_stream(part.stream)
        self._use_layer_stream(part.stream)

    def _serve(self) -> None:
        with stream_context(self.stream):  # every kernel the executor launches from this thread goes to its partition
            self.server.serve(self._stop)
        if self.server.service.on_fault_stop is not None:  # stopped by fault injection: let go of the port too
            logger.warning("adrenaline: executor on %s stopped by fault injection", self.address)
            self._close_server()

    def _close_server(self) -> None:
        with self._close_lock:
            if not self._closed:
                self._closed = True
                self.server.close()

    @property
    def serving(self) -> bool:
        return self._thread.is_alive()

    def close(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout=timeout_s)
        self._close_server()
