"""Vidur's TP 1/2/4/8 operator tables against the roofline at the same TP, and the all-reduce cross-check.

The TP table of docs/simulator.md is regenerated here when the shared data is present."""

import csv
from pathlib import Path

import pytest

from adrenaline_sgl.scheduler.collectives import CommModel, LatencyBandwidth
from adrenaline_sgl.scheduler.roofline import RooflinePredictor
from adrenaline_sgl.scheduler.table import TablePredictor
from adrenaline_sgl.tools import calibrate
from adrenaline_sgl.tools import vidur_check as vidur

DOC = Path(__file__).resolve().parents[2] / "docs" / "simulator.md"


def _rewrite_marked(name: str, body: str) -> None:
    text = DOC.read_text()
    new = calibrate.replace_marked(text, name, body)
    if new != text:  # write only on change: other sections of this file belong to other tests
        DOC.write_text(new)
    assert body.strip() in DOC.read_text()

# stated bounds of the TP check (docs/simulator.md): the GEMMs' median absolute error at every TP, per GPU
GEMM_MEDIAN_ABS_PCT = {"a100-80g": 20.0, "h100-sxm": 35.0}


@pytest.fixture(scope="module")
def vidur_root():
    root = vidur.shared_data_dir()
    if not vidur.vidur_mlp_path("a100-80g", root).exists():
        pytest.skip(f"Vidur tables not found under {root} (set ADRENALINE_SHARED_DATA)")
    return root


def test_roofline_against_vidur_at_tp_1_2_4_8(vidur_root):
    rows = vidur.tp_error_rows(vidur_root)
    assert {(r.gpu, r.tp) for r in rows} == {(g, t) for g in vidur.VIDUR_GPUS for t in vidur.VIDUR_TPS}
    assert all(r.points == 259 for r in rows)
    for r in rows:
        if r.op in ("qkv", "o_proj", "ffn"):
            assert r.median_abs < GEMM_MEDIAN_ABS_PCT[r.gpu], r
    _rewrite_marked("vidur-tp-validation", vidur.tp_validation_markdown(vidur_root))


def test_the_check_sees_a_wrong_tp(vidur_root):
    """Predicting TP 8 times with the TP 1 shard misses by far more than the stated bound (not vacuous)."""
    times = vidur.vidur_times(vidur.vidur_mlp_path("a100-80g", vidur_root), 8)
    errs = vidur.validation_errors(RooflinePredictor("a100-80g", "llama2-7b", tp=1), times)
    big = [abs(e) for t, e in errs["ffn"] if t >= 1024]
    assert min(big) > 300.0


def test_tp_tables_load_as_profiles(vidur_root):
    path = vidur.vidur_mlp_path("h100-sxm", vidur_root)
    table = vidur.vidur_profile_table("h100-sxm", path, tp=4)
    assert table.provenance["tp"] == "4"
    p = TablePredictor("h100-sxm", "llama2-7b", table=table, tp=4)
    times = vidur.vidur_times(path, 4)
    assert p.op_cost("ffn", "prefill", 1024).ms == pytest.approx(times["ffn"][1024])


def test_allreduce_cross_check_reads_vidurs_format(tmp_path):
    path = tmp_path / "all_reduce.csv"
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "time_stats.all_reduce.median", "num_workers", "size", "devices_per_node"])
        w.writerow([0, 0.05, 4, 1 << 20, 4])  # one node
        w.writerow([1, 0.30, 4, 64 << 20, 4])
        w.writerow([2, 9.99, 4, 64 << 20, 2])  # two nodes: ignored
    measured = vidur.load_allreduce_csv(path)
    assert measured == {4: {float(1 << 20): 0.05, float(64 << 20): 0.30}}
    comm = CommModel(LatencyBandwidth(100.0, 10.0))
    text = vidur.allreduce_markdown(measured, comm)
    ring = comm.ring_allreduce_ms(64 << 20, 4)
    assert f"| 4 | >= 8 MiB | 1 | 0.300 | {ring:.3f} | {100 * (ring - 0.3) / 0.3:+.1f} |" in text
    assert "NCCL ring (custom all-reduce off)" in text
    with pytest.raises(ValueError, match="no rows with all workers on one node"):
        path.write_text("a,time_stats.all_reduce.median,num_workers,size,devices_per_node\n0,1,2,3,1\n")
        vidur.load_allreduce_csv(path)
