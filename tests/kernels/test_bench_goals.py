"""The goal verdicts the GPU run reports, on synthetic benchmark rows."""

from __future__ import annotations

from adrenaline_kernels.bench_goals import check_goals, format_goals


def _row(impl, batch, ctx, time_us, frac, model="llama2-7b"):
    return dict(impl=impl, model=model, dtype="float16", batch=batch, ctx=ctx, time_us=time_us, frac_copy_bw=frac)


def test_goals_met():
    rows = [
        _row("adrenaline", 32, 2048, 100.0, 0.90),
        _row("adrenaline", 128, 4096, 400.0, 0.88),
        _row("adrenaline", 1, 512, 10.0, 0.20),  # small shapes do not count for the bandwidth goal
        _row("sglang_triton", 32, 2048, 120.0, 0.75),
        _row("sglang_triton", 1, 512, 10.0, 0.20),  # a tie is not slower
    ]
    goals = check_goals(rows)
    assert goals["bandwidth"] == dict(shapes=2, min_frac_copy_bw=0.88, median_frac_copy_bw=0.89, met=True)
    base = goals["never_slower_than_sglang"]
    assert base["met"] is True and base["shapes"] == 2 and base["min_speedup_vs_sglang"] == 1.0
    assert "MET (min 88.0%" in format_goals(goals)


def test_goals_missed_names_the_slower_shapes():
    rows = [
        _row("adrenaline", 64, 2048, 100.0, 0.84),
        _row("sglang_triton", 64, 2048, 90.0, 0.93),
        _row("adrenaline", 64, 2048, 50.0, 0.86, model="gqa-32-8"),
    ]
    goals = check_goals(rows)
    assert goals["bandwidth"]["met"] is False and goals["bandwidth"]["min_frac_copy_bw"] == 0.84
    base = goals["never_slower_than_sglang"]
    assert base["met"] is False
    assert base["slower_shapes"] == [dict(model="llama2-7b", dtype="float16", batch=64, ctx=2048, speedup=0.9)]
    text = format_goals(goals)
    assert "NOT MET (min 84.0%" in text and "slower on 1 of 1 shapes" in text


def test_no_covered_shapes():
    goals = check_goals([_row("adrenaline", 1, 512, 10.0, 0.1)])
    assert goals["bandwidth"]["met"] is None and goals["never_slower_than_sglang"]["met"] is None
    assert "no shape with batch >= 32" in format_goals(goals)
