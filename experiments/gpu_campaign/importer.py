"""`make gpu-import DIR=...`: a campaign's tarball into committed, provenance-stamped profiles, then the
docs/perf.md tables and figure 9 regenerated from them.

    python -m experiments.gpu_campaign.importer DIR            # DIR: the folder that came back, or the tarball
    python -m experiments.gpu_campaign.importer DIR --root TMP --allow-smoke   # the CPU rehearsal

Refuses (exit 2, nothing written) a tarball without provenance.json or whose provenance lacks a required
field (provenance.py), and a smoke campaign unless --allow-smoke. A campaign cut short is imported for the
steps that finished, and the tables say which did not. Writes (layout.py): the kernel bench under
kernels/profiles/<slug>/, the colocation profile under adrenaline_sgl/colocation/profiles/<slug>/ (the
measured profile then replaces the modelled one in figure 9), the scheduler table under
adrenaline_sgl/scheduler/profiles/, and provenance, step statuses, test reports, offload numbers and log tails
under experiments/gpu_campaign/measured/<slug>/<campaign_id>/. Every copied profile carries the campaign id
and the bundle's git sha (the GPU machine has no git).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tarfile
import tempfile
from pathlib import Path

from experiments.gpu_campaign import layout, provenance
from experiments.gpu_campaign.run import TARBALL, TOP

REPO_ROOT = Path(__file__).resolve().parents[2]
LOG_TAIL_BYTES = 64 << 10
MEASURED_FILES = ("*.csv", "*.json", "*.xml", "SKIPPED")


class ImportRefused(ValueError):
    """The tarball cannot be imported; the message says why."""


def _tarball(src: Path) -> Path:
    path = src / TARBALL if src.is_dir() else src
    if not path.is_file():
        raise ImportRefused(f"no {TARBALL} at {src}")
    return path


def unpack(src: Path, into: Path) -> Path:
    """Extract safely (no absolute paths, no '..', no links) and return the campaign folder."""
    with tarfile.open(_tarball(src)) as tar:
        for member in tar.getmembers():
            name = Path(member.name)
            if name.is_absolute() or ".." in name.parts or not (member.isfile() or member.isdir()):
                raise ImportRefused(f"unsafe tar member {member.name!r}")
            if name.parts[0] != TOP:
                raise ImportRefused(f"tar member {member.name!r} is outside {TOP}/")
        tar.extractall(into, filter="data")
    return into / TOP


def check_provenance(folder: Path, allow_smoke: bool) -> dict:
    path = folder / "provenance.json"
    try:
        prov = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ImportRefused(f"provenance.json missing or unreadable: {exc}") from None
    problems = provenance.problems(prov)
    if problems:
        raise ImportRefused("provenance incomplete: " + "; ".join(problems))
    if prov["mode"] == "smoke" and not allow_smoke:
        raise ImportRefused("this is a CPU smoke campaign (mode: smoke); pass --allow-smoke to import it anyway")
    return prov


def _step_dir(folder: Path, name: str) -> Path | None:
    found = sorted(folder.glob(f"*-{name}"))
    return found[0] if found else None


def _stamp(prov: dict) -> dict:
    return {"campaign_id": prov["campaign_id"], "campaign_git_sha": prov["bundle"]["git_sha"],
            "campaign_tree_matches_bundle": prov["tree_matches_bundle"], "campaign_mode": prov["mode"]}  # fmt: skip


def import_kernels(step: Path, prov: dict, root: Path) -> list[Path]:
    dest = root / layout.KERNEL_PROFILES / layout.slug(prov)
    written = []
    for csv_path in sorted(step.glob("*.csv")):
        meta_path = csv_path.with_suffix(".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
        meta.update(_stamp(prov))
        if meta.get("git_sha") in (None, "", "unknown"):
            meta["git_sha"] = prov["bundle"]["git_sha"][:12]
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copy2(csv_path, dest / csv_path.name)
        (dest / meta_path.name).write_text(json.dumps(meta, indent=2) + "\n")
        written += [dest / csv_path.name, dest / meta_path.name]
    return written


def _restamp_csv(src: Path, dest: Path, prov: dict) -> None:
    """Copy a `# key: value` CSV, filling an unknown git_sha from the bundle and adding the campaign keys."""
    lines = src.read_text().splitlines()
    head = [ln for ln in lines if ln.startswith("#")]
    body = [ln for ln in lines if not ln.startswith("#")]
    sha = prov["bundle"]["git_sha"][:12]
    head = [f"# git_sha: {sha}" if ln.startswith("# git_sha:") and ln.split(":", 1)[1].strip() in ("", "unknown")
            else ln for ln in head]  # fmt: skip
    head += [f"# {k}: {v}" for k, v in _stamp(prov).items()]
    dest.write_text("\n".join(head + body) + "\n")


def import_colocation(step: Path, prov: dict, root: Path) -> list[Path]:
    src = step / "profile"
    if not (src / "attention.csv").is_file() or not (src / "prefill.csv").is_file():
        return []
    dest = root / layout.COLOCATION_PROFILES / layout.slug(prov)
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("prefill.csv", "attention.csv"):
        _restamp_csv(src / name, dest / name, prov)
    written = [dest / "prefill.csv", dest / "attention.csv"]
    if (step / "probe.json").is_file():
        shutil.copy2(step / "probe.json", dest / "probe.json")
        written.append(dest / "probe.json")
    return written


def import_scheduler(step: Path, prov: dict, root: Path) -> list[Path]:
    dest = root / layout.SCHEDULER_PROFILES
    written = []
    for table in sorted(step.glob("*__*.csv")):
        name = table.name if prov["mode"] == "gpu" else f"{layout.SMOKE_SLUG}__{table.name.split('__', 1)[1]}"
        dest.mkdir(parents=True, exist_ok=True)
        _restamp_csv(table, dest / name, prov)
        written.append(dest / name)
        holdout = table.with_suffix(".holdout.json")
        if holdout.is_file():
            shutil.copy2(holdout, dest / name.replace(".csv", ".holdout.json"))
            written.append(dest / name.replace(".csv", ".holdout.json"))
    return written


def import_measured(folder: Path, prov: dict, root: Path) -> list[Path]:
    """Provenance, summary, every step's small result files and the tail of its log."""
    dest = root / layout.MEASURED / layout.slug(prov) / prov["campaign_id"]
    if dest.exists():
        shutil.rmtree(dest)
    written = []
    for src in [folder / "provenance.json", folder / "summary.txt", folder / "nvidia-smi.txt"]:
        if src.is_file():
            dest.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / src.name)
            written.append(dest / src.name)
    for step in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = [f for pattern in MEASURED_FILES for f in step.rglob(pattern)]
        for f in files:
            target = dest / step.name / f.relative_to(step)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, target)
            written.append(target)
        log = step / "log.txt"
        if log.is_file():
            data = log.read_bytes()[-LOG_TAIL_BYTES:]
            target = dest / step.name / "log-tail.txt"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            written.append(target)
    return written


def regenerate(root: Path, fig9: bool = True) -> list[str]:
    from experiments.gpu_campaign import tables

    notes = [f"docs: {tables.update_doc(root)}"]
    if fig9:
        from experiments.fig9 import run as fig9_run

        out = root / "results" / "fig9"
        profile = tables.latest_measured_colocation(root)
        argv = ["--out", str(out)] + (["--profile", str(profile)] if profile else [])
        fig9_run.main(argv)
        notes.append(f"figure 9: {out / 'fig9.png'} from {profile or 'the default profile'}")
    return notes


def import_campaign(src: Path, root: Path = REPO_ROOT, allow_smoke: bool = False, fig9: bool = True) -> dict:
    with tempfile.TemporaryDirectory(prefix="gpu-import-") as tmp:
        folder = unpack(Path(src), Path(tmp))
        prov = check_provenance(folder, allow_smoke)
        written: list[Path] = []
        for name, fn in (("kernels", import_kernels), ("colocation", import_colocation),
                         ("scheduler", import_scheduler)):  # fmt: skip
            step = _step_dir(folder, name)
            if step is not None:
                written += fn(step, prov, root)
        written += import_measured(folder, prov, root)
    notes = regenerate(root, fig9)
    return {"campaign_id": prov["campaign_id"], "mode": prov["mode"], "complete": prov["complete"],
            "written": [str(p.relative_to(root)) for p in written], "notes": notes,
            "steps": {s["name"]: s["status"] for s in prov["steps"]}}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("src", type=Path, help="the folder that came back (holding campaign.tar.gz), or the tarball")
    ap.add_argument("--root", type=Path, default=REPO_ROOT, help="repo root to write into (tests: a temp copy)")
    ap.add_argument("--allow-smoke", action="store_true", help="accept a CPU smoke campaign (rehearsal)")
    ap.add_argument("--no-fig9", action="store_true", help="do not render figure 9")
    args = ap.parse_args(argv)
    try:
        result = import_campaign(args.src, args.root, args.allow_smoke, fig9=not args.no_fig9)
    except ImportRefused as exc:
        print(f"gpu-import: refused: {exc}", file=sys.stderr)
        return 2
    print(f"gpu-import: campaign {result['campaign_id']} ({result['mode']}, complete: {result['complete']}), "
          f"steps {result['steps']}")  # fmt: skip
    for line in result["written"]:
        print(f"  wrote {line}")
    for note in result["notes"]:
        print(f"  {note}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
