"""`python -m adrenaline_sgl.tools.profile_cpu`: a --quick run in a subprocess (it pins the process it runs
in) writes a device spec, a table and raw measurements that load through the scheduler's own loaders, with
provenance that shows the pinning; bad arguments are refused before anything is measured."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from adrenaline_sgl.scheduler.cpu_profile import RAW_KINDS, RawProfile
from adrenaline_sgl.scheduler.specs import load_device
from adrenaline_sgl.scheduler.table import ProfileTable, TablePredictor
from adrenaline_sgl.tools import profile_cpu

pytestmark = pytest.mark.slow


def test_quick_run_writes_a_loadable_pinned_profile(tmp_path):
    cpu = min(os.sched_getaffinity(0))
    cmd = [sys.executable, "-m", "adrenaline_sgl.tools.profile_cpu", "--out", str(tmp_path), "--quick",
           "--device", "cpu-test", "--cpu", str(cpu)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    device = load_device(tmp_path / "cpu-test.device.json")
    assert device.name == "cpu-test" and device.num_sms == 1
    assert device.peak_tflops > 0 and device.nvlink_gbs > 0 and device.link_latency_us >= 0
    table = ProfileTable.load(tmp_path / "cpu-test__smollm2-135m.csv")
    prov = table.provenance
    assert prov["gpu"] == "cpu-test" and prov["model"] == "smollm2-135m"
    assert prov["status"].startswith("provisional: --quick")
    assert prov["affinity"] == f"Cpus_allowed_list {cpu} on all threads; torch threads 1"
    assert prov["load_avg_start"] and prov["load_avg_end"] and prov["git_sha"] and prov["date"]
    with open("/proc/cpuinfo") as f:
        model_name = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    assert prov["machine"].startswith(model_name)
    p = TablePredictor(device, "smollm2-135m", table=table)
    assert p.decode_step_ms(2, 2 * 20) > 0 and p.prefill_step_ms([16]) > 0
    raw = RawProfile.load(tmp_path / "cpu-test__smollm2-135m.raw.csv")
    assert {r.what for r in raw.rows} == set(RAW_KINDS)
    assert raw.provenance["date"] == prov["date"]
    others = sorted(os.sched_getaffinity(0) - {cpu})
    peer = others[0] if others else cpu
    started = re.search(r"executor process \d+ on CPU (\d+) \((\d+) threads\)", done.stdout)
    assert started and int(started.group(1)) == peer, done.stdout  # checked by the tool on every thread


@pytest.mark.parametrize("args, match", [(["--device", "gpu-x"], "--device must start with 'cpu-'"),
                                         (["--cpu", "4095"], "--cpu 4095 is not available here")])  # fmt: skip
def test_bad_arguments_are_refused_before_measuring(tmp_path, args, match):
    before = os.sched_getaffinity(0)
    with pytest.raises(SystemExit, match=match):
        profile_cpu.main(["--out", str(tmp_path), *args])
    assert os.sched_getaffinity(0) == before and not list(tmp_path.iterdir())  # not pinned, nothing written
