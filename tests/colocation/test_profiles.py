"""Profile CSVs: round trip with provenance, interpolation rules, which profile is the default, the
committed modelled profile is what the model writes."""

import math

import pytest

from adrenaline_sgl.colocation.profiles import (
    PROFILES_DIR,
    PrefillPoint,
    Profile,
    default_profile,
    list_profiles,
    load_profile,
    write_profile,
)
from adrenaline_sgl.tools import colocation_modelled as modelled

from .conftest import synthetic_profile


def test_round_trip_keeps_rows_and_provenance(tmp_path):
    prof = synthetic_profile(contention=1.2)
    back = load_profile(write_profile(prof, tmp_path / "p"))
    assert back.provenance == prof.provenance
    assert len(back.prefill) == len(prof.prefill) and len(back.attention) == len(prof.attention)
    for a, b in zip(prof.prefill, back.prefill):
        assert b.prefill_ms == pytest.approx(a.prefill_ms, rel=1e-5)
        assert b.prefill_contended_ms == pytest.approx(a.prefill_contended_ms, rel=1e-5)
        assert (b.num_sms, b.tokens, b.layers) == (a.num_sms, a.tokens, a.layers)


def test_unmeasured_contention_round_trips_as_nan(tmp_path):
    back = load_profile(write_profile(synthetic_profile(), tmp_path / "p"))
    assert all(math.isnan(p.prefill_contended_ms) for p in back.prefill) and not back.has_contended


def test_interpolation_rules():
    prof = synthetic_profile(alpha=1.0, full_ms=100.0)  # prefill_ms = 100 * (t / 2048) / share
    assert prof.prefill_ms(0.5, 2048) == pytest.approx(200.0)  # a profiled point
    between = prof.prefill_ms(0.53125, 2048)  # halfway between 8/16 and 9/16: linear
    assert between == pytest.approx((200.0 + 100 / (9 / 16)) / 2)
    assert prof.prefill_ms(1 / 32, 2048) == pytest.approx(3200.0)  # below 1/16: grows as 1/share
    assert prof.prefill_ms(1.0, 4096) == pytest.approx(200.0)  # above the largest tokens: proportional
    assert prof.prefill_ms(1.0, 1280) == pytest.approx(62.5)  # between 512 and 2048: linear
    assert prof.prefill_ms(1.0, 2048, layers=8) == pytest.approx(200.0)  # profiled 4 layers
    assert prof.attn_gbs(1 / 32) == pytest.approx(prof.attention[0].attn_gbs / 2)


def test_bad_rows_are_rejected():
    good = synthetic_profile()
    bad = PrefillPoint(0.0, 0, 132, 512, 4, 10.0)
    with pytest.raises(ValueError, match=r"bad prefill row .*sm_share in \(0, 1\]"):
        Profile("bad", {}, (bad,), good.attention)
    with pytest.raises(ValueError, match="at least one prefill and one attention row"):
        Profile("empty", {}, (), good.attention)


def test_missing_csv_names_the_file(tmp_path):
    (tmp_path / "p").mkdir()
    with pytest.raises(FileNotFoundError, match="has no prefill.csv"):
        load_profile(tmp_path / "p")


def test_default_prefers_measured_and_the_matching_gpu(tmp_path):
    write_profile(modelled.modelled_profile(), tmp_path / "a-modelled")
    assert default_profile(tmp_path).source == "modelled"
    write_profile(synthetic_profile(source="cpu-smoke"), tmp_path / "b-smoke")
    assert default_profile(tmp_path).source == "modelled"  # a CPU smoke run is never preferred
    for name, gpu in (("c-h100", "NVIDIA H100 80GB HBM3"), ("d-h200", "NVIDIA H200")):
        p = synthetic_profile()
        write_profile(Profile(name, {"source": "measured", "gpu": gpu}, p.prefill, p.attention), tmp_path / name)
    assert default_profile(tmp_path).name == "c-h100"
    assert default_profile(tmp_path, gpu_name="NVIDIA H200").name == "d-h200"
    with pytest.raises(FileNotFoundError, match="no colocation profile"):
        default_profile(tmp_path / "nothing")


def test_committed_modelled_profile_is_what_the_model_writes():
    committed = load_profile(PROFILES_DIR / modelled.NAME)
    fresh = modelled.modelled_profile()
    assert committed.provenance == fresh.provenance
    for a, b in zip(fresh.prefill + fresh.attention, committed.prefill + committed.attention):
        for x, y in zip(vars(a).values(), vars(b).values()):
            assert y == pytest.approx(x, rel=1e-5, nan_ok=True)


def test_committed_profiles_load_and_say_what_they_are():
    found = list_profiles()
    assert found, "no committed colocation profile"
    for p in found:
        assert p.source in ("measured", "modelled") and p.provenance.get("title")
        assert p.provenance.get("compute_capability"), "fig9's planner panel needs the architecture"


def test_modelled_curve_passes_through_the_paper_points():
    for share, frac in modelled.CALIBRATION:
        assert modelled.bandwidth_fraction(share) == pytest.approx(frac, rel=1e-6)
    fracs = [modelled.bandwidth_fraction(s) for s in modelled.SHARES]
    assert all(a < b for a, b in zip(fracs, fracs[1:]))
    times = [modelled.prefill_layer_ms(2048, s) for s in modelled.SHARES]
    assert all(a > b for a, b in zip(times, times[1:]))
    with pytest.raises(ValueError, match="do not describe a saturating curve"):
        modelled.fit_bandwidth_curve(((0.2, 0.1), (1.0, 0.9)))
