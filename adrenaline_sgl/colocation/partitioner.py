"""The SMPartitioner interface and its registry.

A partitioner gives the attention executor a CUDA stream bound to an SM partition of the prefill GPU and
the partition's real SM count, which the executor passes to the decode kernel (`num_sms=`). Alternatives
(green contexts, MPS, none, a fake for tests) sit behind `PARTITIONERS`; creators import lazily so that a
CPU machine never imports a CUDA-only module.

    part = make_partitioner("green_context", sm_share=0.25, device="cuda:0")
    with torch.cuda.stream(part.stream):
        decode_attention(..., num_sms=part.num_sms)
    part.repartition(0.375)   # green contexts only; MPS needs a process restart (see mps.py)
    part.close()
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from adrenaline_sgl.colocation.arch import DeviceInfo, check_share


class PartitionerUnavailable(RuntimeError):
    """The partitioner cannot work on this machine (no GPU, no driver support, no MPS daemon binary)."""


class RepartitionNeedsRestart(RuntimeError):
    """The partitioner cannot change its split inside a running process (MPS)."""


@dataclass(frozen=True)
class Partition:
    """One realised split of a GPU's SMs."""

    backend: str  # registry name of the partitioner that made it
    device: str  # e.g. "cuda:0"
    executor_sms: int | None  # SMs the executor's stream may use; None: not known (no GPU, kernel default)
    total_sms: int | None
    stream: Any = None  # torch.cuda.Stream bound to the executor's SMs; None: the current stream
    prefill_stream: Any = None  # stream bound to the remaining SMs where the backend can make one, else None

    @property
    def prefill_sms(self) -> int | None:
        if self.executor_sms is None or self.total_sms is None:
            return None
        return self.total_sms - self.executor_sms

    @property
    def executor_share(self) -> float | None:
        if self.executor_sms is None or not self.total_sms:
            return None
        return self.executor_sms / self.total_sms


class SMPartitioner(ABC):
    """Holds the executor's current partition; `stream` and `num_sms` are what the executor uses."""

    name: str = "abstract"
    supports_live_repartition: bool = False  # True: repartition() works without restarting the process

    def __init__(self) -> None:
        self._partition: Partition | None = None

    @abstractmethod
    def _make(self, sm_share: float) -> Partition:
        """Create the partition for an executor SM share in (0, 1)."""

    def _release(self) -> None:  # noqa: B027 - backends without resources need nothing here
        """Free what `_make` created (streams, contexts)."""

    def open(self, sm_share: float) -> SMPartitioner:
        check_share(sm_share)
        self._partition = self._make(sm_share)
        return self

    def repartition(self, sm_share: float) -> Partition:
        """Move the executor to a new share. Work already queued on the old stream finishes first."""
        check_share(sm_share)
        if not self.supports_live_repartition:
            raise RepartitionNeedsRestart(
                f"the {self.name} partitioner cannot change sm_share inside a running process: restart the "
                f"executor with sm_share={sm_share}"
            )
        old = self.partition
        if old.stream is not None and hasattr(old.stream, "synchronize"):
            old.stream.synchronize()
        self._release()
        self._partition = self._make(sm_share)
        return self._partition

    @property
    def partition(self) -> Partition:
        if self._partition is None:
            raise RuntimeError(f"{self.name} partitioner is not open: call open(sm_share) first")
        return self._partition

    @property
    def stream(self) -> Any:
        return self.partition.stream

    @property
    def num_sms(self) -> int | None:
        return self.partition.executor_sms

    @property
    def total_sms(self) -> int | None:
        return self.partition.total_sms

    def close(self) -> None:
        if self._partition is not None:
            self._release()
            self._partition = None

    def __enter__(self) -> SMPartitioner:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def cuda_device_info(device: str) -> DeviceInfo:
    """SM count and architecture of a CUDA device; PartitionerUnavailable where there is none."""
    import torch

    if not str(device).startswith("cuda"):
        raise PartitionerUnavailable(f"SM partitioning is not available here: device={device!r} is not a CUDA device")
    if not torch.cuda.is_available():
        raise PartitionerUnavailable(
            "SM partitioning is not available here: no CUDA GPU (torch.cuda.is_available() is False)"
        )
    props = torch.cuda.get_device_properties(torch.device(device))
    return DeviceInfo(props.name, props.multi_processor_count, (props.major, props.minor))


def _green_context(device: str, **kw) -> SMPartitioner:
    from adrenaline_sgl.colocation.green_context import GreenContextPartitioner

    return GreenContextPartitioner(device, **kw)


def _mps(device: str, **kw) -> SMPartitioner:
    from adrenaline_sgl.colocation.mps import MPSPartitioner

    return MPSPartitioner(device, **kw)


def _none(device: str, **kw) -> SMPartitioner:
    from adrenaline_sgl.colocation.none import NonePartitioner

    return NonePartitioner(device, **kw)


def _fake(device: str, **kw) -> SMPartitioner:
    from adrenaline_sgl.colocation.fake import FakePartitioner

    return FakePartitioner(device, **kw)


PARTITIONERS: dict[str, Callable[..., SMPartitioner]] = {
    "green_context": _green_context,
    "mps": _mps,
    "none": _none,
    "fake": _fake,
}


def make_partitioner(name: str, sm_share: float, device: str = "cuda:0", **kwargs) -> SMPartitioner:
    """Create and open the named partitioner with the executor's SM share in (0, 1).

    Returns an object with `.stream` (run the executor's kernels there) and `.num_sms` (pass it to the
    kernel). Raises ShareError for a bad share, PartitionerUnavailable where the backend cannot work here.
    """
    if name not in PARTITIONERS:
        raise ValueError(f"partitioner must be one of {sorted(PARTITIONERS)}, got {name!r}")
    check_share(sm_share)
    return PARTITIONERS[name](device, **kwargs).open(sm_share)


def executor_partitioner(sm_share: float, device: str, name: str = "auto", **kwargs) -> SMPartitioner:
    """What the SGLang plugin calls with the executor's SM-share flag.

    `sm_share == 1.0` means "the whole GPU, no partition" (the none partitioner). `name="auto"` picks
    green contexts on a CUDA device and none elsewhere (CPU tests); an explicit name is used as given and
    fails with PartitionerUnavailable where it cannot work (no silent fallback)."""
    if sm_share == 1.0:
        return make_partitioner("none", 0.5, device)  # the share is not enforced by "none"
    if name == "auto":
        name = "green_context" if str(device).startswith("cuda") else "none"
    return make_partitioner(name, sm_share, device, **kwargs)
