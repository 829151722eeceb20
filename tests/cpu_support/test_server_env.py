"""The server environment: shims on PYTHONPATH make the stand-ins active in a fresh interpreter, exactly
as SGLang's server processes see them, and they refuse to shadow a real sgl_kernel."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from adrenaline_sgl.sglang_ext.cpu import server_env

# Light on purpose (no sglang import: that costs ~7 s of CPU); that SGLang's CPU-path modules import with
# these shims is proven by the e2e suite, whose servers cannot start otherwise.
PROBE = """
import os, sgl_kernel, torchvision
try:
    from sgl_kernel import silu_and_mul
    print("PERMISSIVE")
except ImportError:
    print("STRICT")
print("engine", os.environ["SGLANG_USE_CPU_ENGINE"], "stub", torchvision.__adrenaline_stub__,
      "origin", sgl_kernel.__file__, "names", len(sgl_kernel.__all__))
"""


def test_shims_activate_the_stand_ins_in_a_fresh_interpreter(tmp_path):
    support = server_env.write_support_dir(tmp_path / "support")
    env = server_env.server_env({k: v for k, v in os.environ.items() if k != "SGLANG_USE_CPU_ENGINE"}, support)
    assert env["SGLANG_USE_CPU_ENGINE"] == "1"
    assert env["PYTHONPATH"].split(os.pathsep)[0] == str(support)
    done = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "STRICT" in done.stdout
    assert f"engine 1 stub True origin {support / 'sgl_kernel.py'} names 9" in done.stdout


def test_refuses_to_shadow_a_real_sgl_kernel(tmp_path, monkeypatch):
    elsewhere = tmp_path / "site"
    elsewhere.mkdir()
    (elsewhere / "sgl_kernel.py").write_text("")
    monkeypatch.syspath_prepend(str(elsewhere))
    with pytest.raises(RuntimeError, match="a real `sgl_kernel` is importable here"):
        server_env.write_support_dir(tmp_path / "support")
    assert not (tmp_path / "support").exists()


def test_server_env_keeps_the_inherited_pythonpath_after_the_support_dir():
    env = server_env.server_env({"PYTHONPATH": "a"}, "/x/support")
    assert env["PYTHONPATH"] == os.pathsep.join(["/x/support", "a"])
