"""The one Mooncake `TransferEngine` of this process (Mooncake allows one engine per process).

TCP on loopback here (`initialize(host, "P2PHANDSHAKE", "tcp", "")`); RDMA on clusters via `protocol`.
`session` is what peers pass to `batch_transfer_sync_write` to reach this engine: "host:rpc_port".
"""

from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

from ..errors import OffloadError

PROTOCOLS = ("tcp", "rdma")


@dataclass(frozen=True)
class MooncakeConfig:
    local_host: str = field(default="127.0.0.1", metadata={"help": "address this engine is reached at"})
    protocol: str = field(default="tcp", metadata={"help": "Mooncake transport: tcp | rdma"})
    device_name: str = field(default="", metadata={"help": "RDMA device list ('' lets Mooncake pick; unused for tcp)"})

    def __post_init__(self):
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be one of {PROTOCOLS}, got {self.protocol!r}")
        if not self.local_host:
            raise ValueError("local_host must be a non-empty host name or address")


@dataclass
class _Engine:
    engine: object
    session: str
    config: MooncakeConfig


_ENGINE: _Engine | None = None
_LOCK = threading.Lock()


def process_engine(config: MooncakeConfig | None = None) -> tuple[object, str]:
    """(engine, session) of this process, created on first use with `config`."""
    global _ENGINE
    config = config or MooncakeConfig()
    with _LOCK:
        if _ENGINE is None:
            try:
                from mooncake.engine import TransferEngine
            except ImportError as exc:
                raise OffloadError(f"the mooncake transport needs mooncake-transfer-engine: {exc}") from exc
            engine = TransferEngine()
            rc = engine.initialize(config.local_host, "P2PHANDSHAKE", config.protocol, config.device_name)
            if rc != 0:
                raise OffloadError(f"mooncake: initialize({config.local_host!r}, {config.protocol!r}) returned {rc}")
            _ENGINE = _Engine(engine, f"{config.local_host}:{engine.get_rpc_port()}", config)
        elif _ENGINE.config != config:
            raise OffloadError(f"mooncake: this process's engine was created with {_ENGINE.config}, not {config}")
        return _ENGINE.engine, _ENGINE.session


def register(engine, buf) -> None:
    rc = engine.register_memory(buf.data_ptr(), buf.numel() * buf.element_size())
    if rc != 0:
        raise OffloadError(f"mooncake: register_memory of {buf.numel() * buf.element_size()} bytes returned {rc}")


def unregister(engine, buf) -> None:
    engine.unregister_memory(buf.data_ptr())


READ, WRITE = "read", "write"
TRANSFER_TIMEOUT_S = 30.0  # what Mooncake's own sync calls allow (MC_TRANSFER_TIMEOUT's default)
_FAILED_BATCH = (0, (1 << 64) - 1)  # what the async submit returns when nothing was submitted


def transfer(engine, session: str, op: str, local_addr: int, remote_addr: int, nbytes: int,
             timeout_s: float = TRANSFER_TIMEOUT_S) -> int:
    """One transfer between registered buffers (`op` READ: remote -> local, WRITE: local -> remote), waited
    for here; Mooncake's status: 0 done, negative failed (-3: not done within `timeout_s`).

    NOTE: not `batch_transfer_sync_*`: they wait by spinning in C++ without ever yielding the core, and where
    Mooncake's own I/O thread shares that core (one pinned core per process) the I/O thread got it only when
    the spinner's time slice ran out: a 30 KiB write on loopback took 3.6 ms instead of 0.1 ms. Here the
    waiting thread yields between status checks, so the I/O thread runs as soon as it is ready.
    """
    submit = engine.batch_transfer_async_read if op == READ else engine.batch_transfer_async_write
    batch = submit(session, [local_addr], [remote_addr], [nbytes])
    if batch in _FAILED_BATCH:
        return -1
    deadline = None
    while True:
        status = engine.transfer_check_status(batch)  # frees the batch once it is done or failed
        if status == 1:
            return 0
        if status < 0:
            return status
        if deadline is None:
            deadline = time.monotonic() + timeout_s
        elif time.monotonic() > deadline:
            return -3  # NOTE: the batch stays allocated: freeing it under a live transfer is unsafe
        os.sched_yield()
