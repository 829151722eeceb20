"""CPU profiles: measured device files registered by name, the raw measurement format, the link fit, the
table's extra provenance, and the committed profile used through `--gpu <cpu-name>` and the proxy's `auto`."""

from __future__ import annotations

import json

import pytest

from adrenaline_sgl.scheduler import specs, table
from adrenaline_sgl.scheduler.cost_model import get_link, get_predictor
from adrenaline_sgl.scheduler.cpu_profile import MAX_LINK_GBS, RawProfile, RawRow, fit_link
from adrenaline_sgl.scheduler.specs import GPUSpec, load_device
from adrenaline_sgl.scheduler.table import PROVENANCE_KEYS, ProfileTable, TablePredictor, TableRow

CPU = "cpu-epyc-1core"
MODEL = "smollm2-135m"


def _device_file(folder, name="cpu-test", file_stem=None, **spec):
    path = folder / f"{file_stem or name}.device.json"
    body = {"name": name, "peak_tflops": 0.1, "hbm_gbs": 10.0, "hbm_gib": 16.0, "num_sms": 1, "nvlink_gbs": 0.5,
            "link_latency_us": 150.0} | spec
    path.write_text(json.dumps({"spec": body, "provenance": {"date": "today"}}))
    return path


def test_a_device_file_loads_as_a_spec_and_its_link_carries_the_measured_latency(tmp_path):
    device = load_device(_device_file(tmp_path))
    assert device == GPUSpec("cpu-test", 0.1, 10.0, 16.0, 1, 0.5, link_latency_us=150.0)
    link = get_link("nvlink", device)
    assert (link.gbs, link.latency_us) == (0.5, 150.0)
    assert link.transfer_ms(500_000) == pytest.approx(0.15 + 1.0)
    assert get_link("nvlink", specs.get_gpu("a100-80g")).latency_us == 7.6  # data-sheet GPUs: unchanged


@pytest.mark.parametrize("spec, match", [({"peak_tflops": 0}, "peak_tflops must be > 0"),
                                         ({"link_latency_us": -1.0}, "link_latency_us must be >= 0"),
                                         ({"cores": 2}, r"unknown spec keys \['cores'\]"),
                                         ({"file_stem": "cpu-other"}, "holds spec 'cpu-test'; name it")])  # fmt: skip
def test_bad_device_files_name_the_file(tmp_path, spec, match):
    path = _device_file(tmp_path, **spec)
    with pytest.raises(ValueError, match=match) as info:
        load_device(path)
    assert str(path) in str(info.value)


def test_device_files_may_not_shadow_a_data_sheet_gpu(tmp_path, monkeypatch):
    _device_file(tmp_path, name="h100-sxm")
    monkeypatch.setattr(specs, "GPUS", dict(specs.GPUS))
    with pytest.raises(ValueError, match=r"reuse the names of data-sheet GPUs"):
        specs._register_measured(specs._measured_devices(tmp_path))


def test_raw_profile_round_trips_and_rejects_bad_rows():
    prof = RawProfile({"device": "cpu-x", "status": "provisional: test"},
                      (RawRow("round_trip", 4, 260, 1.5, 9.0, 150), RawRow("prefill_step", 64, 0, 40.0, 41.0, 3)))
    back = RawProfile.from_csv(prof.to_csv())
    assert back == prof
    assert back.of("round_trip") == [prof.rows[0]]
    with pytest.raises(ValueError, match="what must be one of"):
        RawRow("decode", 1, 0, 1.0, 1.0, 1)
    with pytest.raises(ValueError, match="0 < ms_p50 <= ms_p99"):
        RawRow("decode_step", 1, 0, 2.0, 1.0, 1)
    with pytest.raises(ValueError, match="columns must be"):
        RawProfile.from_csv("what,rows\nround_trip,1\n")


def test_link_fit_recovers_latency_and_bandwidth():
    # two messages per round trip: 2 x 200 us + bytes / 0.25 GB/s
    points = [(b, 0.4 + b / 0.25e6) for b in (3_000, 12_000, 48_000, 96_000)]
    fit = fit_link(points)
    assert fit.latency_us == pytest.approx(200.0) and fit.gbs == pytest.approx(0.25)
    assert fit.max_abs_rel_err == pytest.approx(0.0, abs=1e-9)
    flat = fit_link([(1_000, 1.0), (50_000, 0.9)])  # no per-byte cost visible: the bandwidth cap
    assert flat.gbs == pytest.approx(MAX_LINK_GBS) and flat.latency_us > 0
    with pytest.raises(ValueError, match="two or more sizes"):
        fit_link([(1_000, 1.0), (1_000, 2.0)])


def test_table_keeps_extra_provenance():
    prov = {k: f"v-{k}" for k in PROVENANCE_KEYS} | {"machine": "AMD EPYC", "load_avg_start": "0.10 0.2 0.3 1/2 3"}
    t = ProfileTable(prov, (TableRow("qkv", "decode", 1, 0, 1, 1.0, 0.5),))
    text = t.to_csv()
    assert text.index("# command:") < text.index("# machine: AMD EPYC")
    assert ProfileTable.from_csv(text).provenance == prov


def test_preferred_predictor_is_the_table_where_one_is_committed(tmp_path, monkeypatch):
    monkeypatch.setattr(table, "PROFILES_DIR", tmp_path)
    assert table.preferred_predictor("h100-sxm", "llama2-7b") == "roofline"
    (tmp_path / "h100-sxm__llama2-7b.csv").write_text("")
    assert table.preferred_predictor(specs.get_gpu("h100-sxm"), specs.get_model("llama2-7b")) == "table"


# ---- the committed profile of this machine ----

def test_the_committed_cpu_profile_is_loadable_by_name_with_provenance():
    device = specs.get_gpu(CPU)
    assert device.num_sms == 1 and device.link_latency_us is not None
    p = get_predictor("table", CPU, MODEL)
    assert isinstance(p, TablePredictor) and p.gpu is device
    prov = p.table.provenance
    for key in ("machine", "date", "git_sha", "torch", "command", "load_avg_start", "status"):
        assert prov[key], key
    assert "profile_cpu" in prov["command"]
    assert prov["status"] == "measured" or prov["status"].startswith("provisional")
    assert p.covered == {(op, ph) for op in ("qkv", "o_proj", "ffn", "misc", "attn", "sampling")
                         for ph in ("prefill", "decode")}  # nothing falls back to the roofline
    raw = RawProfile.load(table.PROFILES_DIR / f"{CPU}__{MODEL}.raw.csv")
    assert raw.provenance["date"] == prov["date"]  # one run wrote both
    for what in ("prefill_step", "decode_step", "decode_local_attn", "executor_attn", "executor_begin_step",
                 "round_trip"):
        assert raw.of(what), what


def test_the_committed_table_reproduces_its_measured_decode_steps():
    """The table's per-operator split adds back up to the whole steps it was measured from (misc is the
    remainder, so only interpolation and the medians over contexts stand between them)."""
    p = get_predictor("table", CPU, MODEL)
    raw = RawProfile.load(table.PROFILES_DIR / f"{CPU}__{MODEL}.raw.csv")
    errors = []
    for row in raw.of("decode_step"):
        predicted = p.decode_step_ms(row.rows, row.rows * row.context_tokens)
        errors.append(abs(predicted - row.ms_p50) / row.ms_p50)
    assert errors and sorted(errors)[len(errors) // 2] < 0.25, errors  # median within 25% (provisional data)


def test_the_proxy_auto_policy_uses_the_cpu_table():
    from adrenaline_sgl.proxy.config import ProxyConfig
    from adrenaline_sgl.proxy.decide import build_policy

    policy = build_policy(ProxyConfig(prefill=(("http://h:1", None),), decode=("http://h:2",), policy="auto",
                                      gpu=CPU, model=MODEL))  # fmt: skip (predictor "preferred": the table)
    assert isinstance(policy.predictor, TablePredictor) and policy.predictor.gpu.name == CPU
