"""Is an emulated prefill GPU busy prefilling right now, and how much HBM bandwidth is that taking?

The attention executor shares its GPU with the prefill engine; in the emulator the executor's attention
time is modelled inside decode's step (`timing.StepModel.decode`), in the decode process, while the prefill
batches run in the prefill process. The prefill process therefore publishes each batch it queues on its
emulated GPU (wall start, wall end, HBM bytes/s) in a 24-byte file, keyed by its executor port, in the
run's trace folder; decode reads it when it times a step with rows on that executor. Both processes run on
one machine and use `time.monotonic()`, which is system-wide.

NOTE: one writer (the prefill scheduler thread), many readers, no lock: a reader may see a half-written
record once in a while; it then reads a wrong start/end pair for one step, which only changes whether that
one step counts as contended.
"""

from __future__ import annotations

import os
import re
import struct

_FMT = "<3d"  # start_s, end_s, bytes_per_s
_SIZE = struct.calcsize(_FMT)


def path(folder: str, executor_port: int | str) -> str:
    return os.path.join(folder, f"prefill-busy-{int(executor_port)}.bin")


class BusyWriter:
    """The prefill side: publish the batch that runs on the emulated GPU."""

    def __init__(self, file_path: str):
        self.fd = os.open(file_path, os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(self.fd, struct.pack(_FMT, 0.0, 0.0, 0.0), 0)

    def publish(self, start_s: float, end_s: float, bytes_per_s: float) -> None:
        os.pwrite(self.fd, struct.pack(_FMT, start_s, end_s, bytes_per_s), 0)

    def close(self) -> None:
        os.close(self.fd)


def read(file_path: str) -> tuple[float, float, float] | None:
    try:
        with open(file_path, "rb") as f:
            data = f.read(_SIZE)
    except OSError:
        return None
    return struct.unpack(_FMT, data) if len(data) == _SIZE else None


_PORT = re.compile(r":(\d+)$")


def busy_bytes_per_s(folder: str | None, executor: str, at_s: float) -> float:
    """HBM bytes/s of the prefill batch running at wall time `at_s` on the GPU of `executor` ("host:port"),
    0 when none runs, nothing was published, or there is no trace folder."""
    if not folder:
        return 0.0
    m = _PORT.search(str(executor))
    if m is None:
        return 0.0
    rec = read(path(folder, m.group(1)))
    if rec is None:
        return 0.0
    start, end, bps = rec
    return bps if start <= at_s < end else 0.0
