"""Collectives: the measured NVLink point-to-point curve, the fallback model, and the all-reduce algorithms."""

import csv

import pytest

from adrenaline_sgl.scheduler import collectives as col

HEADER = ["", "time_stats.send_recv.median", "num_workers", "size", "devices_per_node"]


def _write_p2p(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        for i, (size, ms, dpn) in enumerate(rows):
            w.writerow([i, ms, 2, size, dpn])


def test_p2p_table_keeps_one_node_rows_made_monotone(tmp_path):
    path = tmp_path / "send_recv.csv"
    # one-node rows (devices_per_node 2) with a 1 us dip; a cross-node row (1) that must be ignored
    _write_p2p(path, [(1000, 0.004, 2), (2000, 0.006, 2), (3000, 0.005, 2), (4000, 0.009, 2), (2000, 5.0, 1)])
    curve = col.load_p2p_csv(path)
    assert curve.sizes == (1000, 2000, 3000, 4000)
    assert curve.ms == pytest.approx((0.004, 0.0055, 0.0055, 0.009))  # the dip pooled with its neighbour
    assert curve(500) == 0.004  # below the table: the latency floor
    assert curve(3500) == pytest.approx(0.00725)  # linear between points
    assert curve(8000) == pytest.approx(0.009 + (0.009 - 0.0055) / 1000 * 4000)  # top slope beyond
    assert curve(0) == 0.0


def test_bad_p2p_tables_fail_with_the_path(tmp_path):
    bad = tmp_path / "send_recv.csv"
    bad.write_text("size,ms\n1,2\n")
    with pytest.raises(ValueError, match="P2P table .*send_recv.csv"):
        col.load_p2p_csv(bad)


def test_algorithms_from_one_p2p_curve():
    lb = col.LatencyBandwidth(gbs=100.0, latency_us=10.0)  # p2p(x) = 10 us + x / 100 GB/s
    comm = col.CommModel(lb)
    mib = 1 << 20
    ring = 2 * 3 * (10e-3 + mib / 4 / 100e9 * 1e3)
    one_shot = 10e-3 + 3 * mib / 100e9 * 1e3
    two_shot = 2 * (10e-3 + 0.75 * mib / 100e9 * 1e3)
    assert comm.ring_allreduce_ms(mib, 4) == pytest.approx(ring)
    assert comm.allreduce_ms(mib, 4) == pytest.approx(min(one_shot, two_shot))  # custom all-reduce <= 8 MiB
    assert comm.nccl_only().allreduce_ms(mib, 4) == pytest.approx(ring)
    big = 64 * mib  # above SGLang's custom all-reduce buffer: NCCL's ring
    assert comm.allreduce_ms(big, 4) == pytest.approx(2 * 3 * (10e-3 + big / 4 / 100e9 * 1e3))
    assert comm.allreduce_ms(mib, 3) == pytest.approx(2 * 2 * (10e-3 + mib / 3 / 100e9 * 1e3))  # TP 3: no custom
    assert comm.allgather_ms(8 * mib, 8) == pytest.approx(7 * (10e-3 + mib / 100e9 * 1e3))
    assert comm.allreduce_ms(mib, 1) == 0.0 and comm.allgather_ms(mib, 1) == 0.0
    with pytest.raises(ValueError, match="tp must be an integer >= 1"):
        comm.allreduce_ms(mib, 0)


def test_fallback_without_the_shared_data_says_so(tmp_path):
    comm = col.get_comm_model("a100-80g", data_dir=tmp_path)  # a clean clone: no ../shared/data
    assert not comm.measured and comm.source.startswith("modelled: NVLink 300 GB/s")
    h100 = col.get_comm_model("h100-sxm")  # no measured table for H100 anywhere
    assert not h100.measured and "450 GB/s" in h100.source


@pytest.fixture(scope="module")
def measured():
    path = col.shared_data_dir() / col.MEASURED_P2P["a100-80g"]
    if not path.is_file():
        pytest.skip(f"shared data absent at {col.shared_data_dir()} (set ADRENALINE_SHARED_DATA)")
    return col.get_comm_model("a100-80g"), path


def test_the_measured_curve_follows_the_table(measured):
    comm, path = measured
    assert comm.measured and "a100_pairwise_nvlink" in comm.source
    raw = {}
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r["devices_per_node"] == r["num_workers"]:
                raw.setdefault(float(r["size"]), float(r["time_stats.send_recv.median"]))
    assert len(raw) == len(comm.p2p_ms.sizes) > 900
    # at the measured sizes: the median point within the table's 1 us quantisation, every point within 10%
    # (the monotone fit pools the medians that dip below a smaller size's)
    off = sorted(abs(comm.p2p_ms(s) - ms) for s, ms in raw.items())
    assert off[len(off) // 2] <= 0.001
    assert max(abs(comm.p2p_ms(s) - ms) / ms for s, ms in raw.items()) < 0.10


def test_all_reduce_from_the_table_against_the_bandwidth_model(measured):
    """The measured and the data-sheet curves agree on large messages (both near 300 GB/s), and the
    measured one is faster on small ones (its latency floor is 4 us, the model's 7.6 us)."""
    comm, _ = measured
    model = col.get_comm_model("a100-80g", data_dir="/nonexistent")
    big, small = 64 << 20, 64 * 8192 * 2  # a 4096-token prefill message; a 64-row decode message of 70B
    for tp in (2, 4, 8):
        assert comm.allreduce_ms(big, tp) == pytest.approx(model.allreduce_ms(big, tp), rel=0.3)
        assert comm.allreduce_ms(small, tp) < model.allreduce_ms(small, tp)
    assert comm.p2p_ms(64 << 20) == pytest.approx(0.235, abs=0.01)  # the table's last median
