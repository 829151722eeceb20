"""`make gpu-bundle`: build `.gpu/`, the ignored folder carried to the GPU machine, and print the device call.

    python -m experiments.gpu_campaign.bundle                  # .gpu/ with wheels (downloads cp312 wheels)
    python -m experiments.gpu_campaign.bundle --no-wheels      # code only (tests, offline)

What it holds:
- `sglang_kernels/`: SGLang's three Triton decode files from the installed sglang 0.5.23 (the kernel
  baseline; kernels/sglang_loader.py runs them without importing sglang);
- `wheels/core/`: cp312 manylinux wheels of what the steps tests .. scheduler import and the GPU machine lacks
  (imports.py traces them in this .venv; h200_packages.txt is the machine's list), at this .venv's versions;
- `wheels/sglang/`: the same for the sglang step (sglang itself and the light packages its tests import),
  only if everything fits under the limit; otherwise that step is skipped there and bundle.json says why;
- `bundle.json`: git sha, dirty flag, the tracked files and their digest (the campaign checks the tree it
  runs on against it), the wheels, and the sizes.

What travels is the checkout's tracked and untracked-but-not-ignored files plus `.gpu/`: at most 64 MiB.
Commit before building: the device copies the checkout as it is, and the bundle records its git sha.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

from experiments.gpu_campaign.provenance import tree_digest

REPO_ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
BUNDLE_DIR = ".gpu"
LIMIT_BYTES = 64 << 20  # what the device tool carries in all
MARGIN_BYTES = 1 << 20  # kept free: files written between the build and the call
COMMAND_MAX_CHARS = 2000
TIMEOUT_S = 600  # the device tool's maximum for one command; the campaign plans for ~8.5 minutes of it
COMMAND = "bash experiments/gpu_campaign/campaign.sh"
KERNEL_FILES = ("score_mod.py", "metadata.py", "decode_attention.py")
PLATFORMS = ("manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux_2_24_x86_64", "manylinux_2_26_x86_64",
             "manylinux_2_27_x86_64", "manylinux_2_28_x86_64", "manylinux_2_31_x86_64", "manylinux_2_34_x86_64",
             "manylinux_2_35_x86_64", "manylinux1_x86_64")  # fmt: skip


# Carried even though the GPU machine has them: the carried pydantic_core needs typing_extensions' newer
# `Sentinel`, and the machine's version is unknown (the sglang step's scratch site shadows it for that step only).
ALWAYS_CARRY = {"core": set(), "sglang": {"typing-extensions"}}


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def gpu_packages() -> set[str]:
    lines = (HERE / "h200_packages.txt").read_text().splitlines()
    return {normalize(x) for x in lines if x.strip() and not x.startswith("#")}


def git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True).stdout


def traveling_files() -> list[str]:
    """Tracked files plus untracked files git does not ignore: what the device tool sends besides carry."""
    tracked = git("ls-files", "-z").split("\0")
    untracked = git("ls-files", "-z", "-o", "--exclude-standard").split("\0")
    return sorted({f for f in tracked + untracked if f and (REPO_ROOT / f).is_file()})


def folder_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def is_ignored(rel: str) -> bool:
    return subprocess.run(["git", "check-ignore", "-q", rel], cwd=REPO_ROOT).returncode == 0


def copy_kernel_files(dest: Path) -> str:
    from adrenaline_kernels import sglang_loader

    src = sglang_loader.installed_kernel_dir()
    if src is None:
        raise SystemExit("gpu-bundle: no installed sglang kernel files (run `make setup`): the baseline needs them")
    dest.mkdir(parents=True)
    for name in KERNEL_FILES:
        shutil.copy2(src / name, dest / name)
    return str(src)


def wanted_wheels(group: str, have: set[str]) -> tuple[dict[str, str], list[str]]:
    """{distribution: version} the group imports and the GPU machine (plus `have`) lacks; and unmapped names."""
    out = subprocess.run([sys.executable, "-m", "experiments.gpu_campaign.imports", group], cwd=REPO_ROOT,
                         capture_output=True, text=True, timeout=600)  # fmt: skip
    if out.returncode != 0:
        raise SystemExit(f"gpu-bundle: tracing the imports of group {group} failed:\n{out.stderr[-2000:]}")
    traced = json.loads(out.stdout.strip().splitlines()[-1])
    missing = {d: v for d, v in traced["dists"].items()
               if normalize(d) not in have or normalize(d) in ALWAYS_CARRY[group]}  # fmt: skip
    return missing, traced["unmapped"]


def download(dists: dict[str, str], dest: Path) -> list[str]:
    """pip download cp312 manylinux wheels (no dependencies: the trace names every one); returns failures."""
    dest.mkdir(parents=True, exist_ok=True)
    failed = []
    plat = [x for p in PLATFORMS for x in ("--platform", p)]
    for dist, version in sorted(dists.items()):
        version = version.split("+")[0]
        cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "--python-version",
               "3.12", "--implementation", "cp", *plat, "-d", str(dest), f"{dist}=={version}"]  # fmt: skip
        if subprocess.run(cmd, capture_output=True, text=True).returncode != 0:
            failed.append(f"{dist}=={version}")
    return failed


def device_call(carry: list[str]) -> dict:
    return {"command": COMMAND, "carry": carry, "timeout_s": TIMEOUT_S}


def build(dest: Path, wheels: bool = True, sglang: bool = True, limit_bytes: int = LIMIT_BYTES) -> dict:
    if dest.exists():
        shutil.rmtree(dest)
    dest.mkdir(parents=True)
    files = traveling_files()
    digest, _ = tree_digest(REPO_ROOT, files)
    dirty = bool(git("status", "--porcelain", "--untracked-files=no").strip())
    meta: dict = {
        "git_sha": git("rev-parse", "HEAD").strip(),
        "dirty": dirty,
        "built_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "sglang_kernels": copy_kernel_files(dest / "sglang_kernels"),
        "tree_digest": digest,
        "files": files,
        "groups": {},
    }
    tree_bytes = sum((REPO_ROOT / f).stat().st_size for f in files)
    have = gpu_packages()
    for group, enabled in (("core", wheels), ("sglang", wheels and sglang)):
        if not enabled:
            meta["groups"][group] = {"wheels": [], "skipped": "--no-wheels" if not wheels else "--no-sglang"}
            continue
        dists, unmapped = wanted_wheels(group, have)
        folder = dest / "wheels" / group
        failed = download(dists, folder)
        entry = {"dists": dists, "unmapped": unmapped, "failed": failed,
                 "wheels": sorted(p.name for p in folder.glob("*.whl")), "bytes": folder_bytes(folder)}  # fmt: skip
        if failed and group == "core":
            raise SystemExit(f"gpu-bundle: no cp312 wheel for {', '.join(failed)} (needed by the core steps)")
        total = tree_bytes + folder_bytes(dest)
        if group == "sglang" and (failed or total > limit_bytes - MARGIN_BYTES):
            why = (f"no cp312 wheel for {', '.join(failed)}" if failed else
                   f"{total / 2**20:.1f} MiB with it, over {(limit_bytes - MARGIN_BYTES) / 2**20:.0f} MiB")
            shutil.rmtree(folder)
            entry.update(wheels=[], bytes=0, skipped=why)
        have |= {normalize(d) for d in dists}
        meta["groups"][group] = entry
    bundle_bytes = folder_bytes(dest)
    meta["bytes"] = {"tree": tree_bytes, "bundle": bundle_bytes, "total": tree_bytes + bundle_bytes,
                     "limit": limit_bytes}  # fmt: skip
    meta["call"] = device_call([dest.relative_to(REPO_ROOT).as_posix() if dest.is_relative_to(REPO_ROOT)
                                else str(dest)])  # fmt: skip
    (dest / "bundle.json").write_text(json.dumps(meta, indent=1) + "\n")
    meta["bytes"]["bundle"] = folder_bytes(dest)
    meta["bytes"]["total"] = tree_bytes + meta["bytes"]["bundle"]
    return meta


def check(meta: dict, dest: Path) -> list[str]:
    """What would make the device call fail: size, command length, carry paths missing or not ignored."""
    problems = []
    if meta["bytes"]["total"] > meta["bytes"]["limit"]:
        total, limit = meta["bytes"]["total"], meta["bytes"]["limit"]
        problems.append(f"{total / 2**20:.1f} MiB would travel, over {limit >> 20} MiB")
    call = meta["call"]
    if len(call["command"]) > COMMAND_MAX_CHARS:
        problems.append(f"command is {len(call['command'])} characters, over {COMMAND_MAX_CHARS}")
    for rel in call["carry"]:
        if not (REPO_ROOT / rel).is_dir():
            problems.append(f"carry path {rel} does not exist")
        elif not is_ignored(rel):
            problems.append(f"carry path {rel} is not ignored by git (add it to .gitignore)")
    if not 1 <= call["timeout_s"] <= 600:
        problems.append(f"timeout_s {call['timeout_s']} outside 1..600")
    return problems


def report(meta: dict, problems: list[str]) -> str:
    b = meta["bytes"]
    dirty = " (DIRTY: commit first, the device copies the checkout)" if meta["dirty"] else ""
    lines = [f"gpu-bundle: git {meta['git_sha'][:12]}{dirty}",
             f"  tree {b['tree'] / 2**20:.2f} MiB + bundle {b['bundle'] / 2**20:.2f} MiB = "
             f"{b['total'] / 2**20:.2f} MiB of {b['limit'] >> 20} MiB"]  # fmt: skip
    for group, entry in meta["groups"].items():
        what = ", ".join(entry["wheels"]) or f"none ({entry.get('skipped', 'nothing missing')})"
        lines.append(f"  wheels/{group}: {what}")
    call = meta["call"]
    lines += ["device call (from the repo root of the main checkout, after committing):",
              f"  command:   {call['command']}", f"  carry:     {json.dumps(call['carry'])}",
              f"  timeout_s: {call['timeout_s']}", f"  as JSON:   {json.dumps(call)}"]  # fmt: skip
    lines += [f"PROBLEM: {p}" for p in problems] or ["checks: size, command length, carry paths ignored: ok"]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dest", type=Path, default=REPO_ROOT / BUNDLE_DIR, help="bundle folder (default .gpu)")
    ap.add_argument("--no-wheels", action="store_true", help="code only: no wheel downloads")
    ap.add_argument("--no-sglang", action="store_true", help="leave the sglang step's wheels out")
    args = ap.parse_args(argv)
    meta = build(args.dest.resolve(), wheels=not args.no_wheels, sglang=not args.no_sglang)
    problems = check(meta, args.dest.resolve())
    print(report(meta, problems))
    return 1 if problems else 0


if __name__ == "__main__":
    raise SystemExit(main())
