"""Proxy config, CLI and decision logic without servers."""

import pytest

from adrenaline_sgl.proxy import __main__ as cli
from adrenaline_sgl.proxy.config import ProxyConfig, build_parser, from_args
from adrenaline_sgl.proxy.decide import Decision, Ledger, RequestInfo, build_policy, decide
from adrenaline_sgl.scheduler.admission import LiveStats
from adrenaline_sgl.sglang_ext.load_report import LoadReport

REQ = RequestInfo(prompt_tokens=10, max_new_tokens=20)
PREFILL = LoadReport(role="prefill", executor_addr="127.0.0.1:31000", executor_healthy=True)
DECODE = LoadReport(role="decode")


def test_cli_mirrors_sglang_router_flags():
    ns = build_parser().parse_args(
        ["--prefill", "http://127.0.0.1:30021", "30031", "--prefill", "http://127.0.0.1:30023",
         "--decode", "http://127.0.0.1:30022", "--port", "30040", "--policy", "ratio:0.25",
         "--metrics-port", "30041"]
    )  # fmt: skip
    cfg = from_args(ns)
    assert cfg.prefill == (("http://127.0.0.1:30021", 30031), ("http://127.0.0.1:30023", None))
    assert cfg.decode == ("http://127.0.0.1:30022",)
    assert cfg.host == "127.0.0.1" and cfg.metrics_host == "127.0.0.1"
    assert (cfg.port, cfg.metrics_port, cfg.policy) == (30040, 30041, "ratio:0.25")


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prefill", "http://h:1", "x", "--decode", "http://h:2"], "bootstrap port 'x'"),
        (["--prefill", "h:1", "--decode", "http://h:2"], "prefill='h:1'"),
        (["--prefill", "http://h:1", "--decode", "http://h:2", "--policy", "most"], "policy='most'"),
        (["--prefill", "http://h:1", "--decode", "http://h:2", "--port", "70000"], "port=70000"),
    ],
)
def test_bad_cli_gives_one_line_error(argv, message, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err


def test_cli_takes_the_launchers_sglang_router_arguments():
    ns = build_parser().parse_args(
        ["--pd-disaggregation", "--prefill", "http://127.0.0.1:1", "2", "--decode", "http://127.0.0.1:3",
         "--host", "127.0.0.1", "--port", "4", "--prometheus-host", "127.0.0.1", "--prometheus-port", "5"]
    )  # fmt: skip
    cfg = from_args(ns)
    assert (cfg.port, cfg.metrics_host, cfg.metrics_port) == (4, "127.0.0.1", 5)


def test_config_requires_instances():
    with pytest.raises(ValueError, match="prefill"):
        ProxyConfig(prefill=(), decode=("http://h:1",))
    with pytest.raises(ValueError, match="request_timeout_s"):
        ProxyConfig(prefill=(("http://h:1", None),), decode=("http://h:2",), request_timeout_s=0)


def _stats():
    return LiveStats(local_requests=4, local_tokens=400, decode_kv_capacity_tokens=10_000,
                     prefill_offload_capacity_tokens=(10_000,))  # fmt: skip


def test_decision_needs_a_healthy_executor_and_an_offload_capable_decode():
    always = build_policy("always")
    assert decide(always, REQ, PREFILL, DECODE, _stats) == Decision(True, "ok")
    assert not decide(always, REQ, None, DECODE, _stats).offload
    sick = LoadReport(role="prefill", executor_addr="127.0.0.1:31000", executor_healthy=False)
    assert decide(always, REQ, sick, DECODE, _stats).reason == "executor unavailable"
    for decode in (LoadReport(role="none"), None):  # stock SGLang, or no fresh report
        assert decide(always, REQ, PREFILL, decode, _stats).reason == "decode not offload-capable"


def test_policies_are_the_schedulers():
    assert decide(build_policy("never"), REQ, PREFILL, DECODE, _stats) == Decision(False, "policy-never")
    assert decide(build_policy("ratio:0.1"), REQ, PREFILL, DECODE, _stats).reason == "c2-batch"
    assert decide(build_policy("ratio:1"), REQ, PREFILL, DECODE, _stats).offload
    assert decide(build_policy("auto", "h100-sxm", "llama3-8b"), REQ, PREFILL, DECODE, _stats).offload


def test_ledger_builds_live_stats_per_decode_instance():
    ledger = Ledger()
    a = ledger.add("d1", "p1", RequestInfo(100, 50), offloaded=False)
    ledger.add("d1", "p1", RequestInfo(30, 20), offloaded=True)
    ledger.add("d2", "p1", RequestInfo(999, 1), offloaded=False)  # another decode instance
    prefill = LoadReport(role="prefill", token_usage=0.5, max_total_tokens=1000)
    stats = ledger.stats("d1", LoadReport(role="decode", max_total_tokens=4000), {"p1": prefill})
    assert stats == LiveStats(local_requests=1, local_tokens=100, offloaded_requests=1, offloaded_tokens=30,
                              offloaded_max_tokens=50, decode_kv_capacity_tokens=4000,
                              prefill_offload_capacity_tokens=(550,))  # fmt: skip
    ledger.done(a)
    assert ledger.stats("d1", LoadReport(role="decode"), {}).local_requests == 0


def test_make_policy_names_the_field_on_bad_input():
    with pytest.raises(ValueError, match="policy='ratio:11'"):
        ProxyConfig(prefill=(("http://h:1", None),), decode=("http://h:2",), policy="ratio:11")
    with pytest.raises(ValueError, match="gpu='tpu'"):
        ProxyConfig(prefill=(("http://h:1", None),), decode=("http://h:2",), policy="auto", gpu="tpu")


def test_load_report_rejects_bad_values_and_ignores_unknown_keys():
    assert LoadReport.from_dict({"role": "decode", "future_field": 1}).role == "decode"
    old = LoadReport.from_dict({"role": "decode", "offload_rtt_ms": 0.0})  # a plugin before the decode stats
    assert old.offload_stats_ok is False and old.offload_rtt_p99_ms == 0.0 and old.offloaded_reqs == 0
    with pytest.raises(ValueError, match="offload_rtt_p99_ms"):
        LoadReport.from_dict({"role": "decode", "offload_rtt_p99_ms": -1.0})
    with pytest.raises(ValueError, match="token_usage"):
        LoadReport.from_dict({"role": "decode", "token_usage": 2})
    with pytest.raises(ValueError, match="role"):
        LoadReport.from_dict({"role": "router"})
