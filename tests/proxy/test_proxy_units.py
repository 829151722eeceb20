"""Proxy config, CLI and decision logic without servers."""

import pytest

from adrenaline_sgl.proxy import __main__ as cli
from adrenaline_sgl.proxy.config import ProxyConfig, build_parser, from_args
from adrenaline_sgl.proxy.decide import Always, Ratio, RequestInfo, decide, make_policy
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


def test_config_requires_instances():
    with pytest.raises(ValueError, match="prefill"):
        ProxyConfig(prefill=(), decode=("http://h:1",))
    with pytest.raises(ValueError, match="request_timeout_s"):
        ProxyConfig(prefill=(("http://h:1", None),), decode=("http://h:2",), request_timeout_s=0)


def test_ratio_offloads_exactly_its_share_evenly():
    policy = Ratio(0.25)
    marks = [policy.wants_offload(REQ, PREFILL, None) for _ in range(8)]
    assert marks == [False, False, False, True, False, False, False, True]
    assert [Ratio(1.0).wants_offload(REQ, PREFILL, None) for _ in range(3)] == [True] * 3
    assert not any(Ratio(0.0).wants_offload(REQ, PREFILL, None) for _ in range(3))


def test_decision_needs_a_healthy_executor_and_an_offload_capable_decode():
    assert decide(Always(), REQ, PREFILL, DECODE).offload
    assert not decide(Always(), REQ, None, DECODE).offload
    sick = LoadReport(role="prefill", executor_addr="127.0.0.1:31000", executor_healthy=False)
    assert decide(Always(), REQ, sick, DECODE).reason == "executor unavailable"
    for decode in (LoadReport(role="none"), None):  # stock SGLang, or no fresh report
        assert decide(Always(), REQ, PREFILL, decode).reason == "decode not offload-capable"


def test_make_policy_names_the_field_on_bad_input():
    with pytest.raises(ValueError, match="policy='ratio:2'"):
        make_policy("ratio:2")


def test_load_report_rejects_bad_values_and_ignores_unknown_keys():
    assert LoadReport.from_dict({"role": "decode", "future_field": 1}).role == "decode"
    with pytest.raises(ValueError, match="token_usage"):
        LoadReport.from_dict({"role": "decode", "token_usage": 2})
    with pytest.raises(ValueError, match="role"):
        LoadReport.from_dict({"role": "router"})
