"""The benchmark CLI on a tiny CPU grid, and the standalone loader of SGLang's kernel it uses on GPUs."""

from __future__ import annotations

import csv
import json
import math
import sys

import pytest
import torch
from adrenaline_kernels import bench, decode_attention, sglang_loader
from adrenaline_kernels.inputs import make_decode_batch


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # SGLang's masked rows
def test_bench_writes_csv_and_meta(tmp_path):
    out = tmp_path / "kernels" / "bench.csv"
    argv = ["--out", str(out), "--grid", "cpu", "--impls", "adrenaline", "torch_ref", "flashinfer"]
    argv += ["--batches", "2", "--contexts", "40", "--reps", "1", "--configs", "32x4x2"]
    assert bench.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["impl"] for r in rows] == ["adrenaline", "torch_ref", "adrenaline[bn32w4s2]"]
    for r in rows:
        assert set(bench.FIELDS) <= set(r)
        assert float(r["time_us"]) > 0 and float(r["gbs"]) > 0 and 0 < float(r["frac_copy_bw"])
        assert math.isclose(float(r["gbs"]), int(r["total_bytes"]) / float(r["time_us"]) / 1e3, rel_tol=1e-3)
        assert int(r["kv_bytes"]) == 2 * 2 * 40 * 2 * 64 * 2  # K+V, B=2, ctx=40, Hkv=2, D=64, fp16
        assert float(r["max_abs_diff_o"]) < 4e-3 and float(r["max_abs_diff_lse"]) < 2e-3
        assert "interpreter" in r["note"]
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["grid"] == "cpu" and meta["copy_gbs"] > 0 and meta["triton"] and meta["torch"]
    assert "flashinfer" in meta["skipped"] and "--out" in meta["command"]


def test_bench_rejects_bad_config():
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--configs", "64x4"])


@pytest.mark.filterwarnings("ignore:invalid value encountered in subtract:RuntimeWarning")  # SGLang's masked rows
def test_sglang_kernel_loads_standalone_and_matches():
    """What the GPU machine does (no importable sglang): run the kernel files with the shim."""
    if sglang_loader.installed_kernel_dir() is None:
        pytest.skip("no sglang kernel files on this machine")
    before = {k: v for k, v in sys.modules.items() if k.startswith("sglang")}
    kern = sglang_loader.load(standalone=True)
    assert kern.origin.startswith("files:")
    assert {k: v for k, v in sys.modules.items() if k.startswith("sglang")} == before, "shims must not leak"
    batch = make_decode_batch([9, 70], 8, 2, 64, seed=4)
    b, hq, d = batch.q.shape
    o = torch.empty_like(batch.q)
    logits = torch.empty(b, hq, 2, d)
    lse = torch.full((b, hq, 2), float("-inf"))
    kern.decode_attention_fwd(
        batch.q, batch.k_buffer, batch.v_buffer, o, batch.kv_indptr, batch.kv_indices, logits, lse,
        torch.tensor([1, 2], dtype=torch.int32), 2, d**-0.5, 1.0, 1.0,
    )  # fmt: skip
    ours_o, ours_lse = decode_attention(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)
    torch.testing.assert_close(o, ours_o, atol=2e-5, rtol=0)
    torch.testing.assert_close(torch.logsumexp(lse, -1), ours_lse, atol=2e-5, rtol=0)


def test_sglang_loader_explains_missing_files(tmp_path):
    with pytest.raises(ImportError, match=r"lacks score_mod.py, metadata.py, decode_attention.py"):
        sglang_loader.load(tmp_path, standalone=True)


@pytest.mark.parametrize("page_size", [1, 16])
def test_page_layout_keeps_pages_whole_and_the_kernel_exact(page_size):
    """16-token pages (SGLang --page-size 16): each request's slots come in runs of consecutive, page-aligned
    slots; pages are disjoint between requests; our kernel on that layout equals the reference."""
    seq_lens = [1, 16, 17, 40]
    batch = make_decode_batch(seq_lens, 8, 2, 64, seed=3, page_size=page_size)
    idx = batch.kv_indices.long()
    assert idx.unique().numel() == idx.numel() == sum(seq_lens)
    assert int(idx.max()) < batch.k_buffer.shape[0]
    bounds = batch.kv_indptr.tolist()
    pages_seen = []
    for a, b in zip(bounds[:-1], bounds[1:]):
        req = idx[a:b]
        assert torch.equal(req % page_size, torch.arange(b - a) % page_size)  # slot offset = token offset
        pages = (req // page_size).unique_consecutive()
        assert pages.numel() == -(-(b - a) // page_size)  # one page per P tokens, never split
        pages_seen += pages.tolist()
    assert len(set(pages_seen)) == len(pages_seen)
    ours_o, ours_lse = decode_attention(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)
    from adrenaline_kernels import decode_attention_ref

    ref_o, ref_lse = decode_attention_ref(batch.q, batch.k_buffer, batch.v_buffer, batch.kv_indptr, batch.kv_indices)
    torch.testing.assert_close(ours_o, ref_o, atol=2e-5, rtol=0)
    torch.testing.assert_close(ours_lse, ref_lse, atol=2e-5, rtol=0)


def test_page_layout_rejects_bad_sizes():
    with pytest.raises(ValueError, match="page_size must be >= 1"):
        make_decode_batch([4], 2, 1, 16, page_size=0)
    with pytest.raises(ValueError, match=r"num_slots must be >= 32 \(the requests' pages\)"):
        make_decode_batch([17], 2, 1, 16, page_size=16, num_slots=20)


def test_bench_rows_carry_the_layout_and_are_written_as_they_come(tmp_path):
    out = tmp_path / "bench.csv"
    argv = ["--out", str(out), "--grid", "cpu", "--impls", "adrenaline", "--batches", "1", "--contexts", "24",
            "--reps", "1", "--page-sizes", "1", "16"]  # fmt: skip
    assert bench.main(argv) == 0
    rows = list(csv.DictReader(out.open()))
    assert [r["page_size"] for r in rows] == ["1", "16"]
    meta = json.loads(out.with_suffix(".meta.json").read_text())
    assert meta["complete"] is True and meta["page_sizes"] == [1, 16]
    with pytest.raises(SystemExit):
        bench.build_parser().parse_args(["--page-sizes", "0"])


def test_bench_cut_short_keeps_the_rows_it_measured(tmp_path, monkeypatch):
    """A step timeout kills the bench mid-grid: the CSV must hold every finished point, the meta complete=false."""
    real, calls = bench._measure_point, []

    def dies_on_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        return real(*args, **kwargs)

    monkeypatch.setattr(bench, "_measure_point", dies_on_second)
    out = tmp_path / "bench.csv"
    argv = ["--out", str(out), "--grid", "cpu", "--impls", "adrenaline", "--batches", "1", "--contexts", "24", "40",
            "--reps", "1"]  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        bench.main(argv)
    rows = list(csv.DictReader(out.open()))
    assert [(r["ctx"], r["page_size"]) for r in rows] == [("24", "1")]
    assert json.loads(out.with_suffix(".meta.json").read_text())["complete"] is False
