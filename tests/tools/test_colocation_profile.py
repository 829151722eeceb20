"""The GPU profiler's whole loop: on the CPU with a fake partition and tiny shapes; on a GPU (marked)."""

import math
import re

import pytest

from adrenaline_sgl.colocation.profiles import default_profile, load_profile, write_profile
from adrenaline_sgl.tools import colocation_profile as profiler

TINY = dict(device="cpu", tokens=(8, 16), layers=1, batch=2, context=16, hidden=32, heads=4, kv_heads=2,
            head_dim=8, ffn=64, dtype="float32", reps=1, warmup=0, copy_mib=1)  # fmt: skip


@pytest.mark.parametrize("impl", ["torch", "triton"])
def test_cpu_smoke_run_writes_both_csvs_with_provenance(tmp_path, impl):
    shares = (0.25, 1.0) if impl == "torch" else (0.5,)
    cfg = profiler.ProfileRunConfig(out=str(tmp_path / "p"), shares=shares, attention_impl=impl, **TINY)
    prof = profiler.run(cfg, progress=False)
    back = load_profile(tmp_path / "p")
    assert back.source == "cpu-smoke" and "not a GPU measurement" in back.provenance["title"]
    assert back.provenance["command"].startswith("python -m adrenaline_sgl.tools.colocation_profile")
    assert len(back.prefill) == len(shares) * 2 and len(back.attention) == len(shares)
    assert [a.num_sms for a in back.attention] == ([32, 132] if impl == "torch" else [64])  # fake H100 rounding
    assert all(p.prefill_ms > 0 and math.isnan(p.prefill_contended_ms) for p in back.prefill)
    assert all(a.attn_gbs > 0 and a.ref_gbs > 0 for a in back.attention)
    assert "20% of SMs" in profiler.summary(prof)


def test_budget_stops_before_the_next_share(tmp_path):
    cfg = profiler.ProfileRunConfig(out=str(tmp_path / "p"), shares=(0.25, 0.5, 0.75), attention_impl="torch",
                                    budget_s=1e-9, **TINY)  # fmt: skip
    with pytest.raises(RuntimeError, match="no share was measured"):
        profiler.run(cfg, progress=False)


def test_smoke_profile_is_never_the_default(tmp_path):
    cfg = profiler.ProfileRunConfig(out=str(tmp_path / "smoke"), shares=(0.5,), attention_impl="torch", **TINY)
    profiler.run(cfg, progress=False)
    from adrenaline_sgl.tools.colocation_modelled import modelled_profile

    write_profile(modelled_profile(), tmp_path / "modelled")
    assert default_profile(tmp_path).source == "modelled"


@pytest.mark.parametrize(
    "args, match",
    [
        (["--shares", "0,1"], r"shares must be in \(0, 1\]"),
        (["--layers", "0"], "layers must be >= 1"),
        (["--dtype", "int8"], "dtype must be bfloat16, float16 or float32"),
    ],
)
def test_cli_rejects_bad_arguments_with_one_line(args, match, capsys):
    with pytest.raises(SystemExit) as e:
        profiler.main(["--out", "unused", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert re.search(match, err), err


def test_shares_parse_as_fractions():
    assert profiler._parse_share("1/16") == 1 / 16 and profiler._parse_share("0.5") == 0.5


@pytest.mark.gpu
def test_gpu_run_measures_partitions_and_contention(tmp_path):
    gpu = dict(TINY, device="cuda:0", dtype="bfloat16", tokens=(256,), batch=4, context=256, hidden=256,
               heads=4, kv_heads=4, head_dim=64, ffn=512, reps=3, warmup=1, copy_mib=64)  # fmt: skip
    cfg = profiler.ProfileRunConfig(out=str(tmp_path / "g"), shares=(0.25, 1.0), **gpu)
    prof = profiler.run(cfg, progress=False)
    assert prof.measured and prof.provenance["gpu"]
    quarter = next(p for p in prof.prefill if p.sm_share == 0.25)
    assert quarter.num_sms < quarter.total_sms and quarter.contended_executor_sms > 0
    assert quarter.prefill_contended_ms > 0
