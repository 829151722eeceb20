"""The real CPU experiment's pipeline without SGLang servers: bench_serving through our arrival recorder against
a stand-in server, the per-request parsing and its checks, the server-side summaries from canned samples, the
CSVs and the plot from canned measurements, the two cluster YAMLs, and the simulator's side of the comparison.
No timing assertions: numbers belong to `make reproduce-real-cpu`."""

from __future__ import annotations

import asyncio
import json
import math
import threading

import pytest
import yaml
from aiohttp import web

from experiments import common, real
from experiments.real_cpu import compare, run, server_stats, setup

OUT_LEN, IN_LEN = 6, 4


# ---- bench_serving through `python -m experiments.real --record-arrivals` against a stand-in -----------------


class _StandInServer:
    """Answers what bench_serving asks of an SGLang server: /v1/models, /server_info, streaming /generate that
    yields `max_new_tokens` tokens one chunk each."""

    def __init__(self):
        self.bodies: list[dict] = []
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()

    async def _models(self, _):
        return web.json_response({"data": [{"id": "stand-in"}]})

    async def _info(self, _):
        return web.json_response({"stand_in": True})

    async def _generate(self, request):
        body = await request.json()
        self.bodies.append(body)
        n = body["sampling_params"]["max_new_tokens"]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for k in range(1, n + 1):
            await asyncio.sleep(0.002)
            chunk = {"text": "x" * k, "meta_info": {"completion_tokens": k, "prompt_tokens": len(body["input_ids"])}}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        return resp

    def _serve(self):
        asyncio.set_event_loop(self._loop)
        app = web.Application()
        app.router.add_get("/v1/models", self._models)
        app.router.add_get("/server_info", self._info)
        app.router.add_post("/generate", self._generate)
        runner = web.AppRunner(app, access_log=None)
        self._loop.run_until_complete(runner.setup())
        site = web.TCPSite(runner, "127.0.0.1", 0)
        self._loop.run_until_complete(site.start())
        self.url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
        self._runner = runner
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(runner.cleanup())

    def __enter__(self):
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def __exit__(self, *exc):
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)


@pytest.fixture(scope="module")
def model_dir():
    from adrenaline_sgl.configs import cluster

    return cluster.resolve_model("smollm2:bfloat16")  # the benchmark's tokenizer


def test_bench_serving_records_arrivals_and_exact_lengths(tmp_path, monkeypatch, model_dir):
    monkeypatch.setenv("ADRENALINE_MODEL_PATH", model_dir)
    jsonl, arrivals = tmp_path / "p.jsonl", tmp_path / "p.arrivals.json"
    n = 5
    with _StandInServer() as server:
        cmd = real.fixed_bench_command(server.url, IN_LEN, OUT_LEN, 20.0, n, 3, jsonl, arrivals)
        cmd[cmd.index("--output-details"):cmd.index("--output-details")] = ["--warmup-requests", "0"]
        summary = real.run_bench(cmd, jsonl)
    assert summary["decode_throughput_tok_s"] > 0
    assert len(server.bodies) == n  # no warm-up request
    for body in server.bodies:  # exact lengths, ignore_eos (bench_serving's default)
        assert len(body["input_ids"]) == IN_LEN
        assert body["sampling_params"]["max_new_tokens"] == OUT_LEN and body["sampling_params"]["ignore_eos"]
    times = real.read_arrivals(arrivals)
    assert len(times) == n and times[0] == 0.0 and times == sorted(times) and times[-1] > 0
    line = jsonl.read_text().splitlines()[-1]
    point = real.parse_bench_details(line, times, IN_LEN, OUT_LEN)
    assert [r.arrival_s for r in point.requests] == times
    for r, gaps in zip(point.requests, point.itls_s):
        assert r.first_token_s > r.arrival_s and r.finish_s > r.first_token_s and r.tokens_out == OUT_LEN
        assert len(gaps) == OUT_LEN - 1
    assert point.summary["completed"] == n


# ---- parsing and its checks ---------------------------------------------------------------------------------


def _bench_line(n: int = 4, out: int = OUT_LEN, ttft: float = 0.5, itl: float = 0.1, **over) -> str:
    d = {"mean_ttft_ms": ttft * 1e3, "mean_tpot_ms": itl * 1e3, "p99_tpot_ms": itl * 1e3, "output_throughput": 10.0,
         "completed": n, "duration": 9.0, "p99_ttft_ms": ttft * 1e3, "total_throughput": 12.0,
         "ttfts": [ttft] * n, "itls": [[itl] * (out - 1)] * n, "output_lens": [out] * n, "errors": [""] * n}
    d.update(over)
    return json.dumps(d)


def test_parse_details_builds_records_from_arrivals_ttft_and_itls():
    point = real.parse_bench_details(_bench_line(), [0.0, 1.0, 2.0, 3.0], IN_LEN, OUT_LEN)
    r = point.requests[2]
    assert (r.arrival_s, r.first_token_s, r.finish_s) == pytest.approx((2.0, 2.5, 2.5 + 0.1 * (OUT_LEN - 1)))
    assert real.token_times(0.0, 0.5, [0.1] * 2, 3) == pytest.approx([0.5, 0.6, 0.7])
    assert real.token_times(0.0, 0.5, [0.4], 3) == pytest.approx([0.5, 0.7, 0.9])  # merged chunks: spread


@pytest.mark.parametrize("over, match", [
    ({"output_lens": [OUT_LEN, OUT_LEN - 1, OUT_LEN, OUT_LEN]}, r"1 of 4 requests did not complete with 6"),
    ({"errors": ["", "", "boom", ""]}, r"1 of 4 requests did not complete.*'boom'"),
    ({"completed": 3}, r"0 of 4 requests did not complete"),
])  # fmt: skip
def test_a_short_or_failed_request_stops_the_point(over, match):
    with pytest.raises(common.ExperimentError, match=match):
        real.parse_bench_details(_bench_line(**over), [0.0, 1.0, 2.0, 3.0], IN_LEN, OUT_LEN)


def test_details_must_match_the_recorded_arrivals():
    with pytest.raises(common.ExperimentError, match="3 recorded arrivals"):
        real.parse_bench_details(_bench_line(), [0.0, 1.0, 2.0], IN_LEN, OUT_LEN)
    with pytest.raises(common.ExperimentError, match="run it with --output-details"):
        real.parse_bench_details(json.dumps({k: v for k, v in json.loads(_bench_line()).items() if k != "itls"}),
                                 [0.0] * 4, IN_LEN, OUT_LEN)


def test_steady_throughput_counts_client_tokens_inside_the_window():
    # 11 requests 1 s apart, each 6 tokens 0.1 s apart from 0.5 s after arrival; window = arrivals 1..10 s
    n = 11
    point = real.parse_bench_details(_bench_line(n=n), [float(i) for i in range(n)], IN_LEN, OUT_LEN)
    inside = sum(1 for r in point.requests for k in range(OUT_LEN) if 1.0 <= r.arrival_s + 0.5 + 0.1 * k < 10.0)
    assert real.steady_client_throughput(point) == pytest.approx(inside / 9.0)


# ---- server-side summaries -----------------------------------------------------------------------------------


def test_summary_from_sglang_counters_and_executor_stats():
    a = server_stats.Sample(0.0, decode_running=2, decode_offloaded=0, decode_steps=100, decode_batch_sum=300,
                            decode_step_us_sum=5e6, prefill_busy_us=1e6, executor_attention_s=2.0,
                            executor_layer_calls=1000, rtt_p50_ms=1.0, rtt_p99_ms=5.0, rtt_samples=10)
    b = server_stats.Sample(10.0, decode_running=6, decode_offloaded=4, decode_steps=300, decode_batch_sum=1100,
                            decode_step_us_sum=25e6, prefill_busy_us=3e6, executor_attention_s=5.0,
                            executor_layer_calls=4000, rtt_p50_ms=2.0, rtt_p99_ms=9.0, rtt_samples=500)
    s = server_stats.summarize([a, server_stats.Sample(5.0), b])  # a sample nobody answered in between
    assert s["decode_batch_mean"] == pytest.approx(800 / 200)
    assert s["decode_step_ms_mean"] == pytest.approx(20e6 / 200 / 1e3)
    assert s["decode_batch_max"] == 6 and s["decode_offloaded_mean"] == 2 and s["decode_offloaded_max"] == 4
    assert (s["rtt_p50_ms"], s["rtt_p99_ms"]) == (2.0, 9.0)
    assert s["executor_attn_ms_per_layer"] == pytest.approx(3.0 * 1e3 / 3000)
    assert s["executor_busy_frac"] == pytest.approx(0.3) and s["prefill_busy_frac"] == pytest.approx(0.2)
    assert set(s) == set(server_stats.SUMMARY_COLUMNS)
    pd = server_stats.summarize([server_stats.Sample(0.0), server_stats.Sample(1.0)])  # stock PD: no plugin
    assert math.isnan(pd["rtt_p50_ms"]) and math.isnan(pd["decode_batch_mean"])
    with pytest.raises(ValueError, match="at least 2 server samples"):
        server_stats.summarize([a])


def test_poller_survives_servers_that_do_not_answer():
    dead = "http://127.0.0.1:9"  # discard port: refused at once
    poller = server_stats.Poller(dead, dead, adrenaline=True, interval_s=0.05).start()
    samples = poller.stop()
    assert len(samples) >= 2 and all(math.isnan(s.decode_running) for s in samples)


# ---- CSVs, summary and plot from canned measurements -----------------------------------------------------------


def _canned_results(out, cfg):
    """A measured run as run.py writes it, with made-up numbers (PD saturates at 0.5 req/s)."""
    rows, requests = [], []
    for system, sat in (("pd", 0.5), ("adrenaline", 1.0)):
        for rate in cfg["request_rates"]:
            n = 8
            arr = [i / rate for i in range(n)]
            over = rate >= sat
            line = _bench_line(n=n, out=cfg["workload"]["output_len"], ttft=20.0 if over else 0.3,
                               itl=0.09 if system == "pd" else 0.15)
            point = real.parse_bench_details(line, arr, cfg["workload"]["input_len"], cfg["workload"]["output_len"])
            server = {c: 1.0 for c in server_stats.SUMMARY_COLUMNS}
            server["decode_max_running"] = 48.0
            rows.append(run.point_row(cfg, system, rate, point, server, n // 2, 30.0, "0.1 0.1 0.1"))
            requests += [[system, rate, r.rid, r.arrival_s, r.prompt_len, r.output_len, r.first_token_s, r.finish_s]
                         for r in point.requests]
    run.write_all(out, cfg, rows, [[s, 0.5, *server_stats.sample_row(server_stats.Sample(float(t)))]
                                   for s in ("pd", "adrenaline") for t in range(3)], requests)
    (out / "config.resolved.yaml").write_text(yaml.safe_dump({"mode": "real", **cfg}))
    common.write_meta(out, "real", machine="test")


@pytest.fixture
def canned(tmp_path, monkeypatch, model_dir):
    monkeypatch.setenv("RESULTS_DIR", str(tmp_path))
    monkeypatch.setenv("ADRENALINE_MODEL_PATH", model_dir)
    cfg = setup.load(quick=True)
    cfg["request_rates"] = [0.25, 0.5, 1.0]
    out = common.results_dir("real_cpu")
    _canned_results(out, cfg)
    return out, cfg


def test_csvs_summary_and_plot_from_canned_measurements(canned):
    out, cfg = canned
    e2e = common.read_csv(out / "e2e.csv")
    assert list(e2e[0]) == run.COLUMNS and len(e2e) == 6
    assert run.E2E_COLUMNS == ["system", "model", "workload", "request_rate", "mean_ttft_s", "mean_tpot_ms",
                               "p99_tpot_ms", "decode_throughput_tok_s"]  # figure 5's contract
    assert {r["offloaded_frac"] for r in e2e if r["system"] == "pd"} == {"0"}
    summary = {r["system"]: r for r in common.read_csv(out / "summary.csv")}
    assert float(summary["pd"]["sustained_rate"]) == 0.25  # 0.5 req/s blew the TTFT SLO
    assert float(summary["adrenaline"]["sustained_rate"]) == 0.5
    assert summary["pd"]["ratio_sustained"] == "nan" and float(summary["adrenaline"]["ratio_saturation"]) > 0
    png = common.load_plotter("real_cpu").plot(out)
    assert png.name == "real_cpu.png" and png.stat().st_size > 10_000


def test_sustained_point_needs_both_slos():
    rows = [{"request_rate": 1.0, "p99_tpot_ms": 100.0, "p90_ttft_s": 1.0},
            {"request_rate": 2.0, "p99_tpot_ms": 300.0, "p90_ttft_s": 1.0},
            {"request_rate": 3.0, "p99_tpot_ms": 100.0, "p90_ttft_s": 99.0}]
    assert run.sustained(rows, 200.0, 10.0)["request_rate"] == 1.0
    assert run.sustained(rows[1:], 200.0, 10.0) is None


def test_a_system_within_no_slo_point_sustains_zero():
    base = {"p90_ttft_s": 1.0, "steady_throughput_tok_s": 30.0}
    e2e = [{**base, "system": "pd", "request_rate": 0.5, "p99_tpot_ms": 80.0},
           {**base, "system": "adrenaline", "request_rate": 0.5, "p99_tpot_ms": 250.0,
            "steady_throughput_tok_s": 24.0}]  # fmt: skip
    rows = {r[0]: r for r in run.summary_rows(e2e, {"systems": ["pd", "adrenaline"], "tpot_slo_ms": 200,
                                                     "ttft_slo_s": 10})}  # fmt: skip
    assert math.isnan(rows["adrenaline"][1]) and rows["adrenaline"][2] == 0.0
    assert rows["adrenaline"][6:] == [0.0, pytest.approx(0.8)]


# ---- the cluster configs, and what the simulator takes from them ------------------------------------------------


def _args(role: dict) -> list[str]:
    return list(role.get("extra_args") or [])


def test_the_two_stacks_share_servers_pins_and_caps():
    cfg = setup.load()
    pd, ad = (yaml.safe_load((common.REPO_ROOT / cfg["clusters"][s]).read_text()) for s in ("pd", "adrenaline"))
    assert pd["server_args"] == ad["server_args"] and pd["model"] == ad["model"]
    for role in ("prefill", "decode"):
        assert pd[role]["cpus"] == ad[role]["cpus"]
        for flag in ("--max-total-tokens", "--num-reserved-decode-tokens", "--chunked-prefill-size"):
            assert compare._arg(_args(pd[role]), flag) == compare._arg(_args(ad[role]), flag), (role, flag)
    assert pd["prefill"]["cpus"] == ["0"] and pd["decode"]["cpus"] == ["1"]
    assert pd["proxy"]["kind"] == "sglang-router" and "--adrenaline-role" not in str(pd)
    decode_pool = int(compare._arg(_args(ad["decode"]), "--max-total-tokens"))
    executor = int(compare._arg(_args(ad["prefill"]), "--adrenaline-executor-max-tokens"))
    reserve = int(compare._arg(_args(ad["decode"]), "--num-reserved-decode-tokens"))
    wl = cfg["workload"]
    assert reserve < decode_pool  # else decode never becomes healthy (docs/sglang.md)
    assert decode_pool // (wl["input_len"] + wl["output_len"]) <= 4  # decode holds only a few requests
    assert executor >= 3 * decode_pool  # prefill has several times that for offloaded KV
    assert compare._arg(ad["proxy"]["extra_args"], "--policy") == f"ratio:{executor // decode_pool}"  # OB_mem
    from adrenaline_sgl.configs import cluster

    for s in ("pd", "adrenaline"):
        cluster.load(common.REPO_ROOT / cfg["clusters"][s])  # valid for the launcher


def test_sim_config_is_the_cluster_yaml():
    cfg = setup.load()
    sim_pd = compare.sim_config(cfg, "pd", {"prefill": {"chunked_prefill_size": 4096}}, 48.0)
    sim_ad = compare.sim_config(cfg, "adrenaline")
    assert (sim_pd.decode_kv_capacity_tokens, sim_pd.prefill_kv_capacity_tokens) == (320, 8192)
    assert sim_pd.decode_reserved_tokens == 64 and sim_pd.offload == "never" and sim_pd.max_decode_batch == 48
    assert sim_pd.prefill_token_budget == 4096 and sim_pd.executor_colocation == "timeshare"
    assert sim_ad.offload == "ratio:4" and sim_ad.prefill_kv_reserve_tokens == 8192 - 1280
    assert (sim_ad.gpu, sim_ad.prefill_gpu, sim_ad.predictor) == ("cpu-epyc-1core-sgl", "cpu-epyc-1core-sgl-exec",
                                                                  "table")
    assert compare._arg(["--x", "1", "--x=2"], "--x") == "2" and compare._arg([], "--x") is None


def test_roundtrip_goal_whatif_is_item_5s_bound_and_the_simulator_uses_it():
    from adrenaline_sgl.sim.costs import get_costs

    costs = get_costs("scheduler", compare.sim_config(setup.load(), "adrenaline"))
    profile_ms = costs.offload_roundtrip_ms(4)
    costs._roundtrip_ms = compare.goal_roundtrip(costs)
    attn = costs.executor_attn(4, 4 * compare.GOAL_CONTEXT_TOKENS, 1.0).ms / costs.num_layers
    assert costs.offload_roundtrip_ms(4) + attn == pytest.approx(1.3 * (0.10 + attn))  # transfer + attention
    assert costs.offload_roundtrip_ms(0) == 0.0 and costs.offload_roundtrip_ms(4) < profile_ms


def test_knee_rule():
    assert compare.saturated({"steady_throughput_tok_s": 80.0, "p90_ttft_s": 1.0}, 1.0, 100, 10.0)  # 20% short
    assert not compare.saturated({"steady_throughput_tok_s": 95.0, "p90_ttft_s": 1.0}, 1.0, 100, 10.0)
    assert compare.saturated({"steady_throughput_tok_s": 100.0, "p90_ttft_s": 11.0}, 1.0, 100, 10.0)
    assert compare.knee([(2.0, True), (1.0, False), (3.0, True)]) == 2.0
    assert math.isnan(compare.knee([(1.0, False)]))


def test_compare_simulates_every_measured_point(canned):
    out, cfg = canned
    rows, summary = compare.compare(out, cfg)
    assert [(r[0], r[1]) for r in rows] == [(s, rate) for s in ("pd", "adrenaline") for rate in (0.25, 0.5, 1.0)]
    for r in rows:
        d = dict(zip(compare.ROW_COLUMNS, r))
        for m in compare.METRICS:
            assert d[f"{m}_predicted"] > 0, (d["system"], d["request_rate"], m)
            if d[f"{m}_measured"]:
                assert d[f"{m}_rel_err"] == pytest.approx((d[f"{m}_predicted"] - d[f"{m}_measured"])
                                                          / d[f"{m}_measured"])
            else:  # e.g. no token inside the steady window of a canned overloaded point
                assert math.isnan(d[f"{m}_rel_err"])
    assert {(s[0], s[1]) for s in summary} == {(s, m) for s in ("pd", "adrenaline") for m in compare.METRICS}
    pd_knee = next(s for s in summary if s[0] == "pd")[5]
    assert pd_knee == 0.5  # the canned PD blew its TTFT at 0.5 req/s
    table = compare.markdown(rows, summary)
    assert table.count("\n| pd | ") == 3 + len(compare.METRICS)
    common.write_csv(out / "sim_vs_real.csv", compare.ROW_COLUMNS, rows)
    common.write_csv(out / "sim_vs_real_summary.csv", compare.SUMMARY_COLUMNS, summary)
    assert common.load_plotter("sim_vs_real").plot(out).stat().st_size > 10_000


# ---- the SGLang profiles of this core from a calibration --------------------------------------------------------


def test_profiles_reproduce_the_calibrated_steps(tmp_path):
    from adrenaline_sgl.scheduler.specs import MEASURED_DEVICES_DIR, load_device
    from adrenaline_sgl.scheduler.table import TablePredictor
    from experiments.real_cpu import calibrate, profile

    C = calibrate.CalRow
    cal = [C("sglang_attn", b, c, 0.01 * b + 0.002 * b * c / 32, 30) for b in (1, 4) for c in (32, 160)]
    cal += [C("prefill_step", 32, 0, 150.0, 3), C("prefill_step", 64, 0, 200.0, 3)]
    cal += [C("decode_step", 1, 100, 40.0, 80), C("decode_step", 1, 140, 42.0, 80),
            C("decode_step", 4, 100, 120.0, 80), C("decode_step", 4, 140, 125.0, 80)]
    path = calibrate.write(tmp_path / "calibration.csv", cal, {"command": "test", "load_avg_start": "0.1",
                                                               "load_avg_end": "0.2", "git_sha": "abc"})
    assert calibrate.read(path)[0] == cal
    written = profile.build(path, MEASURED_DEVICES_DIR, tmp_path)
    assert sorted(p.name for p in written) == sorted([
        "cpu-epyc-1core-sgl.device.json", "cpu-epyc-1core-sgl__smollm2-135m.csv",
        "cpu-epyc-1core-sgl-exec.device.json", "cpu-epyc-1core-sgl-exec__smollm2-135m.csv"])  # fmt: skip
    dec = TablePredictor(load_device(tmp_path / "cpu-epyc-1core-sgl.device.json"), "smollm2-135m",
                         path=tmp_path / "cpu-epyc-1core-sgl__smollm2-135m.csv")
    exe = TablePredictor(load_device(tmp_path / "cpu-epyc-1core-sgl-exec.device.json"), "smollm2-135m",
                         path=tmp_path / "cpu-epyc-1core-sgl-exec__smollm2-135m.csv")
    assert "provisional" in dec.table.provenance["status"]  # the base profile is provisional
    assert dec.table.provenance["scale_decode"].startswith("1:")
    for b, measured in ((1, (40.0, 42.0)), (4, (120.0, 125.0))):
        predicted = [dec.decode_step_ms(b, b * c) for c in (100, 140)]
        assert sum(predicted) / 2 == pytest.approx(sum(measured) / 2, rel=1e-5)  # non-attention: the measured
        assert predicted[1] > predicted[0]  # local attention grows with the context
    assert dec.prefill_step_ms([32]) == pytest.approx(150.0, rel=1e-5)
    assert dec.prefill_step_ms([64]) == pytest.approx(200.0, rel=1e-5)
    C2 = [*cal[:4], C("decode_step", 1, 100, 0.1, 80)]  # shorter than its own attention: a bad calibration
    with pytest.raises(common.ExperimentError, match="decode at batch 1: SGLang's attention alone"):
        profile.build(calibrate.write(tmp_path / "bad.csv", C2, {}), MEASURED_DEVICES_DIR, tmp_path / "x")
    # local attention is SGLang's torch_native (the calibration), the executor's is the CPU profile's kernel
    assert dec.op_cost("attn", "decode", 4, 4 * 160, 4).ms == pytest.approx(0.04 + 0.002 * 4 * 5)
    from adrenaline_sgl.scheduler.cpu_profile import RawProfile

    raw = RawProfile.load(MEASURED_DEVICES_DIR / "cpu-epyc-1core__smollm2-135m.raw.csv")
    point = next(r for r in raw.of("executor_attn") if r.rows == 4)
    assert exe.op_cost("attn", "decode", 4, 4 * point.context_tokens, 4).ms == pytest.approx(point.ms_p50)


def test_offload_steps_reads_decode_and_executor_counters_over_the_all_offloaded_polls(monkeypatch):
    from experiments.real_cpu import calibrate, server_stats

    def poll(t, steps, us, calls, attn_s, kv):
        return server_stats.Sample(t, decode_running=4, decode_offloaded=4, decode_steps=steps,
                                   decode_step_us_sum=us, executor_layer_calls=calls, executor_attention_s=attn_s,
                                   executor_kv_tokens=kv)  # fmt: skip

    first = [poll(0, 10, 1e6, 300, 0.3, 80), poll(1, 20, 2.5e6, 600, 0.9, 120)]  # 150 ms steps, 2 ms per layer
    second = [poll(1, 20, 2.5e6, 600, 0.9, 200), poll(2, 30, 4.5e6, 900, 1.8, 280)]  # 200 ms, 3 ms
    monkeypatch.setattr(calibrate, "_batch_polls", lambda urls, b, *a, **k: [first, second])
    rows = calibrate.offload_steps({}, [4], 16, 64)
    C = calibrate.CalRow
    want = [C("offload_step", 4, 25, 150.0, 10), C("executor_attn", 4, 25, 2.0, 300),
            C("offload_step", 4, 60, 200.0, 10), C("executor_attn", 4, 60, 3.0, 300)]
    assert [(r.what, r.rows, r.context_tokens, r.samples) for r in rows] == \
        [(r.what, r.rows, r.context_tokens, r.samples) for r in want]  # fmt: skip
    assert [r.ms for r in rows] == pytest.approx([r.ms for r in want])

    def some_local(urls, b, *a, **k):  # the proxy kept some of a batch local: that batch is skipped, not fatal
        if b == 12:
            raise common.ExperimentError("calibration at batch 12: only 0 polls saw all 12 requests offloaded")
        return [first, second]

    monkeypatch.setattr(calibrate, "_batch_polls", some_local)
    assert [r.rows for r in calibrate.offload_steps({}, [12, 4], 16, 64)] == [4, 4, 4, 4]


def test_in_server_executor_and_link_come_from_the_offloaded_calibration(tmp_path):
    """calibrate.py part 3: the executor attends 3x slower inside the prefill server than in the harness, and the
    offloaded step leaves a per-layer transfer the servers pay; the -exec profile and both devices' link take
    them (the real sweep's Adrenaline TPOT was 20-70% above the simulator's without)."""
    from adrenaline_sgl.scheduler.cpu_profile import RawProfile
    from adrenaline_sgl.scheduler.specs import MEASURED_DEVICES_DIR, load_device
    from adrenaline_sgl.scheduler.table import TablePredictor
    from experiments.real_cpu import calibrate, profile

    raw = RawProfile.load(MEASURED_DEVICES_DIR / "cpu-epyc-1core__smollm2-135m.raw.csv")
    grid = {(r.rows, r.context_tokens): r.ms_p50 for r in raw.of("executor_attn")}
    ctx = min(c for _, c in grid)
    C = calibrate.CalRow
    cal = [C("sglang_attn", b, c, 0.01 * b, 30) for b in (1, 4) for c in (32, 160)]
    cal += [C("prefill_step", 32, 0, 150.0, 3), C("prefill_step", 64, 0, 200.0, 3)]
    cal += [C("decode_step", b, c, 40.0 * b, 80) for b in (1, 4) for c in (100, 140)]
    nonattn = {b: 40.0 * b - 30 * 0.01 * b for b in (1, 4)}  # 30 layers
    transfer = {1: 0.6, 4: 1.2}  # ms per layer, both messages: 2 x latency + bytes / bandwidth
    for b in (1, 4):
        attn = 3.0 * grid[(b, ctx)]
        cal += [C("offload_step", b, ctx, nonattn[b] + 30 * (attn + transfer[b]), 50),
                C("executor_attn", b, ctx, attn, 1500)]
    path = calibrate.write(tmp_path / "calibration.csv", cal, {"command": "test", "git_sha": "abc"})
    profile.build(path, MEASURED_DEVICES_DIR, tmp_path)
    exe_dev = load_device(tmp_path / "cpu-epyc-1core-sgl-exec.device.json")
    exe = TablePredictor(exe_dev, "smollm2-135m", path=tmp_path / "cpu-epyc-1core-sgl-exec__smollm2-135m.csv")
    assert exe.table.provenance["scale_executor"] == "1:3.000 4:3.000"
    assert exe.op_cost("attn", "decode", 4, 4 * ctx, 4).ms == pytest.approx(3.0 * grid[(4, ctx)], rel=1e-4)
    for dev in ("cpu-epyc-1core-sgl", "cpu-epyc-1core-sgl-exec"):
        pred = TablePredictor(load_device(tmp_path / f"{dev}.device.json"), "smollm2-135m",
                              path=tmp_path / f"{dev}__smollm2-135m.csv")  # fmt: skip
        for b, ms in transfer.items():  # the fitted link gives back the calibrated transfer (two points: exact)
            assert pred.offload_layer_roundtrip_ms(b) == pytest.approx(ms, rel=1e-3)


def test_validation_table_goes_between_the_docs_markers(tmp_path):
    doc = tmp_path / "sim.md"
    doc.write_text(f"intro\n{compare.BEGIN}\nold table\n{compare.END}\nafter\n")
    compare.write_docs("| new |\n", "Measured today.", doc)
    assert doc.read_text() == f"intro\n{compare.BEGIN}\nMeasured today.\n\n| new |\n{compare.END}\nafter\n"
    doc.write_text("no markers\n")
    with pytest.raises(common.ExperimentError, match="has no <!-- real-cpu-validation:begin -->"):
        compare.write_docs("| new |\n", "x", doc)
    real_doc = compare.DOCS.read_text()
    assert compare.BEGIN in real_doc and compare.END in real_doc
