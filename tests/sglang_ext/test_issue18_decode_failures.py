"""Issue 18 defect 6, decode's half: offloaded requests that failed (their executor gone) were invisible: decode
reported only the ones being aborted at that moment (0 a second later). Now decode counts every one
(`DecodeOffload.counts()["failures_total"]`), through its scheduler's stats to `/adrenaline/load`
(`LoadReport.offload_failures_total`), where the proxy reads it. On real servers:
tests/e2e/test_issue18_e2e.py::test_defect6_failed_offloads_are_counted_by_decode."""

from __future__ import annotations

import pytest

from adrenaline_sgl.offload.decode_state import DecodeOffload
from adrenaline_sgl.protocol import LoadReport
from adrenaline_sgl.sglang_ext import decode_stats, flags
from adrenaline_sgl.sglang_ext.load_endpoint import report_from_loads


def test_failed_offloads_are_counted_in_decodes_load_report():
    offload = DecodeOffload(connect=lambda addr: None)
    for row in (1, 2, 3):
        offload.mark(row, f"room-{row}", "10.0.0.1:31000")
    offload.fail([1, 2], "executor gone")
    offload.fail([2], "executor gone")  # the same row again: counted once
    offload.fail([9], "not offloaded")  # a row that is not offloaded is no offload failure
    assert offload.counts()["failures_total"] == 2
    offload.unmark(1, release=False)
    offload.unmark(2, release=False)  # aborted and gone: the counter stays
    stats = decode_stats.scheduler_stats(offload)
    assert (stats.failed_reqs, stats.failed_total, stats.offloaded_reqs) == (0, 2, 1)
    combined = decode_stats.combine([{"adrenaline": stats.to_dict()}, {"adrenaline": stats.to_dict()}])
    assert combined.failed_total == 4  # DP ranks add up
    report = report_from_loads(flags.AdrenalineArgs(role="decode"), [], None, combined)
    assert report.offload_failures_total == 4
    assert LoadReport.from_dict(report.to_dict()).offload_failures_total == 4  # what the proxy parses
    with pytest.raises(ValueError, match="offload_failures_total"):
        LoadReport(role="decode", offload_failures_total=-1)
