"""Where an imported campaign's files live in the repo (relative to the repo root), one place for the importer
and the tables. `<slug>` is the GPU's name in lower case with dashes ("nvidia-h200"), "cpu-smoke" for a
CPU rehearsal."""

from __future__ import annotations

import re
from pathlib import Path

KERNEL_PROFILES = Path("kernels/profiles")  # <slug>/bench.csv, bench.meta.json, tune-*.csv
COLOCATION_PROFILES = Path("adrenaline_sgl/colocation/profiles")  # <slug>/prefill.csv, attention.csv, probe.json
SCHEDULER_PROFILES = Path("adrenaline_sgl/scheduler/profiles")  # <spec>__<model>.csv, .holdout.json
MEASURED = Path("experiments/gpu_campaign/measured")  # <slug>/<campaign_id>/: provenance, statuses, tests, offload
PERF_DOC = Path("docs/perf.md")
SMOKE_SLUG = "cpu-smoke"


def slug(prov: dict) -> str:
    if prov.get("mode") != "gpu":
        return SMOKE_SLUG
    return re.sub(r"[^a-z0-9]+", "-", prov["gpu"]["name"].lower()).strip("-")
