"""No partitioning: the executor shares every SM with prefill (the baseline, and the CPU path).

On a CUDA device the executor gets its own stream and the whole device's SM count; elsewhere (CPU tests,
the interpreter) the stream is None (run on the current stream) and the SM count is unknown (None), which
the kernel takes as "use your default".
"""

from __future__ import annotations

from adrenaline_sgl.colocation.partitioner import Partition, SMPartitioner, cuda_device_info


class NonePartitioner(SMPartitioner):
    name = "none"
    supports_live_repartition = True  # nothing to change: the share is not enforced

    def __init__(self, device: str = "cuda:0"):
        super().__init__()
        self.device = str(device)

    def _make(self, sm_share: float) -> Partition:
        if not self.device.startswith("cuda"):
            return Partition(self.name, self.device, None, None)
        import torch

        info = cuda_device_info(self.device)
        stream = torch.cuda.Stream(device=torch.device(self.device))
        return Partition(self.name, self.device, info.total_sms, info.total_sms, stream=stream)
