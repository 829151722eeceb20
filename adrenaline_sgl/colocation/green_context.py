"""Green-context SM partitions: in-process, re-partitionable without a restart.

Two ways to make them, chosen by `api`:
- "torch": `torch.cuda.green_contexts.GreenContext.create(num_sms=..., device_id=...)` where the
  installed torch was built with it. Limits only the executor; prefill keeps running in the primary
  context and may use every SM (including the executor's when they are idle).
- "driver": the CUDA driver API through cuda-python (`cuda.bindings.driver`), the sequence SGLang's
  `greenctx_stream.cu` uses: cuDeviceGetDevResource(SM) -> cuDevSmResourceSplitByCount -> one green
  context for the executor's group and one for the remaining SMs, so prefill gets a disjoint stream too
  (`Partition.prefill_stream`).
- "auto" (default): torch where supported, else the driver API.

Nothing here imports CUDA modules at import time. NOTE: not yet run on a GPU (none was lent while this
was written); the driver call signatures follow cuda-python 12.x/13.x.
"""

from __future__ import annotations

from typing import Any

from adrenaline_sgl.colocation.arch import share_to_sms
from adrenaline_sgl.colocation.partitioner import Partition, PartitionerUnavailable, SMPartitioner, cuda_device_info

APIS = ("auto", "torch", "driver")


def torch_green_contexts_supported() -> bool:
    try:
        from torch.cuda import green_contexts
    except ImportError:
        return False
    return bool(getattr(green_contexts, "SUPPORTED", False))


def _driver_module():
    try:
        from cuda.bindings import driver
    except ImportError:
        try:
            from cuda import cuda as driver  # cuda-python < 12.6
        except ImportError:
            return None
    return driver


class GreenContextPartitioner(SMPartitioner):
    name = "green_context"
    supports_live_repartition = True

    def __init__(self, device: str = "cuda:0", api: str = "auto"):
        super().__init__()
        if api not in APIS:
            raise ValueError(f"api must be one of {APIS}, got {api!r}")
        self.device = str(device)
        self.info = cuda_device_info(self.device)  # PartitionerUnavailable without a GPU
        self.api = self._pick_api(api)
        self._handles: list[Any] = []  # what _release must free (driver path)
        self._contexts: list[Any] = []  # torch GreenContext objects kept alive while in use

    def _pick_api(self, api: str) -> str:
        has_torch, has_driver = torch_green_contexts_supported(), _driver_module() is not None
        missing = "green contexts are not available here: "
        if api == "torch" and not has_torch:
            raise PartitionerUnavailable(missing + "this torch has no green-context support")
        if api == "driver" and not has_driver:
            raise PartitionerUnavailable(missing + "cuda-python (cuda.bindings) is missing")
        if api == "auto":
            if not (has_torch or has_driver):
                raise PartitionerUnavailable(
                    "green contexts are not available here: neither torch.cuda.green_contexts nor cuda-python"
                )
            return "torch" if has_torch else "driver"
        return api

    def _make(self, sm_share: float) -> Partition:
        sms = share_to_sms(sm_share, self.info)
        if self.api == "torch":
            return self._make_torch(sms)
        return self._make_driver(sms)

    # -- torch.cuda.green_contexts ------------------------------------------------------------------

    def _make_torch(self, sms: int) -> Partition:
        import torch
        from torch.cuda.green_contexts import GreenContext

        index = torch.device(self.device).index or 0
        ctx = GreenContext.create(num_sms=sms, device_id=index)
        self._contexts.append(ctx)
        if hasattr(ctx, "Stream"):  # newer torch: the green context's own stream
            stream = ctx.Stream()
        else:  # torch 2.9: entering the context switches the current stream to the green context's own
            enter, leave = (("make_current", "pop_current") if hasattr(ctx, "make_current")
                            else ("set_context", "pop_context"))  # fmt: skip
            getattr(ctx, enter)()
            try:
                stream = torch.cuda.current_stream(torch.device(self.device))
            finally:
                getattr(ctx, leave)()
        return Partition(self.name, self.device, sms, self.info.total_sms, stream=stream)

    # -- CUDA driver API ----------------------------------------------------------------------------

    def _make_driver(self, sms: int) -> Partition:
        import torch

        drv = _driver_module()

        def call(fn, *args):
            out = fn(*args)
            err, rest = out[0], out[1:]
            if int(err) != 0:
                raise RuntimeError(f"{fn.__name__} failed with {err!r} (executor SMs={sms}, {self.info.name})")
            return rest[0] if len(rest) == 1 else rest

        dev_t = torch.device(self.device)
        self._ensure_primary_context()
        call(drv.cuInit, 0)
        cu_dev = call(drv.cuDeviceGet, dev_t.index or 0)
        whole = call(drv.cuDeviceGetDevResource, cu_dev, drv.CUdevResourceType.CU_DEV_RESOURCE_TYPE_SM)
        groups, n_groups, remaining = call(drv.cuDevSmResourceSplitByCount, 1, whole, 0, sms)
        got = int(groups[0].sm.smCount)
        if got != sms:
            raise RuntimeError(f"green context got {got} SMs, asked for {sms} on {self.info.name}")
        streams = []
        for res in (groups[0], remaining):
            desc = call(drv.cuDevResourceGenerateDesc, [res], 1)
            gctx = call(drv.cuGreenCtxCreate, desc, cu_dev, drv.CUgreenCtxCreate_flags.CU_GREEN_CTX_DEFAULT_STREAM)
            raw = call(drv.cuGreenCtxStreamCreate, gctx, drv.CUstream_flags.CU_STREAM_NON_BLOCKING, 0)
            self._handles.append((drv, gctx, raw))
            streams.append(self._wrap_stream(raw))
        return Partition(
            self.name, self.device, sms, self.info.total_sms, stream=streams[0], prefill_stream=streams[1]
        )

    def _ensure_primary_context(self) -> None:
        """Green contexts are made beside the primary context, which torch creates lazily."""
        import torch

        torch.zeros(1, device=torch.device(self.device))

    def _wrap_stream(self, raw: Any) -> Any:
        import torch

        return torch.cuda.ExternalStream(int(raw), device=torch.device(self.device))

    def _release(self) -> None:
        for drv, gctx, raw in reversed(self._handles):
            drv.cuStreamDestroy(raw)
            drv.cuGreenCtxDestroy(gctx)
        self._handles.clear()
        self._contexts.clear()
