"""Every simulated figure: the CSV contract, the resolved config, the PNG, determinism, bad input."""

from __future__ import annotations

import csv

import pytest

from experiments import run as runner

CONTRACT = {
    "fig1": {"prefill.csv": ["source", "prompt_len", "compute_pct", "hbm_bw_pct"],
             "decode.csv": ["source", "batch", "compute_pct", "hbm_bw_pct"],
             "capacity.csv": ["instance", "t_s", "hbm_capacity_pct"]},
    "fig2": {"kernels.csv": ["phase", "op", "size", "source", "compute_pct", "hbm_bw_pct"]},
    "fig5": {"e2e.csv": ["system", "model", "workload", "request_rate", "mean_ttft_s", "mean_tpot_ms",
                         "p99_tpot_ms", "decode_throughput_tok_s"]},
    "fig6": {"utilization.csv": ["model", "system", "offload_ratio", "prefill_hbm_bw_gbs", "decode_tflops",
                                 "prefill_hbm_capacity_frac", "request_rate", "achieved_offload_ratio",
                                 "decode_hbm_capacity_frac"],
             "capacity_timeline.csv": ["model", "system", "offload_ratio", "t_s", "prefill_hbm_capacity_frac"]},
    "fig7": {"throughput.csv": ["model", "workload", "system", "decode_throughput_tok_s", "gain"]},
    "fig8": {"sensitivity.csv": ["model", "workload", "offload_ratio", "decode_throughput_tok_s"]},
}  # fmt: skip


def _rows(path):
    with open(path, newline="") as f:
        return list(csv.reader(f))


@pytest.mark.parametrize("fig", sorted(CONTRACT))
def test_csv_contract_png_config_and_simulated_label(quick_results, fig):
    out = quick_results / fig
    for name, header in CONTRACT[fig].items():
        rows = _rows(out / name)
        assert rows[0] == header, name
        assert len(rows) > 1 and all(len(r) == len(header) for r in rows), name
    assert (out / f"{fig}.png").stat().st_size > 10_000
    assert (out / "config.resolved.yaml").read_text().startswith("mode: sim")
    assert _rows(out / "meta.csv")[1][0] == "simulated"


def test_fig5_values_are_sane(quick_results):
    rows = list(csv.DictReader(open(quick_results / "fig5" / "e2e.csv")))
    assert {r["system"] for r in rows} == {"pd", "adrenaline"}
    for r in rows:
        assert 0 < float(r["mean_tpot_ms"]) <= float(r["p99_tpot_ms"]) < 1000
        assert float(r["decode_throughput_tok_s"]) > 0 and float(r["mean_ttft_s"]) > 0


def test_fig6_pd_row_is_ratio_zero_and_offload_uses_prefill_memory(quick_results):
    rows = list(csv.DictReader(open(quick_results / "fig6" / "utilization.csv")))
    pd = [r for r in rows if r["system"] == "pd"]
    assert pd and all(float(r["offload_ratio"]) == 0 for r in pd)
    ad = [r for r in rows if r["system"] == "adrenaline"]
    assert float(ad[0]["prefill_hbm_capacity_frac"]) > float(pd[0]["prefill_hbm_capacity_frac"])
    assert float(pd[0]["achieved_offload_ratio"]) == 0
    for r in ad:  # each point ran at the load it sustains; the bound F caps the N/M it decoded
        assert float(r["request_rate"]) > 0
        assert 0 < float(r["achieved_offload_ratio"]) <= float(r["offload_ratio"]) + 0.05


def test_fig5_detail_has_steady_state_and_total_throughput(quick_results):
    rows = list(csv.DictReader(open(quick_results / "fig5" / "e2e_detail.csv")))
    for r in rows:  # total counts prompts too; steady state excludes the drain, so it is not below whole-run
        assert float(r["total_throughput_tok_s"]) > float(r["decode_throughput_tok_s"]) > 0
        assert float(r["steady_total_throughput_tok_s"]) > float(r["steady_throughput_tok_s"]) > 0


def test_fig8_has_the_auto_point(quick_results):
    rows = list(csv.DictReader(open(quick_results / "fig8" / "sensitivity.csv")))
    assert "auto" in {r["offload_ratio"] for r in rows}


def test_same_seed_same_csv(tmp_path, monkeypatch):
    outs = []
    for name in ("a", "b"):
        monkeypatch.setenv("RESULTS_DIR", str(tmp_path / name))
        assert runner.run_one("fig5", ["--quick", "--no-plot", "--seed", "3"]) == 0
        outs.append((tmp_path / name / "fig5" / "e2e_detail.csv").read_bytes())
    assert outs[0] == outs[1]
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path / "c"))
    assert runner.run_one("fig5", ["--quick", "--no-plot", "--seed", "4"]) == 0
    assert (tmp_path / "c" / "fig5" / "e2e_detail.csv").read_bytes() != outs[0]


def test_figures_are_discovered_generically():
    assert {"fig1", "fig2", "fig5", "fig6", "fig7", "fig8", "fig9"} <= set(runner.figures())


def _one_line_error(capsys, argv, match):
    assert runner.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and match in err, err


@pytest.mark.parametrize(
    "argv, match",
    [
        (["fig3"], "unknown figure 'fig3'; valid: fig1, fig2"),
        (["fig5", "--rates", "0"], "request rate 0.0 must be > 0"),
        (["fig5", "--model", "gpt-5"], "model must be one of"),
        (["fig5", "--num-requests", "0"], "--num-requests=0 must be >= 1"),
        (["fig6", "--mode", "real"], "MODE=real is not available for fig6"),
        (["fig5", "--gpu", "tpu-v5"], "gpu must be one of"),
        (["fig2", "--gpu", "tpu-v5"], "gpu must be one of"),
        (["fig7", "--dataset", "sharegpt"], "--dataset 'sharegpt' must look like WORKLOAD=PATH"),
        (["fig5", "--workload", "alpaca"], "workload='alpaca' is unknown"),
    ],
)
def test_bad_input_is_one_line(capsys, tmp_path, monkeypatch, argv, match):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    _one_line_error(capsys, argv + ["--no-plot"] if argv[0] != "fig3" else argv, match)


def test_bad_gpu_workload_and_dataset_are_one_line(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    bad = tmp_path / "broken.json"
    bad.write_text("[{]")
    _one_line_error(capsys, ["fig5", "--quick", "--no-plot", "--dataset-path", str(bad)], "malformed dataset file")
    from experiments import sim_runs

    with pytest.raises(ValueError, match="gpu must be one of"):
        sim_runs.run_point({"gpu": "tpu-v5", "num_requests": 5}, "llama2-7b", "never", "sharegpt", 1.0)
    with pytest.raises(ValueError, match="workload='alpaca' is unknown"):
        sim_runs.run_point({"num_requests": 5}, "llama2-7b", "never", "alpaca", 1.0)


def test_a_figure_config_sets_every_simconfig_field_it_names():
    from experiments import sim_runs

    cfg = {"n_decode": 2, "link": "pcie4", "tpot_slo_ms": 50, "offload": "always", "model": "x", "seed": 3}
    sim = sim_runs.cluster(cfg, "llama2-7b", sim_runs.policy_of("pd"))
    assert (sim.n_decode, sim.link, sim.tpot_slo_ms) == (2, "pcie4", 50)
    assert (sim.model, sim.offload) == ("llama2-7b", "never")  # the run's, not the config's
    assert sim_runs.policy_of("adrenaline") == "auto" and sim_runs.policy_of("ratio:0.4") == "ratio:0.4"


def test_fig5_raw_requests_reproduce_the_e2e_row(quick_results):
    from adrenaline_sgl.sim.metrics import request_metrics
    from adrenaline_sgl.sim.records import RequestRecord

    e2e = list(csv.DictReader(open(quick_results / "fig5" / "e2e.csv")))
    raw = list(csv.DictReader(open(quick_results / "fig5" / "requests.csv")))
    for row in e2e:
        mine = [r for r in raw if r["system"] == row["system"] and r["request_rate"] == row["request_rate"]]
        recs = []
        for r in mine:
            rec = RequestRecord(int(r["rid"]), float(r["arrival_s"]), int(r["prompt_len"]), int(r["output_len"]))
            rec.first_token_s, rec.finish_s, rec.tokens_out = float(r["first_token_s"]), float(r["finish_s"]), int(
                r["tokens_out"])
            recs.append(rec)
        m = request_metrics(recs)
        for col in ("mean_ttft_s", "mean_tpot_ms", "p99_tpot_ms", "decode_throughput_tok_s"):
            assert getattr(m, col) == pytest.approx(float(row[col]), rel=1e-5), col


def test_all_passes_args_only_to_figures_that_take_them(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(runner, "figures", lambda: ["fig2", "fig9"])
    import experiments.fig2.run as fig2
    import experiments.fig9.run as fig9

    monkeypatch.setattr(fig2, "main", lambda argv=None: calls.append(("fig2", argv)) or 0)
    monkeypatch.setattr(fig9, "main", lambda argv=None: calls.append(("fig9", argv)) or 0)
    assert runner.main(["all", "--seed", "3"]) == 0
    assert calls == [("fig2", ["--seed", "3"]), ("fig9", [])]
    assert "fig9: runs without --seed 3" in capsys.readouterr().out
