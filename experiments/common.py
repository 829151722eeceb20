"""What every figure's run.py shares: results folders, config files, CSV writing, CLI flags, sweeps.

Conventions (experiments/README.md):
- outputs go to `$RESULTS_DIR/figN/` (default `results/figN`, relative to the working directory);
- each run writes `config.resolved.yaml` (the config file after CLI overrides, plus the mode and the
  command line) beside its CSVs, then renders `figN.png` with `plots/figN.py` (which reads only the CSVs);
- `MODE=sim` (default) simulates; `MODE=real` (or `--mode real`) measures live servers (experiments/real.py);
  `MODE=emulated` runs real SGLang servers with an emulated GPU (experiments/emulated.py, docs/emulator.md).
"""

from __future__ import annotations

import argparse
import csv
import importlib.util
import multiprocessing
import os
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from tqdm import tqdm

REPO_ROOT = Path(__file__).resolve().parents[1]
MODES = ("sim", "real", "emulated")
SOURCES = {"sim": "simulated", "real": "measured",
           "emulated": "emulated: real SGLang control plane, modelled GPU time"}  # meta.csv, plot titles


class ExperimentError(ValueError):
    """A bad input or an unavailable resource: printed as one line, exit status 2."""


def results_dir(fig: str) -> Path:
    """`$RESULTS_DIR/<fig>` (created)."""
    out = Path(os.environ.get("RESULTS_DIR") or "results") / fig
    out.mkdir(parents=True, exist_ok=True)
    return out


def load_config(fig_dir: Path) -> dict:
    """The figure's `config.yaml`."""
    with open(fig_dir / "config.yaml") as f:
        return yaml.safe_load(f)


def base_parser(fig: str, description: str) -> argparse.ArgumentParser:
    """Flags every figure accepts (a figure adds its own)."""
    check_mode(os.environ.get("MODE") or "sim")
    ap = argparse.ArgumentParser(prog=f"python -m experiments.run {fig}", description=description)
    ap.add_argument("--seed", type=int, help="seed for lengths and arrivals (default: the config's)")
    ap.add_argument("--num-requests", type=int, help="requests per simulated run (default: the config's)")
    ap.add_argument("--quick", action="store_true", help="a small version of the sweep (tests, smoke runs)")
    ap.add_argument(
        "--mode",
        choices=MODES,
        default=os.environ.get("MODE") or "sim",
        help="sim (default; also env MODE), real: measure live servers (experiments/real.py), or emulated: "
             "real SGLang servers with an emulated GPU (experiments/emulated.py, fig5)",
    )
    ap.add_argument("--no-plot", action="store_true", help="write the CSVs only")
    ap.add_argument("--gpu", help="GPU name from adrenaline_sgl.scheduler.specs (default: the config's, a100-80g)")
    ap.add_argument("--dataset", action="append", default=[], metavar="WORKLOAD=PATH",
                    help="a real dataset file for a workload (repeatable), e.g. sharegpt=sg.json")
    ap.add_argument("--tokenizer", help="local HF tokenizer dir for dataset text (default: 4 chars/token proxy)")
    return ap


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ExperimentError(f"MODE={mode!r} is unknown; valid: {', '.join(MODES)}")


def apply_common(cfg: dict, args: argparse.Namespace) -> dict:
    """Config after the common CLI overrides (`quick` merges the config's `quick:` section)."""
    cfg = dict(cfg)
    if args.quick:
        cfg.update(cfg.pop("quick", {}) or {})
    cfg.pop("quick", None)
    if args.seed is not None:
        cfg["seed"] = args.seed
    if args.gpu:
        cfg["gpu"] = args.gpu
    if args.tokenizer:
        cfg["tokenizer"] = args.tokenizer
    for item in args.dataset:
        name, sep, path = item.partition("=")
        if not sep or not name or not path:
            raise ExperimentError(f"--dataset {item!r} must look like WORKLOAD=PATH (e.g. sharegpt=sg.json)")
        cfg["dataset_paths"] = {**(cfg.get("dataset_paths") or {}), name: path}
    if args.num_requests is not None:
        if args.num_requests < 1:
            raise ExperimentError(f"--num-requests={args.num_requests} must be >= 1")
        cfg["num_requests"] = args.num_requests
    return cfg


def start_simulated(fig: str, fig_dir: Path, doc: str, argv: list[str] | None) -> tuple[argparse.Namespace, dict, Path]:
    """The start of every simulation-only figure: parse the common flags, refuse MODE=real with one
    line, resolve the config and write it beside the results. Returns (args, cfg, results folder)."""
    args = base_parser(fig, doc.splitlines()[0]).parse_args(argv)
    if args.mode in ("real", "emulated"):
        from experiments import real  # lazy: real imports this module

        raise real.unsupported(fig, args.mode)
    cfg = apply_common(load_config(fig_dir), args)
    out = results_dir(fig)
    write_resolved(out, cfg, args.mode)
    return args, cfg, out


def write_resolved(out: Path, cfg: dict, mode: str) -> None:
    """`config.resolved.yaml`: what this run actually used."""
    doc = {"mode": mode, "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]), **cfg}
    (out / "config.resolved.yaml").write_text(yaml.safe_dump(doc, sort_keys=False))


def write_meta(out: Path, mode: str, **facts: Any) -> Path:
    """`meta.csv`: one row saying how the figure's data were made (plots put it in the title)."""
    source = SOURCES[mode]
    return write_csv(out / "meta.csv", ["source", *facts], [[source, *facts.values()]])


def fmt(x: Any, digits: int = 6) -> Any:
    return f"{x:.{digits}g}" if isinstance(x, float) else x


def write_csv(path: Path, header: Sequence[str], rows: Iterable[Sequence[Any]], digits: int = 6) -> Path:
    """A plain CSV (header + rows; floats with `digits` significant digits)."""
    rows = list(rows)
    for r in rows:
        if len(r) != len(header):
            raise ValueError(f"{path.name}: row {r} has {len(r)} values for {len(header)} columns")
    with open(path, "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows([[fmt(x, digits) for x in r] for r in rows])
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(row for row in f if not row.startswith("#")))


_SWEEP_FN: Callable | None = None  # the function forked workers run (set before the pool starts)


def _call(point):
    return _SWEEP_FN(point)


def default_jobs() -> int:
    """Worker processes for sweeps: $ADRENALINE_JOBS, else min(2, CPUs)."""
    env = os.environ.get("ADRENALINE_JOBS")
    if env:
        if not env.isdigit() or int(env) < 1:
            raise ExperimentError(f"ADRENALINE_JOBS={env!r} must be an integer >= 1")
        return int(env)
    return max(1, min(2, os.cpu_count() or 1))


def sweep(points: Sequence, fn: Callable, desc: str, jobs: int | None = None) -> list:
    """fn(point) for every point, results in order, with a progress bar on stderr.

    With jobs > 1 the points run in forked worker processes (POSIX only; results must be picklable and
    should be small). Every point is a pure function of its inputs, so results do not depend on `jobs`.
    """
    global _SWEEP_FN
    jobs = default_jobs() if jobs is None else jobs
    bar = tqdm(total=len(points), desc=desc, unit="run", leave=False, disable=None)
    if jobs <= 1 or len(points) <= 1 or "fork" not in multiprocessing.get_all_start_methods():
        out = []
        for p in points:
            out.append(fn(p))
            bar.update()
        bar.close()
        return out
    _SWEEP_FN = fn
    try:
        with multiprocessing.get_context("fork").Pool(min(jobs, len(points))) as pool:
            out = []
            for r in pool.imap(_call, points):
                out.append(r)
                bar.update()
    finally:
        _SWEEP_FN = None
        bar.close()
    return out


def load_plotter(fig: str):
    """`plots/<fig>.py` as a module (plots/ is a folder of scripts, not a package)."""
    path = REPO_ROOT / "plots" / f"{fig}.py"
    spec = importlib.util.spec_from_file_location(f"plots_{fig}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def finish(fig: str, out: Path, no_plot: bool) -> int:
    """Render the figure from the CSVs just written and say where everything is."""
    if not no_plot:
        png = load_plotter(fig).plot(out)
        print(f"{fig}: wrote {png}")
    print(f"{fig}: CSVs in {out}")
    return 0


def guarded(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
    """Turn bad-input errors into one line on stderr and exit status 2."""

    def wrapper(argv: list[str] | None = None) -> int:
        try:
            return main(argv)
        except (ExperimentError, ValueError, FileNotFoundError) as err:
            print(f"error: {err}", file=sys.stderr)
            return 2

    wrapper.__doc__ = main.__doc__
    return wrapper
