"""SGLang's own plugin loader finds our entry point, applies the hooks, and the flags parse.

The loader runs in a fresh interpreter: `load_plugins()` patches sglang process-wide and only once, and
other suites in this pytest process must see stock sglang.
"""

import json
import subprocess
import sys
from importlib.metadata import entry_points
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_SCRIPT = r"""
import argparse, json, pickle
from adrenaline_sgl.support import torchvision_stub
torchvision_stub.install()
from sglang.srt.plugins import load_plugins
from sglang.srt.plugins.hook_registry import HookRegistry
load_plugins()
from sglang.srt.server_args import ServerArgs, prepare_server_args
from adrenaline_sgl.sglang_ext import flags
from sglang.srt.layers.attention.attention_registry import ATTENTION_BACKENDS
args = prepare_server_args(["--model-path", "m", "--disaggregation-mode", "decode",
                            "--attention-backend", "adrenaline",
                            "--adrenaline-role", "decode", "--adrenaline-unmarked-offload", "share:0.5",
                            "--adrenaline-executor-port", "4242"])
child = pickle.loads(pickle.dumps(args))  # what a scheduler subprocess receives
parser = argparse.ArgumentParser()
ServerArgs.add_cli_args(parser)
print(json.dumps({
    "patched": sorted(HookRegistry._patched),
    "parsed": flags.of(args).__dict__,
    "child": flags.of(child).__dict__,
    "stock": flags.of(prepare_server_args(["--model-path", "m"])).__dict__,
    "help_has_group": "Adrenaline offloading" in parser.format_help(),
    "backend_registered": "adrenaline" in ATTENTION_BACKENDS,
    "attention_backend": args.attention_backend,
}))
"""


def test_entry_point_is_registered():
    found = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert found.get("adrenaline") == "adrenaline_sgl.sglang_ext.plugin:load"


def test_sglang_loader_applies_hooks_and_flags_parse():
    env = {"SGLANG_PLUGINS": "adrenaline", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [sys.executable, "-c", _SCRIPT], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    from adrenaline_sgl.sglang_ext import plugin

    expected = {target for target, _, _ in plugin.hook_table()}  # imports sglang's registry, patches nothing
    assert expected <= set(out["patched"]), f"not applied: {expected - set(out['patched'])}"
    assert out["parsed"]["role"] == "decode"
    assert out["parsed"]["unmarked_offload"] == "share:0.5"
    assert out["parsed"]["executor_port"] == 4242
    assert out["child"] == out["parsed"]
    assert out["stock"]["role"] == "none"
    assert out["help_has_group"]
    assert out["backend_registered"] and out["attention_backend"] == "adrenaline"


def test_other_sglang_version_stops_start_up(monkeypatch):
    import importlib.metadata

    from adrenaline_sgl.sglang_ext import plugin

    monkeypatch.setattr(importlib.metadata, "version", lambda name: "0.5.24")
    with pytest.raises(SystemExit, match=r"supports sglang==0\.5\.23 only, found sglang==0\.5\.24"):
        plugin.load()
    # load_plugins() catches Exception from plugins; this must not be one.
    assert not issubclass(plugin.UnsupportedSGLangVersion, Exception)
