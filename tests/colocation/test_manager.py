"""The colocation manager: live re-partitioning with green contexts (fake here), a pending restart for MPS."""

import pytest

from adrenaline_sgl.colocation import ColocationConfig, make_manager
from adrenaline_sgl.colocation.fake import H100_SXM, FakePartitioner
from adrenaline_sgl.colocation.manager import ColocationManager
from adrenaline_sgl.colocation.planner import PlannerConfig, PrefillLoad, SMSharePlanner

from .conftest import synthetic_profile


def _manager(live: bool) -> ColocationManager:
    part = FakePartitioner(live=live).open(0.25)
    planner = SMSharePlanner(synthetic_profile(), PlannerConfig(ttft_slo_ms=400), H100_SXM)
    return ColocationManager(part, planner)


def test_green_context_style_repartitions_at_once():
    mgr = _manager(live=True)
    new = mgr.on_load(PrefillLoad(6000, 2048))
    assert new is not None and mgr.partitioner.num_sms == new.executor_sms and not mgr.restart_required
    assert mgr.on_load(PrefillLoad(6000, 2048)) is None


def test_mps_style_keeps_the_plan_pending_until_restart():
    mgr = _manager(live=False)
    new = mgr.on_load(PrefillLoad(6000, 2048))
    assert new is not None and mgr.restart_required and mgr.pending == new
    assert mgr.partitioner.num_sms == 32  # still the start-up share
    mgr.mark_restarted()
    assert not mgr.restart_required


def test_make_manager_from_config(tmp_path):
    from adrenaline_sgl.colocation.profiles import write_profile

    write_profile(synthetic_profile(), tmp_path / "prof")
    cfg = ColocationConfig(partitioner="fake", executor_sm_share=0.25, device="cpu", ttft_slo_ms=400,
                           profile=str(tmp_path / "prof"))  # fmt: skip
    mgr = make_manager(cfg)
    assert mgr.partitioner.num_sms == 32 and mgr.planner is not None
    assert mgr.on_load(PrefillLoad(1000, 2048)) is not None
    mgr.close()
    fixed = make_manager(ColocationConfig(partitioner="none", executor_sm_share=0.3, device="cpu"))
    assert fixed.planner is None and fixed.on_load(PrefillLoad(1000, 2048)) is None


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(partitioner="x"), "partitioner must be one of"),
        (dict(executor_sm_share=1.0), r"executor_sm_share must be in \(0, 1\)"),
        (dict(ttft_slo_ms=0), "ttft_slo_ms must be > 0 or None"),
    ],
)
def test_bad_config(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ColocationConfig(**kwargs)
