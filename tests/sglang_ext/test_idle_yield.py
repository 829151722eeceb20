"""The prefill scheduler that hosts the executor yields the GIL when its loop found no batch
(`prefill_hooks.idle_yield_hook` around SGLang's `Scheduler.on_idle`)."""

from __future__ import annotations

import types

import pytest

from adrenaline_sgl.sglang_ext import flags, prefill_hooks


def _scheduler(role="prefill", yield_us=flags.DEFAULT_IDLE_YIELD_US, hosted=True, sleeper=None):
    args = flags.AdrenalineArgs(role=role, executor_idle_yield_us=yield_us)
    sched = types.SimpleNamespace(server_args=types.SimpleNamespace(**{flags.ATTR_NAME: args}), idle_sleeper=sleeper)
    setattr(sched, prefill_hooks.SERVER_ATTR, object() if hosted else None)
    return sched


@pytest.mark.parametrize(("kwargs", "slept"), [
    ({}, [0.0005]),
    ({"yield_us": 0.0}, []),  # off
    ({"hosted": False}, []),  # no executor here: SGLang's loop as it is
    ({"role": "decode"}, []),
    ({"sleeper": object()}, [0.0005]),  # --sleep-on-idle parks the loop only when nothing is in flight
])  # fmt: skip
def test_an_idle_pass_sleeps_only_on_a_prefill_hosting_the_executor(monkeypatch, kwargs, slept):
    calls, sleeps = [], []
    monkeypatch.setattr(prefill_hooks.time, "sleep", sleeps.append)
    sched = _scheduler(**kwargs)
    assert prefill_hooks.idle_yield_hook(lambda self: calls.append(self) or "done", sched) == "done"
    assert calls == [sched] and sleeps == pytest.approx(slept)


def test_the_hook_target_is_what_the_prefill_loop_calls_when_it_has_no_batch():
    import inspect

    from sglang.srt.disaggregation.prefill import SchedulerDisaggregationPrefillMixin
    from sglang.srt.managers.scheduler import Scheduler

    owner, name = prefill_hooks.ON_IDLE.rsplit(".", 1)
    assert owner.endswith(".Scheduler") and callable(getattr(Scheduler, name))
    assert f"self.{name}()" in inspect.getsource(SchedulerDisaggregationPrefillMixin)
    on_idle = inspect.getsource(Scheduler.on_idle)  # in flight: a bare time.sleep(0); fully idle: the sleeper
    assert on_idle.index("time.sleep(0)") < on_idle.index("self.maybe_sleep_on_idle()")


def test_bad_yield_is_a_one_line_error():
    with pytest.raises(ValueError, match="executor_idle_yield_us=-1: expected 0..100000"):
        flags.AdrenalineArgs(role="prefill", executor_idle_yield_us=-1)
