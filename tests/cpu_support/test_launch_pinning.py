"""CPU pinning in the launcher: the `cpus` field, its one-line errors, the plan and printed commands it
gives. The affinity a started process tree really gets: test_launch_processes.py (read back from /proc)."""

from __future__ import annotations

import os

import pytest

from adrenaline_sgl import launch
from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import assign_ports, build_plan, format_command
from adrenaline_sgl.configs.cpus import check_available, format_cpu_list, parse_cpu_list


@pytest.mark.parametrize("text, cpus", [("0", (0,)), ("0-3", (0, 1, 2, 3)), ("0,2-3", (0, 2, 3)),
                                        ("3,1", (1, 3)), (" 1 , 2 ", (1, 2)), (1, (1,)), ("0-0", (0,))])  # fmt: skip
def test_cpu_lists_parse_like_taskset(text, cpus):
    assert parse_cpu_list(text, "x") == cpus


@pytest.mark.parametrize("text", ["", "a", "0-", "-1", "3-1", "0,,1", "1.5", "0-5000", True, None, [0]])
def test_malformed_cpu_lists_name_the_field(text):
    with pytest.raises(ValueError, match=r"^prefill\.cpus\[0\]"):
        parse_cpu_list(text, "prefill.cpus[0]")


def test_cpu_lists_format_as_the_kernel_writes_them():
    assert format_cpu_list((0, 1, 2, 5)) == "0-2,5"
    assert format_cpu_list({7}) == "7"
    assert format_cpu_list([3, 1, 2, 9, 10]) == "1-3,9-10"
    assert parse_cpu_list(format_cpu_list((0, 2, 3, 4, 8)), "x") == (0, 2, 3, 4, 8)


def _pinned(prefill="0", decode="1", **extra):
    return {"model": "m", "prefill": {"cpus": [prefill]}, "decode": {"cpus": [decode]}, **extra}


@pytest.mark.parametrize(
    "data, match",
    [
        (_pinned(prefill="0-"), r"prefill\.cpus\[0\] = '0-' is not a CPU list"),
        (_pinned(decode="x"), r"decode\.cpus\[0\] = 'x' is not a CPU list"),
        ({"model": "m", "prefill": {"cpus": "0"}}, r"prefill\.cpus must be a list with one CPU list per instance"),
        ({"model": "m", "decode": {"count": 2, "cpus": ["1"]}}, r"decode\.cpus must be empty or have count=2"),
        (_pinned(prefill="0-1", decode="1"), r"decode\.cpus\[0\] = '1' shares CPU 1 with prefill\.cpus\[0\]"),
        ({"model": "m", "decode": {"count": 2, "cpus": ["2", "1-2"]}},
         r"decode\.cpus\[1\] = '1-2' shares CPU 2 with decode\.cpus\[0\]"),
        (_pinned(env={"OMP_NUM_THREADS": "4"}), r"^env sets OMP_NUM_THREADS, which prefill\.cpus sets"),
        ({"model": "m", "decode": {"cpus": ["1"], "env": {"MKL_NUM_THREADS": "2"}}},
         r"^decode\.env sets MKL_NUM_THREADS, which decode\.cpus sets"),
        (_pinned(cpu_exclusive="yes"), r"cpu_exclusive must be true or false"),
    ],
)  # fmt: skip
def test_bad_pinning_is_a_one_line_error_naming_the_field(data, match):
    with pytest.raises(ValueError, match=match) as info:
        cluster.from_dict(data)
    assert "\n" not in str(info.value)


def test_shared_cpus_are_allowed_when_not_exclusive_or_on_other_hosts():
    cluster.from_dict(_pinned(prefill="0-1", decode="1", cpu_exclusive=False))
    cluster.from_dict({"model": "m", "prefill": {"hosts": ["10.0.0.1"], "cpus": ["0"]},
                       "decode": {"hosts": ["10.0.0.2"], "cpus": ["0"]}})  # fmt: skip
    with pytest.raises(ValueError, match="shares CPU 0"):  # localhost and 127.0.0.1 are one machine
        cluster.from_dict({"model": "m", "prefill": {"hosts": ["localhost"], "cpus": ["0"]},
                           "decode": {"hosts": ["127.0.0.1"], "cpus": ["0"]}})  # fmt: skip
    # the proxy may set thread variables: it is never pinned
    cluster.from_dict(_pinned(proxy={"env": {"OMP_NUM_THREADS": "8"}}))


def test_plan_pins_servers_with_matching_thread_counts_and_leaves_the_proxy_alone():
    cfg = cluster.from_dict(_pinned(prefill="0-2", decode="3", env={"A": "a"}))
    prefill, decode, proxy = build_plan(cfg, "/m", assign_ports(cfg, pick_free=True), python="py", support_dir=None)
    assert prefill.cpus == (0, 1, 2) and decode.cpus == (3,) and proxy.cpus == ()
    assert prefill.env_overrides == {"A": "a", "OMP_NUM_THREADS": "3", "MKL_NUM_THREADS": "3"}
    assert decode.env_overrides == {"A": "a", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    assert proxy.env_overrides == {"A": "a"}
    assert format_command(prefill).startswith("taskset -c 0-2 py -m sglang.launch_server ")
    assert format_command(decode, with_env=True).startswith("A=a MKL_NUM_THREADS=1 OMP_NUM_THREADS=1 taskset -c 3 py ")
    assert "taskset" not in format_command(proxy, with_env=True)


def test_unpinned_config_plans_no_pinning():
    cfg = cluster.from_dict({"model": "m"})
    for spec in build_plan(cfg, "/m", assign_ports(cfg, pick_free=True), python="py", support_dir=None):
        assert spec.cpus == () and "OMP_NUM_THREADS" not in spec.env_overrides
        assert "taskset" not in format_command(spec, with_env=True)


def test_print_commands_shows_taskset_and_thread_env_per_node(tmp_path, capsys):
    path = tmp_path / "two_nodes.yaml"
    path.write_text("model: /ckpt\nprefill: {hosts: [10.0.0.1], cpus: ['0-7']}\n"
                    "decode: {hosts: [10.0.0.2], cpus: ['0-7']}\nproxy: {host: 10.0.0.1}\n")
    assert launch.main(["--config", str(path), "--print-commands"]) == 0
    out = capsys.readouterr().out
    node_a, node_b = out.split("# on 10.0.0.2")
    assert "MKL_NUM_THREADS=8 OMP_NUM_THREADS=8 taskset -c 0-7 python -m sglang.launch_server" in node_a
    assert "taskset -c 0-7 python -m sglang.launch_server" in node_b and "--disaggregation-mode decode" in node_b
    router = next(line for line in node_a.splitlines() if "launch_router" in line)
    assert "taskset" not in router and "OMP_NUM_THREADS" not in router


def test_a_cpu_this_machine_lacks_is_refused_before_anything_starts(tmp_path, capsys):
    missing = max(os.sched_getaffinity(0)) + 1
    path = tmp_path / "c.yaml"
    path.write_text(f"model: m\nprefill: {{cpus: ['{missing}']}}\n")
    assert launch.main(["--config", str(path), "--run-dir", str(tmp_path / "runs")]) == 1  # a failed start
    err = capsys.readouterr().err.strip()
    assert "\n" not in err
    assert f"prefill.cpus[0] = '{missing}': CPU {missing} is not available on this machine (available: " in err
    assert not (tmp_path / "runs").exists()  # refused before a run folder or a process
    with pytest.raises(ValueError, match=r"x: CPU 2,9 is not available on this machine \(available: 0-1\)"):
        check_available((1, 2, 9), "x", available={0, 1})
