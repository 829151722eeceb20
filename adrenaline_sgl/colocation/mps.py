"""NVIDIA MPS partitions (what the Adrenaline authors use): the executor is an MPS client process whose
`CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` caps the SMs it may use.

Two halves:
- `MPSDaemon` (the launcher's side): start and stop `nvidia-cuda-mps-control -d` for one GPU with its own
  pipe and log folders; `client_env(sm_share)` is the environment to start the executor process with.
- `MPSPartitioner` (inside the executor process): checks that the percentage took effect (this process is
  a client of the daemon; the SM count CUDA reports is the capped one) and hands out a stream.

Re-planning: the percentage is read once, when the client creates its CUDA context, so MPS cannot move
the split inside a running process (`supports_live_repartition = False`; `repartition` raises
RepartitionNeedsRestart). The colocation manager records the new plan as pending and the launcher applies
it by restarting the executor when it holds no offloaded request (see `manager.py`).
"""

from __future__ import annotations

import math
import os
import shutil
import subprocess
from pathlib import Path

from adrenaline_sgl.colocation.arch import check_share, share_to_sms
from adrenaline_sgl.colocation.partitioner import Partition, PartitionerUnavailable, SMPartitioner, cuda_device_info

CONTROL_BINARY = "nvidia-cuda-mps-control"
ENV_PERCENT = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
ENV_TOTAL_SMS = "ADRENALINE_MPS_TOTAL_SMS"  # set by the launcher: the uncapped SM count, for the check


def find_control_binary(binary: str = CONTROL_BINARY) -> str:
    path = shutil.which(binary)
    if path is None:
        raise PartitionerUnavailable(
            f"MPS is not available here: its control daemon binary {binary!r} is not on PATH "
            "(install the CUDA MPS tools or use partitioner=green_context)"
        )
    return path


def percentage_for(sm_share: float) -> int:
    """MPS takes whole percents; round up so that a tiny share never becomes 0%."""
    return max(1, min(100, math.ceil(check_share(sm_share) * 100)))


class MPSDaemon:
    """One MPS control daemon for one GPU. Every call has a timeout; `stop` is safe to call twice."""

    def __init__(self, gpu: int = 0, workdir: str | Path = "mps", binary: str = CONTROL_BINARY, timeout_s: float = 10):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.binary = find_control_binary(binary)
        self.gpu = int(gpu)
        self.pipe_dir = Path(workdir) / "pipe"
        self.log_dir = Path(workdir) / "log"
        self.timeout_s = timeout_s
        self.running = False

    def env(self) -> dict[str, str]:
        return {
            "CUDA_VISIBLE_DEVICES": str(self.gpu),
            "CUDA_MPS_PIPE_DIRECTORY": str(self.pipe_dir),
            "CUDA_MPS_LOG_DIRECTORY": str(self.log_dir),
        }

    def _control(self, *args: str, stdin: str | None = None) -> str:
        out = subprocess.run(
            [self.binary, *args], input=stdin, env={**os.environ, **self.env()}, capture_output=True, text=True,
            timeout=self.timeout_s, check=False,
        )
        if out.returncode != 0:
            raise RuntimeError(f"{self.binary} {' '.join(args) or repr(stdin)} failed: {out.stderr.strip()[:200]}")
        return out.stdout

    def start(self) -> MPSDaemon:
        self.pipe_dir.mkdir(parents=True, exist_ok=True)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self._control("-d")
        self.running = True
        return self

    def server_pids(self) -> list[int]:
        return [int(tok) for tok in self._control(stdin="get_server_list\n").split() if tok.isdigit()]

    def client_pids(self) -> list[int]:
        pids = []
        for server in self.server_pids():
            pids += [int(t) for t in self._control(stdin=f"get_client_list {server}\n").split() if t.isdigit()]
        return pids

    def client_env(self, sm_share: float, total_sms: int | None = None) -> dict[str, str]:
        """Environment for the executor process (merge into os.environ when spawning it)."""
        env = {**self.env(), ENV_PERCENT: str(percentage_for(sm_share))}
        if total_sms is not None:
            env[ENV_TOTAL_SMS] = str(int(total_sms))
        return env

    def stop(self) -> None:
        if self.running:
            self._control(stdin="quit\n")
            self.running = False

    def __enter__(self) -> MPSDaemon:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class MPSPartitioner(SMPartitioner):
    """Inside an MPS client: verify the cap and give the executor a stream and the capped SM count."""

    name = "mps"
    supports_live_repartition = False

    def __init__(self, device: str = "cuda:0", binary: str = CONTROL_BINARY, daemon: MPSDaemon | None = None):
        super().__init__()
        self.device = str(device)
        find_control_binary(binary)  # a clear error before touching CUDA when MPS is not installed
        self.daemon = daemon

    def _make(self, sm_share: float) -> Partition:
        import torch

        want = percentage_for(sm_share)
        have = os.environ.get(ENV_PERCENT)
        if have is None or int(have) != want:
            raise RuntimeError(
                f"{ENV_PERCENT}={have} in this process but sm_share={sm_share} needs {want}: start the executor "
                "with MPSDaemon.client_env(sm_share)"
            )
        info = cuda_device_info(self.device)  # under MPS, CUDA reports the capped SM count
        total = int(os.environ.get(ENV_TOTAL_SMS, 0)) or None
        if total is not None:
            expected = share_to_sms(sm_share, info.__class__(info.name, total, info.compute_capability))
            if info.total_sms >= total or abs(info.total_sms - expected) > info.granularity.multiple:
                raise RuntimeError(
                    f"MPS cap did not take effect: CUDA reports {info.total_sms} of {total} SMs, expected about "
                    f"{expected} for {ENV_PERCENT}={want}"
                )
        stream = torch.cuda.Stream(device=torch.device(self.device))
        torch.zeros(1, device=torch.device(self.device))  # the CUDA context exists, so the client is connected
        if self.daemon is not None and os.getpid() not in self.daemon.client_pids():
            raise RuntimeError(f"MPS cap did not take effect: pid {os.getpid()} is not a client of the MPS daemon")
        return Partition(self.name, self.device, info.total_sms, total, stream=stream)
