"""experiments/fig9 end to end on the CPU: CSVs then the PNG, titled by where the curves come from."""

import importlib.util
from pathlib import Path

from adrenaline_sgl.colocation.profiles import Profile, write_profile

from .conftest import synthetic_profile

ROOT = Path(__file__).resolve().parents[2]


def _fig9():
    spec = importlib.util.spec_from_file_location("fig9_run", ROOT / "experiments" / "fig9" / "run.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_default_profile_renders_with_an_honest_title(tmp_path, monkeypatch):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    assert _fig9().main([]) == 0
    out = tmp_path / "fig9"
    for name in ("attention.csv", "prefill.csv", "planner.csv", "fig9.png"):
        assert (out / name).stat().st_size > 0, name
    head = (out / "attention.csv").read_text()
    # until a measured profile is committed, fig9 must say it is modelled
    from adrenaline_sgl.colocation.profiles import default_profile

    if not default_profile().measured:
        assert "# title: modelled, not measured" in head
    planner_rows = (out / "planner.csv").read_text().splitlines()
    assert planner_rows[-9].startswith("ttft_slo_ms,prefill_sms")  # 8 SLOs in the config


def test_a_measured_profile_is_plotted_as_measured(tmp_path):
    p = synthetic_profile(contention=1.2)
    prov = {"source": "measured", "title": "measured on NVIDIA H100 80GB HBM3", "gpu": "NVIDIA H100 80GB HBM3",
            "compute_capability": "9.0"}  # fmt: skip
    folder = write_profile(Profile("h100", prov, p.prefill, p.attention), tmp_path / "h100")
    assert _fig9().main(["--profile", str(folder), "--out", str(tmp_path / "fig")]) == 0
    text = (tmp_path / "fig" / "prefill.csv").read_text()
    assert "# title: measured on NVIDIA H100" in text
    rows = [r.split(",") for r in text.splitlines() if r and not r.startswith("#")][1:]
    assert all(float(r[6]) > float(r[5]) for r in rows)  # contended slowdown above the alone one
    assert (tmp_path / "fig" / "fig9.png").stat().st_size > 0
