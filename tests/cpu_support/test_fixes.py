"""The two CPU fixes the plugin applies in every SGLang process when SGLANG_USE_CPU_ENGINE=1."""

from __future__ import annotations

import pytest
import torch

from adrenaline_sgl.sglang_ext.cpu import fixes


@pytest.fixture
def fresh(monkeypatch):
    """Run apply() as in a new process, and undo its global changes afterwards."""
    from sglang.srt.disaggregation.mooncake.conn import MooncakeKVSender

    monkeypatch.setattr(fixes, "_applied", [])
    monkeypatch.setattr(MooncakeKVSender, "supports_host_tensor_indices", True)
    monkeypatch.setattr(torch.cuda, "Event", torch.cuda.Event)
    return MooncakeKVSender


def test_apply_turns_off_host_tensor_indices_and_aliases_the_cuda_event(fresh, capsys):
    applied = fixes.apply()
    assert fresh.supports_host_tensor_indices is False
    assert "MooncakeKVSender.supports_host_tensor_indices=False" in applied
    if torch.cuda.is_available():
        assert torch.cuda.Event is not torch.cpu.Event
    else:
        assert torch.cuda.Event is torch.cpu.Event
        event = torch.cuda.Event()  # what prefill.py does for a cached-prefix early send
        event.record()
        event.synchronize()
        assert event.query()
    line = capsys.readouterr().err
    assert "adrenaline_sgl CPU fixes applied" in line
    assert f"; CPUs {fixes.threads_line().split('CPUs ', 1)[1]}" in line
    assert f"torch threads {torch.get_num_threads()}, OMP_NUM_THREADS=" in line
    assert fixes.apply() == applied  # idempotent


def test_plugin_applies_the_fixes_only_when_asked(fresh, monkeypatch):
    from adrenaline_sgl.sglang_ext import plugin

    monkeypatch.delenv("SGLANG_USE_CPU_ENGINE", raising=False)
    plugin.load()
    assert fresh.supports_host_tensor_indices is True
    monkeypatch.setenv("SGLANG_USE_CPU_ENGINE", "1")
    plugin.load()
    assert fresh.supports_host_tensor_indices is False
