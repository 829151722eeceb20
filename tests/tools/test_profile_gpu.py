"""The profiling CLI writes a valid profile table with provenance and a held-out error report.

On CPU it runs tiny grids with the plain-torch attention (timings are meaningless here: the point is the
pipeline). The GPU test measures the quick grid with our Triton kernel on the lent GPU.
"""

import json

import pytest

from adrenaline_sgl.scheduler.table import ProfileTable, TablePredictor
from adrenaline_sgl.tools import profile_gpu

TINY = {"tokens": (1, 4, 8), "prompts": (8, 16, 24), "batches": (1, 2, 3), "contexts": (8, 16)}


def test_cpu_pipeline_writes_table_and_holdout(tmp_path, monkeypatch):
    monkeypatch.setattr(profile_gpu, "QUICK", TINY)
    argv = [
        "--gpu",
        "a100-80g",
        "--model",
        "smollm2-135m",
        "--out",
        str(tmp_path),
        "--device",
        "cpu",
        "--dtype",
        "float32",
        "--attn-impl",
        "reference",
        "--quick",
        "--iters",
        "1",
    ]
    assert profile_gpu.main(argv) == 0
    table = ProfileTable.load(tmp_path / "a100-80g__smollm2-135m.csv")
    assert table.provenance["model"] == "smollm2-135m" and table.provenance["torch"].startswith("2.")
    assert "--quick" in table.provenance["command"]
    ops = {(r.op, r.phase) for r in table.rows}
    assert {("qkv", "decode"), ("ffn", "prefill"), ("attn", "prefill"), ("attn", "decode")} <= ops
    assert len([r for r in table.rows if r.op == "attn" and r.phase == "decode"]) == 6  # full 3 x 2 grid
    held = json.loads((tmp_path / "a100-80g__smollm2-135m.holdout.json").read_text())
    assert held["attn/decode"]["points"] == 2 and held["qkv/decode"]["points"] == 1
    p = TablePredictor("a100-80g", "smollm2-135m", table=table)
    r = next(r for r in table.rows if r.op == "attn" and r.phase == "decode")
    assert p.op_cost("attn", "decode", r.num_tokens, r.context_tokens, r.num_seqs).ms == pytest.approx(r.ms)


@pytest.mark.gpu
def test_gpu_quick_profile_with_our_kernel(tmp_path):
    table = profile_gpu.measure("h100-sxm", "llama2-7b", "cuda", "float16", quick=True, progress=False)
    assert all(r.ms > 0 for r in table.rows)
    errs = profile_gpu.holdout_errors(table, "h100-sxm", "llama2-7b")
    assert errs["qkv/decode"]["mean_abs_rel_err"] < 0.5
