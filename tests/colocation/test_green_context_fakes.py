"""The green-context partitioner's code paths against fakes of its two external APIs (torch's
GreenContext and the CUDA driver through cuda-python), so the call sequences run on a CPU machine.
The real thing is covered by the gpu-marked test in test_partitioners.py."""

from types import SimpleNamespace

import pytest

from adrenaline_sgl.colocation import green_context as gc
from adrenaline_sgl.colocation.arch import DeviceInfo
from adrenaline_sgl.colocation.partitioner import PartitionerUnavailable

H100 = DeviceInfo("H100 (fake)", 132, (9, 0))


class FakeTorchGreenContext:
    made: list = []

    def __init__(self, num_sms):
        self.num_sms = num_sms

    @classmethod
    def create(cls, *, num_sms, device_id):
        ctx = cls(num_sms)
        cls.made.append((num_sms, device_id))
        return ctx

    def Stream(self):  # noqa: N802 - torch's name
        return SimpleNamespace(sms=self.num_sms, synchronize=lambda: None)


class FakeDriver:
    """cuda.bindings.driver as far as the partitioner uses it; every call returns (CUresult, ...)."""

    class CUdevResourceType:
        CU_DEV_RESOURCE_TYPE_SM = "SM"

    class CUgreenCtxCreate_flags:  # noqa: N801
        CU_GREEN_CTX_DEFAULT_STREAM = 1

    class CUstream_flags:  # noqa: N801
        CU_STREAM_NON_BLOCKING = 1

    def __init__(self, total_sms=132, grant=None):
        self.total, self.grant, self.calls, self.destroyed = total_sms, grant, [], []

    def _res(self, n):
        return SimpleNamespace(sm=SimpleNamespace(smCount=n))

    def cuInit(self, flags):  # noqa: N802
        self.calls.append("cuInit")
        return (0,)

    def cuDeviceGet(self, ordinal):  # noqa: N802
        return (0, f"dev{ordinal}")

    def cuDeviceGetDevResource(self, dev, kind):  # noqa: N802
        assert kind == "SM"
        return (0, self._res(self.total))

    def cuDevSmResourceSplitByCount(self, n_groups, whole, flags, min_count):  # noqa: N802
        got = self.grant or min_count
        return (0, [self._res(got)], 1, self._res(whole.sm.smCount - got))

    def cuDevResourceGenerateDesc(self, resources, n):  # noqa: N802
        return (0, ("desc", resources[0].sm.smCount))

    def cuGreenCtxCreate(self, desc, dev, flags):  # noqa: N802
        return (0, ("gctx", desc[1]))

    def cuGreenCtxStreamCreate(self, gctx, flags, prio):  # noqa: N802
        return (0, ("stream", gctx[1]))

    def cuStreamDestroy(self, raw):  # noqa: N802
        self.destroyed.append(raw)

    def cuGreenCtxDestroy(self, gctx):  # noqa: N802
        self.destroyed.append(gctx)


@pytest.fixture
def fake_gpu(monkeypatch):
    monkeypatch.setattr(gc, "cuda_device_info", lambda device: H100)
    monkeypatch.setattr(gc.GreenContextPartitioner, "_ensure_primary_context", lambda self: None)
    monkeypatch.setattr(gc.GreenContextPartitioner, "_wrap_stream", lambda self, raw: raw)


def test_torch_api_path(fake_gpu, monkeypatch):
    import torch.cuda.green_contexts as tgc

    monkeypatch.setattr(tgc, "GreenContext", FakeTorchGreenContext)
    monkeypatch.setattr(tgc, "SUPPORTED", True)
    FakeTorchGreenContext.made = []
    part = gc.GreenContextPartitioner("cuda:1").open(0.25)
    assert part.api == "torch" and part.num_sms == 32 and part.stream.sms == 32
    assert part.partition.prefill_stream is None  # the torch API limits the executor only
    part.repartition(0.5)
    assert part.num_sms == 64 and FakeTorchGreenContext.made == [(32, 1), (64, 1)]


def test_driver_api_path_gives_disjoint_streams(fake_gpu, monkeypatch):
    drv = FakeDriver()
    monkeypatch.setattr(gc, "torch_green_contexts_supported", lambda: False)
    monkeypatch.setattr(gc, "_driver_module", lambda: drv)
    part = gc.GreenContextPartitioner("cuda:0").open(0.25)
    assert part.api == "driver" and part.num_sms == 32
    assert part.stream == ("stream", 32) and part.partition.prefill_stream == ("stream", 100)
    part.close()
    assert drv.destroyed == [("stream", 100), ("gctx", 100), ("stream", 32), ("gctx", 32)]


def test_driver_granting_a_different_count_is_an_error(fake_gpu, monkeypatch):
    monkeypatch.setattr(gc, "torch_green_contexts_supported", lambda: False)
    monkeypatch.setattr(gc, "_driver_module", lambda: FakeDriver(grant=40))
    with pytest.raises(RuntimeError, match="green context got 40 SMs, asked for 32"):
        gc.GreenContextPartitioner("cuda:0").open(0.25)


def test_no_api_at_all_is_not_available(fake_gpu, monkeypatch):
    monkeypatch.setattr(gc, "torch_green_contexts_supported", lambda: False)
    monkeypatch.setattr(gc, "_driver_module", lambda: None)
    with pytest.raises(PartitionerUnavailable, match="neither torch.cuda.green_contexts nor cuda-python"):
        gc.GreenContextPartitioner("cuda:0")
    with pytest.raises(PartitionerUnavailable, match="cuda-python"):
        gc.GreenContextPartitioner("cuda:0", api="driver")
    with pytest.raises(ValueError, match="api must be one of"):
        gc.GreenContextPartitioner("cuda:0", api="magic")
