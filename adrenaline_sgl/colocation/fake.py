"""A fake partitioner for CPU tests: pretends to split a described GPU, enforces nothing.

It applies the same rounding as the real partitioners (so plans and errors match), records every
(re)partition, and returns `stream=None` so that code under test runs on the current (CPU) stream.
"""

from __future__ import annotations

from adrenaline_sgl.colocation.arch import DeviceInfo, share_to_sms
from adrenaline_sgl.colocation.partitioner import Partition, SMPartitioner

# An H100 SXM as the default pretend device: 132 SMs, compute capability 9.0 (granules of 8 SMs).
H100_SXM = DeviceInfo("NVIDIA H100 80GB HBM3 (fake)", 132, (9, 0))


class FakePartitioner(SMPartitioner):
    name = "fake"

    def __init__(self, device: str = "cpu", info: DeviceInfo = H100_SXM, live: bool = True):
        super().__init__()
        self.device = str(device)
        self.info = info
        self.supports_live_repartition = live
        self.history: list[int] = []  # executor SM counts, one per (re)partition
        self.released = 0

    def _make(self, sm_share: float) -> Partition:
        sms = share_to_sms(sm_share, self.info)
        self.history.append(sms)
        return Partition(self.name, self.device, sms, self.info.total_sms)

    def _release(self) -> None:
        self.released += 1
