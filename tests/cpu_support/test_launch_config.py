"""Cluster YAML schema, port assignment and the commands the launcher builds (no process is started)."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest

from adrenaline_sgl import launch
from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import assign_ports, build_plan, port_is_free

CONFIGS = Path(cluster.__file__).parent


def _argv_value(argv, flag):
    return argv[argv.index(flag) + 1]


@pytest.mark.parametrize("name, proxy", [("cpu_demo.yaml", "adrenaline"), ("cpu_demo_pd.yaml", "sglang-router"),
                                         ("gpu_node_example.yaml", "sglang-router")])  # fmt: skip
def test_shipped_configs_load(name, proxy):
    cfg = cluster.load(CONFIGS / name)
    assert cfg.prefill.count >= 1 and cfg.decode.count >= 1
    assert cfg.proxy.kind == proxy


def test_cpu_demo_turns_on_the_plugin_on_top_of_the_stock_pd_recipe():
    demo, stock = cluster.load(CONFIGS / "cpu_demo.yaml"), cluster.load(CONFIGS / "cpu_demo_pd.yaml")
    assert demo.server_args == stock.server_args and demo.model == stock.model
    assert _argv_value(list(demo.prefill.extra_args), "--adrenaline-role") == "prefill"
    assert _argv_value(list(demo.decode.extra_args), "--adrenaline-role") == "decode"
    assert _argv_value(list(demo.decode.extra_args), "--attention-backend") == "adrenaline"
    assert _argv_value(list(demo.proxy.extra_args), "--policy") == "always"


def test_cpu_demo_plan_follows_the_verified_cpu_recipe(tmp_path):
    cfg = cluster.load(CONFIGS / "cpu_demo_pd.yaml")  # stock PD; cpu_demo.yaml adds the plugin flags on top
    assert cfg.is_local and cfg.cpu_support
    plan = build_plan(cfg, "/m", assign_ports(cfg, pick_free=True), python="py", support_dir=tmp_path)
    prefill, decode, proxy = plan
    for server in (prefill, decode):
        argv = list(server.argv)
        assert argv[:3] == ["py", "-m", "sglang.launch_server"]
        assert _argv_value(argv, "--device") == "cpu"
        assert _argv_value(argv, "--attention-backend") == "torch_native"
        assert _argv_value(argv, "--disaggregation-transfer-backend") == "mooncake_tcp"
        assert _argv_value(argv, "--host") == "127.0.0.1"
        assert "--sleep-on-idle" in argv
        assert server.env_overrides["SGLANG_USE_CPU_ENGINE"] == "1"
        assert server.env_overrides["PYTHONPATH"].split(os.pathsep)[0] == str(tmp_path)
    assert _argv_value(list(decode.argv), "--disaggregation-decode-retraction-backup") == "cpu_tensor"
    boot = _argv_value(list(prefill.argv), "--disaggregation-bootstrap-port")
    router = list(proxy.argv)
    assert router[:4] == ["py", "-m", "sglang_router.launch_router", "--pd-disaggregation"]
    assert router[router.index("--prefill") + 1: router.index("--prefill") + 3] == [prefill.url, boot]
    assert _argv_value(router, "--decode") == decode.url
    assert _argv_value(router, "--prometheus-host") == "127.0.0.1"
    assert "--mini-lb" in router
    ports = [p for spec in plan for p in spec.ports]
    assert len(ports) == len(set(ports)) == 5  # http x2, bootstrap, proxy, prometheus


def test_print_commands_groups_nodes_and_uses_fixed_ports(capsys):
    launch.print_commands(cluster.load(CONFIGS / "gpu_node_example.yaml"))
    out = capsys.readouterr().out
    node_a, node_b = out.split("# on 10.0.0.2")
    assert "# on 10.0.0.1" in node_a and "sglang_router.launch_router" in node_a
    assert node_b.count("sglang.launch_server") == 2 and "launch_router" not in node_b
    assert "--prefill http://10.0.0.1:30000 8998 --prefill http://10.0.0.2:30000 8998" in node_a
    assert "MC_TE_METRIC=false" in node_b


def test_launching_a_multi_node_config_is_refused(tmp_path, capsys):
    cfg = cluster.load(CONFIGS / "gpu_node_example.yaml")
    with pytest.raises(launch.LaunchError, match="use --print-commands"):
        with launch.start_cluster(cfg, run_dir=tmp_path):
            pass
    assert launch.run(cfg, check=True, run_dir=str(tmp_path)) == 1
    assert "are not this machine" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before anything was created


def test_unavailable_proxy_kind_is_refused(tmp_path, monkeypatch):
    from adrenaline_sgl.configs import commands

    monkeypatch.setitem(commands.PROXY_MODULES, "adrenaline", "adrenaline_sgl.no_such_proxy_module")
    monkeypatch.setattr(launch, "PROXY_MODULES", commands.PROXY_MODULES)
    cfg = cluster.from_dict({"model": "m", "proxy": {"kind": "adrenaline"}})
    with pytest.raises(launch.LaunchError, match="needs the module adrenaline_sgl.no_such_proxy_module"):
        with launch.start_cluster(cfg, run_dir=tmp_path):
            pass


def test_configured_port_in_use_is_a_clear_error():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert not port_is_free("127.0.0.1", port)
        cfg = cluster.from_dict({"model": "m", "decode": {"ports": [port]}})
        with pytest.raises(RuntimeError, match=rf"decode.ports #0 = {port} on 127.0.0.1 is already in use"):
            assign_ports(cfg, pick_free=True)


@pytest.mark.parametrize(
    "data, match",
    [
        ({"model": "m", "prefil": {}}, r"unknown keys \['prefil'\]"),
        ({"model": "m", "prefill": {"count": 0}}, r"prefill.count must be an integer in 1..64"),
        ({"model": "m", "prefill": {"count": 2, "ports": [30000]}}, r"prefill.ports must be empty or have count=2"),
        ({"model": "m", "decode": {"bootstrap_ports": [9000]}}, "decode.bootstrap_ports is not valid"),
        ({"model": "m", "proxy": {"kind": "nginx"}}, r"proxy.kind must be one of \('sglang-router', 'adrenaline'\)"),
        ({"model": "m", "proxy": {"port": 80}}, r"proxy.port must be an integer port in 1024..65535"),
        ({"model": "m", "server_args": ["--port", "1"]}, r"server_args must not set \['--port'\]"),
        ({"model": "m", "decode": {"extra_args": ["--disaggregation-mode=prefill"]}}, "decode.extra_args must not"),
        ({"model": "m", "transfer_backend": "carrier-pigeon"}, "transfer_backend must be one of"),
        ({"model": "m", "startup_timeout_s": 1}, r"startup_timeout_s must be in 10..7200"),
        ({"model": "m", "server_args": "--device cpu"}, "server_args must be a list of strings"),
        ({"host": "127.0.0.1"}, "`model` is required"),
        ({"model": "m", "decode": {"env": {"X": 1}}}, r"decode.env must map names to strings \(quote numbers"),
        ({"model": "m", "model_spec": "Llama-3.1-8B"}, r"model_spec: model must be one of \[.*'llama3-8b'.* or the"),
        ({"model": "m", "gpu": "tpu-v5"}, r"gpu: gpu must be one of \['a100-80g'"),
        ({"model": "models/L", "gpu": "h100-sxm", "proxy": {"kind": "adrenaline", "extra_args": ["--policy", "auto"]}},
         r"proxy --policy auto needs .* set model_spec \(model 'models/L' is not a known spec and has no config"),
        ({"model": "smollm2:bfloat16", "proxy": {"kind": "adrenaline", "extra_args": ["--policy=auto"]}},
         r"proxy --policy auto needs the served model's and hardware's specs: .* and gpu \(one of"),
    ],
)
def test_bad_config_names_the_field(data, match):
    with pytest.raises(ValueError, match=match):
        cluster.from_dict(data)


def test_cli_reports_a_bad_config_in_one_line(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: m\nprefill: {count: 99}\n")
    assert launch.main(["--config", str(bad), "--print-commands"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "prefill.count must be an integer in 1..64" in err and str(bad) in err


def test_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="existing checkpoint directory or smollm2:<dtype>"):
        cluster.resolve_model(str(tmp_path / "nope"))


def test_the_adrenaline_proxy_gets_what_is_served_and_its_parser_takes_the_command(smollm2_dir):
    """The launcher passes the checkpoint (tokenizer) and the scheduler specs; the proxy's own CLI accepts the
    whole command the launcher builds, so the two cannot drift apart."""
    from adrenaline_sgl.proxy.config import build_parser, from_args

    demo = cluster.load(CONFIGS / "cpu_demo.yaml")
    proxy = build_plan(demo, "/ckpt", assign_ports(demo, pick_free=True), python="py", support_dir=None)[-1]
    argv = list(proxy.argv)
    assert (_argv_value(argv, "--model-path"), _argv_value(argv, "--model")) == ("/ckpt", "smollm2-135m")
    assert "--gpu" not in argv  # no spec for this hardware in the config: the proxy's always policy needs none
    cfg = from_args(build_parser().parse_args(argv[3:]))
    assert (cfg.model_path, cfg.model, cfg.gpu, cfg.policy) == ("/ckpt", "smollm2-135m", None, "always")
    auto = cluster.from_dict({"model": "models/L", "model_spec": "llama3-8b", "gpu": "h100-sxm",
                              "proxy": {"kind": "adrenaline", "extra_args": ["--policy", "auto"]}})  # fmt: skip
    argv = list(build_plan(auto, "models/L", assign_ports(auto, pick_free=False), "py", None)[-1].argv)
    cfg = from_args(build_parser().parse_args(argv[3:]))
    assert (cfg.model, cfg.gpu, cfg.policy, cfg.model_path) == ("llama3-8b", "h100-sxm", "auto", "models/L")
    local = cluster.from_dict({"model": str(smollm2_dir), "gpu": "h200",
                               "proxy": {"kind": "adrenaline", "extra_args": ["--policy", "auto"]}})  # fmt: skip
    argv = list(build_plan(local, str(smollm2_dir), assign_ports(local, pick_free=False), "py", None)[-1].argv)
    assert _argv_value(argv, "--model") == str(smollm2_dir / "config.json")  # no name: the checkpoint's config
    assert from_args(build_parser().parse_args(argv[3:])).model == str(smollm2_dir / "config.json")
    stock = cluster.load(CONFIGS / "cpu_demo_pd.yaml")  # SGLang's router takes none of these
    router = list(build_plan(stock, "/ckpt", assign_ports(stock, pick_free=False), "py", None)[-1].argv)
    assert not {"--model-path", "--model", "--gpu"} & set(router)


def test_role_env_goes_only_to_that_role():
    cfg = cluster.from_dict({"model": "m", "env": {"A": "all"}, "decode": {"env": {"A": "decode", "B": "b"}},
                             "proxy": {"env": {"C": "c"}}})
    prefill, decode, proxy = build_plan(cfg, "/m", assign_ports(cfg, pick_free=True), python="py", support_dir=None)
    assert prefill.env_overrides == {"A": "all"}
    assert decode.env_overrides == {"A": "decode", "B": "b"}
    assert proxy.env_overrides == {"A": "all", "C": "c"}


def test_named_ports_are_one_free_port_shared_by_every_process():
    cfg = cluster.from_dict({
        "model": "m",
        "prefill": {"extra_args": ["--adrenaline-executor-port", "{port:executor}"]},
        "decode": {"extra_args": ["--adrenaline-executor-port", "{port:executor}"], "env": {"M": "{port:metrics}"}},
    })
    ports = assign_ports(cfg, pick_free=True)
    assert set(ports.named) == {"executor", "metrics"}
    prefill, decode, proxy = build_plan(cfg, "/m", ports, python="py", support_dir=None)
    executor = ports.named["executor"]
    assert _argv_value(list(prefill.argv), "--adrenaline-executor-port") == str(executor)
    assert _argv_value(list(decode.argv), "--adrenaline-executor-port") == str(executor)
    assert decode.env_overrides["M"] == str(ports.named["metrics"])
    assert executor in prefill.ports and executor in decode.ports and executor not in proxy.ports
    all_ports = [*ports.prefill, *ports.bootstrap, *ports.decode, ports.proxy, ports.prometheus, *ports.named.values()]
    assert len(all_ports) == len(set(all_ports))
    assert assign_ports(cfg, pick_free=False).named == {"executor": 31000, "metrics": 31001}


def test_picked_ports_avoid_the_ranges_other_processes_pick_from():
    # SGLang's own ports (bind(0), get_free_port_below_ephemeral) and Mooncake's handshake took a launcher
    # port between its pick and the server's bind; picks come from outside those ranges.
    from adrenaline_sgl.configs import commands

    avoid = (commands.ephemeral_port_range(), commands.SGLANG_PICKED_PORTS, commands.MOONCAKE_PICKED_PORTS)
    candidates = commands.launcher_port_candidates()
    assert len(candidates) > 1000
    picked = [commands.pick_free_port("127.0.0.1") for _ in range(50)]
    assert not [p for p in picked if any(p in r for r in avoid)]
    only = commands.pick_free_port("127.0.0.1", taken=candidates[1:])  # every candidate but one is taken
    assert only == candidates[0] if commands.port_is_free("127.0.0.1", candidates[0]) else only not in candidates
