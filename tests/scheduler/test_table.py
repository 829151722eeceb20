"""Table predictor: interpolation, extrapolation, provenance, CSV round trip, Vidur held-out error."""

import statistics

import pytest

from adrenaline_sgl.scheduler.cost_model import get_predictor
from adrenaline_sgl.scheduler.roofline import RooflinePredictor
from adrenaline_sgl.scheduler.table import PROVENANCE_KEYS, ProfileTable, TablePredictor, TableRow
from adrenaline_sgl.tools import vidur_check as vidur

PROV = {k: f"test-{k}" for k in PROVENANCE_KEYS} | {"gpu": "h100-sxm", "model": "llama2-7b"}


def _table(extra=()):
    rows = [TableRow("qkv", "decode", t, 0, 1, 1.0, 0.01 * t + 0.03) for t in (1, 16, 64, 256)]
    rows += [
        TableRow("attn", "decode", b, b * c, b, 1.0, 1e-4 * b * c + 0.005) for b in (1, 8, 32) for c in (128, 1024)
    ]
    rows += [TableRow("attn", "prefill", n, 0, 1, 1.0, 1e-6 * n * n + 0.01) for n in (128, 512, 2048)]
    return ProfileTable(dict(PROV), tuple(rows) + tuple(extra))


P = TablePredictor("h100-sxm", "llama2-7b", table=_table())
ROOF = RooflinePredictor("h100-sxm", "llama2-7b")


def test_exact_at_measured_points_and_linear_between():
    assert P.op_cost("qkv", "decode", 16).ms == pytest.approx(0.19)
    assert P.op_cost("qkv", "decode", 40).ms == pytest.approx(0.43)  # 0.01 * 40 + 0.03 is linear
    assert P.op_cost("attn", "decode", 8, 8 * 1024, 8).ms == pytest.approx(1e-4 * 8 * 1024 + 0.005)
    # bilinear inside the grid is exact for a bilinear surface
    assert P.op_cost("attn", "decode", 20, 20 * 500, 20).ms == pytest.approx(1e-4 * 20 * 500 + 0.005)
    assert P.op_cost("attn", "prefill", 512).ms == pytest.approx(1e-6 * 512 * 512 + 0.01)
    assert P.op_cost("attn", "prefill", 1024, num_seqs=2).ms == pytest.approx(2 * (1e-6 * 512 * 512 + 0.01))


def test_outside_the_range_scales_the_nearest_point_by_the_roofline():
    got = P.op_cost("qkv", "decode", 1024).ms
    want = (
        P.op_cost("qkv", "decode", 256).ms
        * ROOF.op_cost("qkv", "decode", 1024).ms
        / ROOF.op_cost("qkv", "decode", 256).ms
    )
    assert got == pytest.approx(want)
    half = P.op_cost("qkv", "decode", 16, sm_share=0.5).ms
    assert half == pytest.approx(
        0.19 * ROOF.op_cost("qkv", "decode", 16, sm_share=0.5).ms / ROOF.op_cost("qkv", "decode", 16).ms
    )


def test_missing_ops_fall_back_or_fail():
    assert P.op_cost("ffn", "decode", 8).ms == ROOF.op_cost("ffn", "decode", 8).ms
    strict = TablePredictor("h100-sxm", "llama2-7b", table=_table(), fallback="error")
    with pytest.raises(ValueError, match="no rows for op='ffn'"):
        strict.op_cost("ffn", "decode", 8)


def test_fractions_use_the_table_time():
    c = P.op_cost("qkv", "decode", 16)
    r = ROOF.op_cost("qkv", "decode", 16)
    assert c.flops == r.flops and c.bytes == r.bytes
    assert c.hbm_frac == pytest.approx(r.hbm_frac * r.ms / c.ms)


def test_csv_round_trip_and_registry(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text(_table().to_csv())
    assert path.read_text().startswith("# gpu: h100-sxm\n")
    p = get_predictor("table", "h100-sxm", "llama2-7b", path=path)
    assert p.op_cost("qkv", "decode", 64).ms == pytest.approx(0.67)


def test_bad_tables_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match=r"provenance is missing \['driver'\]"):
        ProfileTable({k: v for k, v in PROV.items() if k != "driver"}, _table().rows)
    with pytest.raises(ValueError, match="grid is incomplete"):
        TablePredictor("h100-sxm", "llama2-7b", table=_table([TableRow("attn", "decode", 64, 64 * 128, 64, 1.0, 1.0)]))
    with pytest.raises(ValueError, match="predictor wants 'a100-80g'"):
        TablePredictor("a100-80g", "llama2-7b", table=_table())
    with pytest.raises(FileNotFoundError, match="no profile table"):
        TablePredictor("h200", "llama2-13b")
    with pytest.raises(ValueError, match="columns must include"):
        ProfileTable.from_csv("# gpu: x\nop,ms\nqkv,1\n")


@pytest.mark.parametrize("gpu", ["a100-80g", "h100-sxm"])
def test_vidur_held_out_points(gpu):
    path = vidur.vidur_mlp_path(gpu)
    if not path.exists():
        pytest.skip(f"Vidur table not found at {path} (set ADRENALINE_SHARED_DATA)")
    times = vidur.vidur_times(path)
    tokens = sorted(times["qkv"])
    train = set(tokens[::2])
    p = TablePredictor(gpu, "llama2-7b", table=vidur.vidur_profile_table(gpu, path, keep=lambda t: t in train))
    for op, series in times.items():
        errs = [abs(p.op_cost(op, "decode", t).ms - ms) / ms for t, ms in series.items() if t not in train]
        assert statistics.mean(errs) < 0.05, (op, statistics.mean(errs))  # stated: held-out mean error < 5%
