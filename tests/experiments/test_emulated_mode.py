"""MODE=emulated without servers: its config, the per-point summaries from traces, the comparison's simulator
half, and clean one-line failures. (The servers themselves: tests/e2e/test_emulated.py.)"""

from __future__ import annotations

import math

import pytest

from adrenaline_sgl.sim.records import RequestRecord
from experiments import common, emulated
from experiments.fig5 import run as fig5


def test_figure_config_takes_the_emulated_sweep():
    cfg = common.load_config(fig5.HERE)
    full = emulated.figure_config(cfg, quick=False)
    assert full["request_rates"] == cfg["emulated"]["request_rates"] and full["num_requests"] == 200
    assert full["emulated"] == {"clock_scale": 1} and "quick" not in full
    quick = emulated.figure_config(cfg, quick=True)
    assert quick["request_rates"] == [2, 4.8] and quick["num_requests"] == 40
    assert cfg["request_rates"][0] == 1 and cfg["num_requests"] == 1000  # the simulator's own sweep untouched


def test_cluster_config_sets_the_figures_gpu_and_clock(tmp_path):
    cfg = {**common.load_config(fig5.HERE), "emulated": {"clock_scale": 3}, "executor_sm_share": 0.3}
    cl = emulated.cluster_config(cfg, "adrenaline", tmp_path)
    assert (cl.emulate.gpu, cl.emulate.model, cl.emulate.clock_scale) == ("a100-80g", "llama2-13b", 3.0)
    assert cl.emulate.executor_sm_share == 0.3 and cl.run_dir == str(tmp_path)
    with pytest.raises(common.ExperimentError, match="no stack for system 'ratio:0.5'"):
        emulated.cluster_config(cfg, "ratio:0.5", tmp_path)


def test_request_stream_is_the_simulators():
    from adrenaline_sgl.sim.workloads import make_requests
    from experiments.sim_runs import workload

    cfg = common.load_config(fig5.HERE)
    specs = emulated.request_specs(cfg, "sharegpt", 2.0, 30, "t")
    reqs = make_requests(workload(cfg, "sharegpt", 2.0, 30))
    assert [s.prompt_len for s in specs] == reqs.prompt_len.tolist()
    assert [s.arrival_s for s in specs] == reqs.arrival_s.tolist() and specs[0].rid == "t-0"


def _row(kind, t, batch, kv_used, running=1, **kw):
    base = dict(kind=kind, batch=batch, new_tokens=batch, context_tokens=100 * batch, offloaded=0, model_ms=20.0,
                launch_s=t, start_s=t, done_s=t + 0.02, processed_s=t + 0.021, idle_before_ms=0.5, cpu_ms=3.0,
                kv_total=1000, kv_available=1000 - kv_used, kv_evictable=0, kv_used=kv_used, waiting=0,
                running=running, bootstrap=0, inflight=0, prealloc=2, transfer=1, exec_tokens=0, exec_reserve=0,
                exec_reserve_free=0, wall_idle_before_ms=0.5, wall_cpu_ms=3.0)
    return {**base, **kw}


def test_timeline_and_overheads_from_trace_rows():
    steps = {"decode": [_row("decode", 0.1, 4, 400), _row("decode", 0.5, 6, 600), _row("decode", 1.2, 2, 300)],
             "prefill": [_row("prefill", 0.05, 1, 900, exec_reserve=200, exec_reserve_free=150)]}
    recs = [RequestRecord(0, 0.0, 10, 5)]
    pt = emulated.EmulatedPoint("pd", 2.0, recs, [], steps, clock_scale=2.0)
    tl = emulated.timeline(pt)
    assert [r[3] for r in tl] == [0.0, 1.0]
    # mean batch, last decode KV, prefill KV without the executor's free reserve
    assert tl[0][4] == 5.0 and tl[0][5] == 600 and tl[0][6] == 750
    assert tl[0][8] == 3 and math.isnan(tl[1][6])
    oh = {r[2]: r for r in emulated.overheads(pt)}
    assert oh["decode"][3] == 3 and oh["decode"][6] == 3.0 and oh["decode"][7] == 0.5
    assert oh["decode"][8] == pytest.approx(1.0 / (60.0 * 2))  # two 0.5 ms bubbles over 3 x 20 ms x clock 2
    assert math.isnan(oh["prefill"][7])  # bubbles are a decode notion here
    assert pt.completed == 0


def test_comparison_simulator_half_runs_and_plots(tmp_path, monkeypatch):
    from experiments.sim_vs_emu import run as compare

    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    assert compare.main(["--quick", "--no-emulator"]) == 0
    rows = common.read_csv(tmp_path / "sim_vs_emu" / "compare.csv")
    assert {r["source"] for r in rows} == {"sim", "sim-reserve-max"} and len(rows) == 8
    assert all(int(r["completed"]) == int(r["num_requests"]) for r in rows)
    assert (tmp_path / "sim_vs_emu" / "sim_vs_emu.png").exists()


def test_emulated_mode_refused_where_not_built(capsys, tmp_path, monkeypatch):
    from experiments import run as runner

    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("MODE", "emulated")
    assert runner.main(["fig7", "--quick"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: MODE=emulated is not available for fig7 yet; MODE=emulated supports fig5"


def test_ttft_split_at_the_prefill_step():
    from experiments.sim_vs_emu.run import ttft_segments_ms

    recs = [RequestRecord(i, float(i), 10, 5, first_token_s=i + 0.1, finish_s=i + 1.0, tokens_out=5) for i in range(2)]
    steps = {"prefill": [_row("prefill", i + 0.02, 1, 10) for i in range(2)]}  # launched 20 ms after, 20 ms long
    before, run, after = ttft_segments_ms(emulated.EmulatedPoint("pd", 1.0, recs, [], steps))
    assert (before, run, after) == pytest.approx((20.0, 20.0, 60.0))
    steps["prefill"][0]["batch"] = 2  # a shared batch: no per-request split
    assert all(math.isnan(x) for x in ttft_segments_ms(emulated.EmulatedPoint("pd", 1.0, recs, [], steps)))


def test_the_real_cpu_stack_is_emulated_with_its_own_pools_and_streams(tmp_path):
    """experiments.emulate_real_cpu: the real experiment's pools move into the emulate block (prefill 8192,
    decode 320), every other flag stays; the real run's recorded arrivals and lengths are the streams."""
    from adrenaline_sgl.configs import cluster
    from experiments import emulate_real_cpu as erc

    real = cluster.from_dict({"model": "smollm2:bfloat16", "cpu_support": True, "transfer_backend": "mooncake_tcp",
                              "prefill": {"cpus": ["0"], "extra_args": ["--max-total-tokens", "8192"]},
                              "decode": {"cpus": ["1"], "extra_args": ["--max-total-tokens=320",
                                                                       "--num-reserved-decode-tokens", "64"]},
                              "proxy": {"kind": "sglang-router", "extra_args": ["--mini-lb"]}})  # fmt: skip
    cl = erc.emulated_cluster(real, "a100-80g", "unused.csv", tmp_path)
    assert (cl.emulate.max_total_tokens, cl.emulate.prefill_max_total_tokens) == (320, 8192)
    assert cl.decode.extra_args == ("--num-reserved-decode-tokens", "64") and cl.prefill.extra_args == ()
    assert cl.decode.cpus == ("1",) and cl.emulate.model == "smollm2-135m" and cl.emulate.predictor == "table"
    with pytest.raises(common.ExperimentError, match="no --max-total-tokens"):
        erc.emulated_cluster(cluster.from_dict({"model": "smollm2:bfloat16"}), "a100-80g", "x.csv", tmp_path)
    common.write_csv(tmp_path / "requests.csv", ["system", "request_rate", "rid", "arrival_s", "prompt_len",
                                                 "output_len", "first_token_s", "finish_s"],
                     [["pd", 0.5, 0, 0.0, 16, 64, 0.2, 7.0], ["pd", 0.5, 1, 2.5, 16, 64, 2.8, 9.1],
                      ["pd", 1.0, 0, 0.0, 16, 64, 0.3, 8.0]])  # fmt: skip
    points = erc.real_points(tmp_path)
    assert sorted(points) == [("pd", 0.5), ("pd", 1.0)]
    assert [(r.arrival_s, r.prompt_len, r.output_len, r.tokens_out) for r in points[("pd", 0.5)]] == [
        (0.0, 16, 64, 64), (2.5, 16, 64, 64)]
    rows = [["pd", 0.5, *[0] * 7, 0.1, 0, 0, -0.3, 0, 0], ["pd", 1.0, *[0] * 7, -0.2, 0, 0, 0.1, 0, 0]]
    assert erc.median_errors(rows)["pd"] == pytest.approx((0.2, 0.15))
