"""The GPU campaign rehearsed on CPU: campaign.sh --smoke end to end (tiny shapes, the Triton interpreter,
CPU stand-ins, "skipped: no GPU" where nothing stands in), the tarball's layout as the device tool returns it,
and `gpu-import` accepting it into a temporary repo root and refusing what it must refuse."""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from experiments.gpu_campaign import bundle, importer, layout, provenance, run, tables

REPO = Path(__file__).resolve().parents[2]
CAMPAIGN_SH = REPO / "experiments" / "gpu_campaign" / "campaign.sh"
NAME_OK = re.compile(r"^[A-Za-z0-9._-]+$")


def _env(out: Path, bundle_dir: Path, tmp: Path) -> dict:
    return {**os.environ, "OUT": str(out), "PYTHON": sys.executable, "GPU_BUNDLE": str(bundle_dir), "TMPDIR": str(tmp)}


@pytest.fixture(scope="module")
def code_bundle(tmp_path_factory):
    """A bundle without wheels (no downloads in tests), built from this tree."""
    dest = tmp_path_factory.mktemp("bundle") / "gpu"
    bundle.build(dest, wheels=False)
    return dest


@pytest.fixture(scope="module")
def smoke(tmp_path_factory, code_bundle):
    """One full smoke campaign through campaign.sh, as the device call runs it."""
    tmp = tmp_path_factory.mktemp("campaign")
    out = tmp / "out"
    out.mkdir()
    t0 = time.monotonic()
    proc = subprocess.run(["bash", str(CAMPAIGN_SH), "--smoke"], env=_env(out, code_bundle, tmp), capture_output=True,
                          text=True, timeout=400)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return {"out": out, "stdout": proc.stdout, "wall_s": time.monotonic() - t0, "tmp": tmp}


def _members(tarball: Path) -> dict[str, bytes]:
    with tarfile.open(tarball) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}


def test_out_holds_what_the_device_tool_returns(smoke):
    """At most 8 files, no deeper than two folders, names of letters, digits, '.', '_', '-' only."""
    files = [p for p in smoke["out"].rglob("*") if p.is_file()]
    assert sorted(p.name for p in files) == ["campaign.tar.gz", "provenance.json", "summary.txt"]
    for p in files:
        rel = p.relative_to(smoke["out"])
        assert len(rel.parts) <= 3 and all(NAME_OK.match(part) for part in rel.parts)


def test_tarball_layout_and_provenance(smoke):
    members = _members(smoke["out"] / run.TARBALL)
    expected = [
        "campaign/provenance.json", "campaign/summary.txt", "campaign/nvidia-smi.txt",
        "campaign/1-tests/status.json", "campaign/1-tests/log.txt", "campaign/1-tests/collect.txt",
        "campaign/2-kernels/bench.csv", "campaign/2-kernels/bench.meta.json", "campaign/2-kernels/tune-configs.csv",
        "campaign/3-colocation/probe.json", "campaign/3-colocation/profile/attention.csv",
        "campaign/3-colocation/profile/prefill.csv", "campaign/4-offload/inproc/bench.csv",
        "campaign/4-offload/cuda_ipc/SKIPPED", "campaign/5-scheduler/h200__smollm2-135m.csv",
        "campaign/6-sglang/status.json",
    ]  # fmt: skip
    assert not [m for m in expected if m not in members], sorted(members)
    prov = json.loads(members["campaign/provenance.json"])
    assert provenance.problems(prov) == []
    assert prov["mode"] == "smoke" and prov["complete"] is True and prov["tree_matches_bundle"] is True
    status = {s["name"]: (s["status"], s.get("reason", "")) for s in prov["steps"]}
    assert status == {"tests": ("skipped", "no GPU"), "kernels": ("ok", ""), "colocation": ("ok", ""),
                      "offload": ("ok", ""), "scheduler": ("ok", ""), "sglang": ("skipped", "no GPU")}  # fmt: skip
    assert json.loads(members["campaign/1-tests/status.json"])["collected"] > 0  # the GPU run's selection exists
    bench_rows = members["campaign/2-kernels/bench.csv"].decode().splitlines()
    header = bench_rows[0].split(",")
    impls = {(r.split(",")[header.index("impl")], r.split(",")[header.index("page_size")]) for r in bench_rows[1:]}
    assert impls == {("adrenaline", "1"), ("adrenaline", "16"), ("sglang_triton", "1"), ("sglang_triton", "16")}
    meta = json.loads(members["campaign/2-kernels/bench.meta.json"])
    assert meta["sglang_kernel"].startswith("files:")  # SGLang's kernel from the bundle's files, not an import
    probe = json.loads(members["campaign/3-colocation/probe.json"])
    assert probe["cuda"] is False and probe["chosen"] is None
    assert all("PartitionerUnavailable" in v["error"] for v in probe["apis"].values())
    assert members["campaign/4-offload/cuda_ipc/SKIPPED"].decode().startswith("skipped: no GPU")
    print(f"smoke campaign: {smoke['wall_s']:.1f} s wall")


def test_import_accepts_the_smoke_campaign_into_a_temp_root(smoke, tmp_path):
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    shutil.copy2(REPO / layout.PERF_DOC, root / layout.PERF_DOC)
    assert importer.main([str(smoke["out"]), "--root", str(root), "--allow-smoke"]) == 0
    slug = layout.SMOKE_SLUG
    assert (root / layout.KERNEL_PROFILES / slug / "bench.csv").is_file()
    meta = json.loads((root / layout.KERNEL_PROFILES / slug / "bench.meta.json").read_text())
    prov = json.loads((smoke["out"] / "provenance.json").read_text())
    assert meta["campaign_id"] == prov["campaign_id"] and meta["campaign_git_sha"] == prov["bundle"]["git_sha"]
    from adrenaline_sgl.colocation.profiles import load_profile

    coloc = load_profile(root / layout.COLOCATION_PROFILES / slug)
    assert coloc.provenance["campaign_id"] == prov["campaign_id"] and coloc.source == "cpu-smoke"
    assert (root / layout.SCHEDULER_PROFILES / f"{slug}__smollm2-135m.csv").is_file()  # never an h200 table
    measured = root / layout.MEASURED / slug / prov["campaign_id"]
    assert (measured / "4-offload" / "inproc" / "bench.csv").is_file() and (measured / "provenance.json").is_file()
    doc = (root / layout.PERF_DOC).read_text()
    for name in tables.BLOCKS:
        block = doc.split(tables.marker(name))[1].split(tables.marker(name, end=True))[0]
        assert prov["campaign_id"] in block or slug in block, name
    assert (root / "results" / "fig9" / "fig9.png").stat().st_size > 10_000
    assert "CPU smoke run" in (root / "results" / "fig9" / "prefill.csv").read_text()


def _repack(src: Path, dest: Path, drop: str | None = None, edit=None, extra: tuple[str, bytes] | None = None):
    members = _members(src / run.TARBALL)
    dest.mkdir(parents=True, exist_ok=True)
    with tarfile.open(dest / run.TARBALL, "w:gz") as tar:
        for name, data in members.items():
            if name == drop:
                continue
            if edit is not None and name == "campaign/provenance.json":
                prov = json.loads(data)
                edit(prov)
                data = json.dumps(prov).encode()
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra is not None:
            info = tarfile.TarInfo(extra[0])
            info.size = len(extra[1])
            tar.addfile(info, io.BytesIO(extra[1]))
    return dest


@pytest.mark.parametrize(
    "case,kwargs,message",
    [
        ("no provenance", dict(drop="campaign/provenance.json"), "provenance.json missing"),
        ("no git sha", dict(edit=lambda p: p["bundle"].pop("git_sha")), "bundle.git_sha missing"),
        ("no steps", dict(edit=lambda p: p.__setitem__("steps", [])), "no step records"),
        ("no torch version", dict(edit=lambda p: p["software"].pop("torch")), "software.torch missing"),
        ("gpu run without driver", dict(edit=lambda p: p.update(mode="gpu", gpu={"name": "NVIDIA H200"})),
         "gpu.driver missing"),
        ("unsafe member", dict(extra=("campaign/../../evil.txt", b"x")), "unsafe tar member"),
    ],
)  # fmt: skip
def test_import_refuses(smoke, tmp_path, case, kwargs, message):
    src = _repack(smoke["out"], tmp_path / "src", **kwargs)
    root = tmp_path / "root"
    (root / "docs").mkdir(parents=True)
    shutil.copy2(REPO / layout.PERF_DOC, root / layout.PERF_DOC)
    with pytest.raises(importer.ImportRefused, match=re.escape(message)):
        importer.import_campaign(src, root, allow_smoke=True, fig9=False)
    assert sorted(p.name for p in root.iterdir()) == ["docs"], f"{case}: a refused import wrote files"


def test_import_refuses_a_smoke_campaign_without_the_flag(smoke, tmp_path, capsys):
    assert importer.main([str(smoke["out"]), "--root", str(tmp_path), "--no-fig9"]) == 2
    assert "CPU smoke campaign" in capsys.readouterr().err


def test_committed_perf_tables_match_the_committed_profiles():
    """docs/perf.md's generated blocks are what tables.py renders from the repo's profiles right now."""
    doc = (REPO / layout.PERF_DOC).read_text()
    assert tables.replace_blocks(doc, tables.render_all(REPO)) == doc


class _Script(run.Campaign):
    """The runner with scripted steps: `scripts[name]` is the Python the step runs."""

    scripts: dict[str, str] = {}

    def step_argv(self, step, folder, budget_s):
        return [sys.executable, "-c", self.scripts[step.name], str(folder)]


def test_a_failed_or_hung_step_is_recorded_and_the_next_one_runs(tmp_path, code_bundle, monkeypatch):
    monkeypatch.setattr(run, "GRACE_S", 1.0)
    _Script.scripts = {
        "crash": "raise SystemExit(3)",
        "hang": "import time; time.sleep(120)",
        "fine": "import json, sys, pathlib; pathlib.Path(sys.argv[1], 'status.json').write_text(json.dumps("
                "{'status': 'ok', 'summary': 'did it', 'reason': ''}))",
    }  # fmt: skip
    c = _Script(tmp_path / "out", tmp_path / "work", code_bundle, smoke=False, budget_s=300, only=None, argv=[])
    c.steps = [run.Step("crash", 20, "exits 3"), run.Step("hang", 6, "sleeps"), run.Step("fine", 20, "works")]
    t0 = time.monotonic()
    assert c.run() == 0
    assert time.monotonic() - t0 < 30
    steps = {s["name"]: s for s in json.loads((tmp_path / "out" / "provenance.json").read_text())["steps"]}
    assert steps["crash"]["status"] == "failed" and steps["crash"]["rc"] == 3
    assert steps["hang"]["status"] == "timeout" and steps["hang"]["rc"] == run.TIMEOUT_RC
    assert steps["fine"]["status"] == "ok" and steps["fine"]["summary"] == "did it"
    assert "campaign/3-fine/status.json" in _members(tmp_path / "out" / run.TARBALL)


def test_sigterm_ends_the_step_and_still_writes_the_tarball(tmp_path, code_bundle):
    out = tmp_path / "out"
    proc = subprocess.Popen(["bash", str(CAMPAIGN_SH), "--smoke", "--only", "tests", "kernels"],
                            env=_env(out, code_bundle, tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while not (out / run.TARBALL).is_file() and time.monotonic() < deadline:  # packed once before the first step
        time.sleep(0.2)
    time.sleep(1.0)
    proc.send_signal(signal.SIGTERM)
    text, _ = proc.communicate(timeout=60)
    assert proc.returncode == 128 + signal.SIGTERM, text[-2000:]
    prov = json.loads(_members(out / run.TARBALL)["campaign/provenance.json"])
    assert prov["interrupted"] == "signal SIGTERM" and prov["complete"] is False and prov["finished_utc"]
    assert provenance.problems(prov) == ["no step records"] or prov["steps"]
