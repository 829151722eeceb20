"""`make gpu-bundle`: what it builds, its size accounting, and the device call it prints (checked as the
device tool checks it: command <= 2000 characters, carry paths present and ignored by git, <= 64 MiB)."""

from __future__ import annotations

import json
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from experiments.gpu_campaign import bundle, provenance

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def in_repo_bundle():
    """A code-only bundle at an ignored scratch path inside the repo (`.gpu-*/`), removed afterwards."""
    dest = REPO / f".gpu-test-{uuid.uuid4().hex[:8]}"
    try:
        yield dest, bundle.build(dest, wheels=False)
    finally:
        shutil.rmtree(dest, ignore_errors=True)


def test_bundle_call_size_and_carry_are_what_the_device_tool_accepts(in_repo_bundle, capsys):
    dest, meta = in_repo_bundle
    assert bundle.check(meta, dest) == []
    call = meta["call"]
    assert call == {"command": bundle.COMMAND, "carry": [dest.name], "timeout_s": 600}
    assert len(call["command"]) <= bundle.COMMAND_MAX_CHARS
    assert subprocess.run(["git", "check-ignore", "-q", dest.name], cwd=REPO).returncode == 0
    # .gpu/ is a folder rule: check it as a folder (a missing `.gpu` without the slash never matches)
    assert subprocess.run(["git", "check-ignore", "-q", bundle.BUNDLE_DIR + "/"], cwd=REPO).returncode == 0
    files = bundle.traveling_files()
    tree = sum((REPO / f).stat().st_size for f in files)
    on_disk = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    assert meta["bytes"] == {"tree": tree, "bundle": on_disk, "total": tree + on_disk, "limit": 64 << 20}
    written = json.loads((dest / "bundle.json").read_text())
    assert written["files"] == files and not any(f.startswith(".gpu") for f in files)
    assert written["tree_digest"] == provenance.tree_digest(REPO, files)[0]
    assert sorted(p.name for p in (dest / "sglang_kernels").iterdir()) == sorted(bundle.KERNEL_FILES)
    assert written["groups"]["core"]["skipped"] == "--no-wheels"
    text = bundle.report(meta, [])
    assert f"command:   {bundle.COMMAND}" in text and f'carry:     ["{dest.name}"]' in text
    assert "timeout_s: 600" in text and "MiB of 64 MiB" in text


def test_check_names_each_problem(in_repo_bundle):
    dest, meta = in_repo_bundle
    too_big = {**meta, "bytes": {**meta["bytes"], "total": (64 << 20) + 1}}
    assert bundle.check(too_big, dest) == ["64.0 MiB would travel, over 64 MiB"]
    for carry, why in (("docs", "is not ignored by git"), (".gpu-nonexistent", "does not exist")):
        bad = {**meta, "call": {**meta["call"], "carry": [carry]}}
        assert bundle.check(bad, dest) == [f"carry path {carry} {why}" + (" (add it to .gitignore)" if "ignored"
                                                                             in why else "")]  # fmt: skip
    long = {**meta, "call": {**meta["call"], "command": "x" * 2001}}
    assert bundle.check(long, dest) == ["command is 2001 characters, over 2000"]


def test_the_core_steps_carry_what_the_gpu_machine_lacks():
    """The import trace of the core steps (GPU-like: sglang and Mooncake unimportable) finds pyzmq, which the
    GPU machine lacks, and nothing of sglang; everything else it finds is on the machine or tiny."""
    missing, unmapped = bundle.wanted_wheels("core", bundle.gpu_packages())
    names = {bundle.normalize(d) for d in missing}
    assert "pyzmq" in names
    assert not names & {"sglang", "mooncake-transfer-engine-non-cuda", "fastapi", "pydantic"}
    assert "torch" not in names and "triton" not in names and "pytest" not in names
    assert all(u.startswith("_") or u == "cython_runtime" for u in unmapped), unmapped  # interpreter internals
