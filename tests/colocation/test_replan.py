"""The prefill arrival window the SM re-planner reads (the re-planning itself runs under SGLang's hooks:
tests/sglang_ext/test_prefill_colocation.py)."""

import math

import pytest

from adrenaline_sgl.colocation.replan import ArrivalWindow


def test_arrival_window_is_exact_for_a_known_sequence():
    w = ArrivalWindow(window_s=10.0, start_s=0.0, min_span_s=1.0)
    w.add(100, 0.5)
    assert w.tokens_per_s(0.5) == 100.0  # span floored at min_span_s: not a burst of 200 tokens/s
    w.add(300, 2.0)
    w.add(600, 5.0)
    assert w.tokens_per_s(5.0) == 1000 / 5.0  # span = time since start while it is shorter than the window
    assert w.tokens_per_s(10.0) == 1000 / 10.0
    assert w.tokens_per_s(12.0) == 600 / 10.0  # admissions at 0.5 and 2.0 left the window (t <= now - 10)
    assert w.tokens_per_s(15.0) == 0.0  # the one at 5.0 too
    w.add(50, 20.0)
    assert w.tokens_per_s(20.0) == 5.0


@pytest.mark.parametrize("kwargs", [{"window_s": 0.0}, {"window_s": math.nan}, {"window_s": 1.0, "min_span_s": 2.0}])
def test_arrival_window_rejects_bad_settings(kwargs):
    with pytest.raises(ValueError, match="arrival") as err:
        ArrivalWindow(start_s=0.0, **kwargs)
    assert "\n" not in str(err.value)
