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
