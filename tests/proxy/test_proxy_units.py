"""Proxy config, CLI and decision logic without servers."""

import pytest

from adrenaline_sgl.protocol import LoadReport
from adrenaline_sgl.proxy import __main__ as cli
from adrenaline_sgl.proxy.config import ProxyConfig, build_parser, from_args
from adrenaline_sgl.proxy.decide import Decision, Ledger, RequestInfo, build_policy, decide
from adrenaline_sgl.scheduler.admission import LiveStats

REQ = RequestInfo(prompt_tokens=10, max_new_tokens=20)
ONE = {"prefill": (("http://h:1", None),), "decode": ("http://h:2",)}


def _policy(spec, **kw):
    return build_policy(ProxyConfig(**ONE, policy=spec, **kw))
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
    always = _policy("always")
    assert decide(always, REQ, PREFILL, DECODE, _stats) == Decision(True, "ok")
    assert not decide(always, REQ, None, DECODE, _stats).offload
    sick = LoadReport(role="prefill", executor_addr="127.0.0.1:31000", executor_healthy=False)
    assert decide(always, REQ, sick, DECODE, _stats).reason == "executor unavailable"
    for decode in (LoadReport(role="none"), None):  # stock SGLang, or no fresh report
        assert decide(always, REQ, PREFILL, decode, _stats).reason == "decode not offload-capable"


def test_policies_are_the_schedulers():
    assert decide(_policy("never"), REQ, PREFILL, DECODE, _stats) == Decision(False, "policy-never")
    assert decide(_policy("ratio:0.1"), REQ, PREFILL, DECODE, _stats).reason == "c2-batch"
    assert decide(_policy("ratio:1"), REQ, PREFILL, DECODE, _stats).offload
    assert decide(_policy("auto", gpu="h100-sxm", model="llama3-8b"), REQ, PREFILL, DECODE, _stats).offload


def test_ledger_builds_live_stats_per_decode_instance():
    ledger = Ledger()
    a = ledger.add("d1", "p1", RequestInfo(100, 50), offloaded=False)
    ledger.add("d1", "p1", RequestInfo(30, 20), offloaded=True)
    ledger.add("d2", "p1", RequestInfo(999, 1), offloaded=False)  # another decode instance
    prefill = LoadReport(role="prefill", token_usage=0.5, max_total_tokens=1000)
    stats = ledger.stats("d1", LoadReport(role="decode", max_total_tokens=4000), {"p1": prefill})
    assert stats == LiveStats(local_requests=1, local_tokens=100, offloaded_requests=1, offloaded_tokens=30,
                              offloaded_max_tokens=50, decode_kv_capacity_tokens=4000,
                              prefill_offload_capacity_tokens=(550,), prefill_executor_sm_shares=(0.0,))  # fmt: skip
    live = LoadReport(role="prefill", max_total_tokens=1000, executor_sm_share=0.45)
    assert ledger.stats("d1", LoadReport(role="decode"), {"p1": live, "p2": None}).prefill_executor_sm_shares == (0.45,)
    ledger.done(a)
    assert ledger.stats("d1", LoadReport(role="decode"), {}).local_requests == 0


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"policy": "ratio:11"}, "policy='ratio:11': expected never, always, auto or ratio:F"),
        ({"policy": "share:0.5"}, "policy='share:0.5'"),  # the plugin's unmarked fallback is not a policy
        ({"policy": "auto", "gpu": "h100-sxm"}, "policy auto needs the served model's spec (--model): model must be"),
        ({"policy": "auto", "model": "llama3-8b"}, "policy auto needs the served gpu's spec (--gpu): gpu must be one"),
        ({"policy": "auto", "model": "Llama-3.1-8B", "gpu": "h100-sxm"}, "or the path of a Llama config.json, got "
                                                                         "'Llama-3.1-8B'"),
        ({"policy": "auto", "model": "no/such/config.json", "gpu": "h100-sxm"}, "(--model): model config"),
        ({"predictor": "oracle"}, "predictor='oracle': expected preferred or one of ['roofline', 'table'"),
        ({"executor_sm_share": 1.0}, r"executor_sm_share must be in (0, 1)"),
        ({"tpot_slo_ms": 0}, "tpot_slo_ms=0: expected > 0"),
        ({"request_timeout_s": 0}, "request_timeout_s=0: expected > 0"),
    ],
)
def test_bad_settings_are_one_line_errors_naming_the_field(kw, message):
    with pytest.raises(ValueError) as err:
        ProxyConfig(**ONE, **kw)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_every_setting_is_a_flag_with_the_fields_default():
    """The CLI reads its defaults from the dataclass: parsing no optional flag gives ProxyConfig's defaults."""
    parsed = from_args(build_parser().parse_args(["--prefill", "http://h:1", "--decode", "http://h:2"]))
    assert parsed == ProxyConfig(**ONE)
    help_text = build_parser().format_help()
    for flag in ("--tpot-slo-ms", "--predictor", "--model-path", "--executor-sm-share", "--load-stale-s"):
        assert flag in help_text
    ns = build_parser().parse_args(["--prefill", "http://h:1", "--decode", "http://h:2", "--policy", "auto",
                                    "--model", "llama2-7b", "--gpu", "a100-80g", "--predictor", "table",
                                    "--tpot-slo-ms", "50", "--executor-sm-share", "0.3"])  # fmt: skip
    cfg = from_args(ns)
    assert (cfg.model, cfg.gpu, cfg.predictor, cfg.tpot_slo_ms, cfg.executor_sm_share) == \
        ("llama2-7b", "a100-80g", "table", 50.0, 0.3)  # fmt: skip


def test_auto_builds_the_named_predictor_for_the_served_specs_with_the_slo(tmp_path, monkeypatch, capsys):
    """Any registered predictor: `table` reads the profile of the served (gpu, model) from the profiles folder."""
    from adrenaline_sgl.scheduler import table

    base = ["--prefill", "http://h:1", "--decode", "http://h:2", "--policy", "auto", "--gpu", "a100-80g",
            "--model", "llama2-7b", "--predictor", "table"]  # fmt: skip
    monkeypatch.setattr(table, "PROFILES_DIR", tmp_path)
    assert cli.main([*base, "--port", "70000"]) == 2  # the config fails first: one line, no traceback
    assert cli.main(base) == 2  # no profile yet: one line naming the missing table
    assert "no profile table at" in capsys.readouterr().err
    prov = {k: "test" for k in table.PROVENANCE_KEYS} | {"gpu": "a100-80g", "model": "llama2-7b"}
    rows = tuple(table.TableRow("attn", "decode", b, b * 512, b, 1.0, 0.02 * b) for b in (1, 8, 64))
    table.default_profile_path("a100-80g", "llama2-7b").write_text(table.ProfileTable(prov, rows).to_csv())
    policy = _policy("auto", gpu="a100-80g", model="llama2-7b", predictor="table", tpot_slo_ms=60.0,
                     executor_sm_share=0.3)  # fmt: skip
    assert (policy.predictor.name, policy.predictor.gpu.name, policy.predictor.model.name) == \
        ("table", "a100-80g", "llama2-7b")  # fmt: skip
    assert (policy.tpot_slo_ms, policy.executor_sm_share) == (60.0, 0.3)
    assert _policy("auto", gpu="a100-80g", model="llama2-7b").predictor.name == "table"  # preferred: the table
    assert _policy("auto", gpu="h200", model="smollm2-135m").predictor.name == "roofline"  # none: the roofline


def test_auto_takes_the_served_checkpoints_config_json(smollm2_dir):
    """A model without a name in the specs: its Llama config.json is the spec (scheduler.specs.get_model)."""
    policy = _policy("auto", gpu="h200", model=str(smollm2_dir / "config.json"))
    named = _policy("auto", gpu="h200", model="smollm2-135m").predictor.model
    assert policy.predictor.model.kv_bytes_per_token == named.kv_bytes_per_token
    assert policy.predictor.model.num_layers == named.num_layers == 30


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
