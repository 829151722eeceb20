"""The bind-host shim (support/bind_host.c): wildcard binds go to the instance's host (issue 18 defect 11).

Real processes: the shim is built with the machine's C compiler and preloaded into a Python child that binds
the way Mooncake 0.3.13 does (0.0.0.0 for its handshake, dual-stack [::] for its data listener); the child
prints what the kernel bound. The stack-level check (every listener of real servers on loopback) is
`tests/e2e/test_issue18_e2e.py::test_defect11_every_listening_socket_of_the_stack_is_on_loopback`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import assign_ports, build_plan
from adrenaline_sgl.support import bind_host

pytestmark = pytest.mark.skipif(shutil.which("cc") is None and shutil.which("gcc") is None, reason="no C compiler")

CHILD = r"""
import json, socket
out = {}
for name, family, addr, v6only in [("v4_any", socket.AF_INET, ("0.0.0.0", 0), None),
                                   ("v6_any_dual", socket.AF_INET6, ("::", 0), 0),
                                   ("v6_any_only", socket.AF_INET6, ("::", 0), 1),
                                   ("v4_named", socket.AF_INET, ("127.0.0.2", 0), None)]:
    s = socket.socket(family, socket.SOCK_STREAM)
    if v6only is not None:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, v6only)
    s.bind(addr)
    s.listen()
    out[name] = s.getsockname()[0]
print(json.dumps(out))
"""


def _bound(env: dict[str, str]) -> dict[str, str]:
    done = subprocess.run([sys.executable, "-c", CHILD], env={**os.environ, **env}, capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def shim(tmp_path_factory):
    path, why_not = bind_host.build(tmp_path_factory.mktemp("bind_host"))
    assert path is not None and path.is_file(), why_not
    return path


def test_wildcard_binds_go_to_the_loopback_host_named_ones_stay(shim):
    assert _bound(bind_host.server_env(shim, "127.0.0.1")) == {
        "v4_any": "127.0.0.1", "v6_any_dual": "::ffff:127.0.0.1", "v6_any_only": "::1", "v4_named": "127.0.0.2"}


def test_without_the_host_variable_the_shim_changes_nothing(shim):
    assert _bound({"LD_PRELOAD": str(shim)}) == {"v4_any": "0.0.0.0", "v6_any_dual": "::", "v6_any_only": "::",
                                                 "v4_named": "127.0.0.2"}  # fmt: skip


def test_server_env_resolves_names_and_leaves_wildcard_hosts_alone(tmp_path):
    lib = tmp_path / "lib.so"
    assert bind_host.server_env(lib, "localhost", "other.so") == {"LD_PRELOAD": f"{lib} other.so",
                                                                   bind_host.ENV_VAR: "127.0.0.1"}  # fmt: skip
    assert bind_host.server_env(lib, "0.0.0.0") == {} and bind_host.server_env(lib, "::") == {}
    assert bind_host.server_env(lib, "no-such-host.invalid") == {}


def test_build_without_a_compiler_says_why(tmp_path):
    path, why_not = bind_host.build(tmp_path, cc=str(tmp_path / "no-cc"))
    assert path is None and "no-cc" in why_not and "failed" in why_not


def test_plan_preloads_the_shim_into_servers_not_the_proxy(tmp_path):
    cfg = cluster.from_dict({"model": "m", "env": {"A": "a"}})
    lib = tmp_path / "lib.so"
    prefill, decode, proxy = build_plan(cfg, "/m", assign_ports(cfg, pick_free=True), "py", None, bind_shim=lib)
    for spec in (prefill, decode):
        assert spec.env_overrides[bind_host.ENV_VAR] == "127.0.0.1", spec.env_overrides
        assert spec.env_overrides["LD_PRELOAD"].split()[0] == str(lib)
    assert "LD_PRELOAD" not in proxy.env_overrides and bind_host.ENV_VAR not in proxy.env_overrides
    assert cluster.from_dict({"model": "m"}).bind_host_shim is True
    with pytest.raises(ValueError, match="bind_host_shim"):
        cluster.from_dict({"model": "m", "bind_host_shim": "yes"})
