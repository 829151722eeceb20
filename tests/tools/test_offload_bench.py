"""The decode-step benchmark writes one CSV row per offloaded count, with its meta beside it."""

import csv
import json

from adrenaline_sgl.tools import offload_bench as bench


def test_bench_writes_rows_and_meta(tmp_path):
    argv = ["--model", "tiny-random", "--local", "2", "--offloaded", "0,2", "--context", "8", "--steps", "2",
            "--warmup", "0", "--out", str(tmp_path)]
    assert bench.main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "bench.csv")))
    assert [int(r["offloaded_rows"]) for r in rows] == [0, 2]
    assert all(int(r["steps"]) == 2 and float(r["step_ms_p50"]) > 0 for r in rows)
    assert float(rows[0]["step_vs_local_only"]) == 1.0 and rows[0]["round_trip_ms_p50"] == ""
    assert float(rows[1]["round_trip_ms_p50"]) > 0
    meta = json.loads((tmp_path / "bench.meta.json").read_text())
    assert meta["torch"] and "adrenaline_sgl.tools.offload_bench" in meta["command"]
