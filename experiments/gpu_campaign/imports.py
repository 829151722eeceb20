"""Which installed distributions a group of campaign steps imports (run in the CPU .venv by bundle.py).

    python -m experiments.gpu_campaign.imports core     # steps tests .. scheduler
    python -m experiments.gpu_campaign.imports sglang   # step sglang (the plugin's gpu tests)

Imports the modules the group's steps run and collects the group's gpu tests (pytest --collect-only, which
imports every test module and conftest), then prints one JSON object: {distribution: version} for every
non-stdlib top-level module left in sys.modules, plus "unmapped" (top-level names no distribution claims:
our own packages and the interpreter's internals). Tests import more inside their bodies; each group's
"modules" names those. What the GPU machine lacks and the campaign does not carry ("blocked": sglang outside
its own step, Mooncake, sgl_kernel, FlashInfer) is made unimportable first, as it is there, so that optional
imports (`pytest.importorskip`, `find_spec`) take the same branch as on the GPU machine.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.abc
import importlib.metadata as md
import importlib.util
import io
import json
import sys

OWN = {"adrenaline_sgl", "adrenaline_kernels", "kernels", "tests", "experiments", "plots", "conftest"}
GROUPS = {
    "core": {
        "tests": ["tests/kernels", "tests/offload", "tests/colocation", "tests/tools"],
        "modules": ["adrenaline_kernels.bench", "adrenaline_kernels.sglang_loader", "adrenaline_sgl.offload.process",
                    "adrenaline_sgl.offload.transports.cuda_ipc", "adrenaline_sgl.tools.decode_harness",
                    "adrenaline_sgl.colocation.green_context", "experiments.gpu_campaign.run",
                    "experiments.gpu_campaign.probe_green", "experiments.gpu_campaign.verdicts"]
        + [f"experiments.gpu_campaign.steps.{s}" for s in ("tests", "kernels", "colocation", "offload", "scheduler")],
        "tools": ["adrenaline_sgl.tools.colocation_profile", "adrenaline_sgl.tools.offload_bench",
                  "adrenaline_sgl.tools.profile_gpu"],  # the tools the steps run
        "blocked": ["sglang", "sgl_kernel", "mooncake", "flashinfer"],
    },
    "sglang": {
        "tests": ["tests/sglang_ext"],
        "modules": ["sglang.srt.model_executor.runner_backend_utils.breakable_cuda_graph",
                    "adrenaline_sgl.sglang_ext.plugin", "adrenaline_sgl.sglang_ext.backend",
                    "adrenaline_sgl.sglang_ext.backend_graph", "adrenaline_sgl.sglang_ext.prefill_executor",
                    "adrenaline_sgl.sglang_ext.cpu.sgl_kernel_standin", "experiments.gpu_campaign.steps.sglang"],
        "tools": [],
        "blocked": ["sgl_kernel", "mooncake", "flashinfer"],
    },
}  # fmt: skip


class _Blocked(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Finds the blocked top-level packages first and fails to load them, like a machine without them."""

    def __init__(self, names: list[str]):
        self.names = set(names)

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.names:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        raise ModuleNotFoundError(f"No module named {spec.name!r} (not on the GPU machine)", name=spec.name)

    def exec_module(self, module):  # never reached: create_module raises
        raise ModuleNotFoundError(module.__name__)


def traced(group: str) -> dict:
    spec = GROUPS[group]
    sys.meta_path.insert(0, _Blocked(spec["blocked"]))
    import pytest

    with contextlib.redirect_stdout(io.StringIO()):
        rc = pytest.main([*spec["tests"], "-m", "gpu", "--collect-only", "-q", "-p", "no:cacheprovider"])
    if rc not in (0, 5):
        raise SystemExit(f"imports: collecting {spec['tests']} failed (pytest exit {rc})")
    for name in spec["modules"]:
        importlib.import_module(name)
    for name in spec["tools"]:
        importlib.import_module(name)
    tops = {n.split(".")[0] for n in list(sys.modules)}
    tops -= set(sys.stdlib_module_names) | set(sys.builtin_module_names) | OWN
    owners = md.packages_distributions()
    dists, unmapped = {}, []
    for top in sorted(tops):
        names = owners.get(top)
        if not names:
            unmapped.append(top)
            continue
        for dist in names:
            if dist.replace("_", "-").lower() != "adrenaline-sgl":
                dists[dist] = md.version(dist)
    return {"dists": dists, "unmapped": unmapped}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1 or argv[0] not in GROUPS:
        print(f"usage: python -m experiments.gpu_campaign.imports {{{','.join(GROUPS)}}}", file=sys.stderr)
        return 2
    print(json.dumps(traced(argv[0])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
