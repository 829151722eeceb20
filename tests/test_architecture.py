"""The layer rules and the one-owner rule, read from the source (ast), not from what happens to be imported.

Layers, bottom up: `adrenaline_kernels` (kernels/) knows nothing of the package; `scheduler` is pure (the
standard library and itself: no torch, numpy or SGLang, no other layer), so the proxy and the simulator can
run it anywhere; `protocol` (the proxy <-> server contract) is the standard library only; the proxy
imports the scheduler and the protocol, never the SGLang glue; the simulator imports neither the offload
runtime nor the SGLang glue; only `sglang_ext/` touches SGLang. Every import counts, also those inside
functions (a lazy import is still a dependency).

One owner: each shared knob's default is a literal in one place, and each list of names (transports,
partitioners, policies) is written once; every other declaration imports it.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PKG = ROOT / "adrenaline_sgl"


def _module_of(path: Path) -> str:
    base = ROOT / "kernels" if path.is_relative_to(ROOT / "kernels") else ROOT
    parts = list(path.relative_to(base).with_suffix("").parts)
    if base != ROOT:
        parts.insert(0, "adrenaline_kernels")
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports (absolute names; relative imports resolved), at any depth of the file."""
    module = _module_of(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package.split(".")[: len(package.split(".")) - node.level + 1] if node.level else []
            name = ".".join([*base, node.module] if node.module else base)
            found.add(name)
            found.update(f"{name}.{a.name}" for a in node.names)  # `from pkg import module`
    return found


def _files(*parts: str) -> list[Path]:
    where = ROOT.joinpath(*parts)
    return [where] if where.suffix == ".py" else sorted(where.rglob("*.py"))


def _under(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def _violations(files, allowed=None, forbidden=()) -> list[str]:
    """`file: module` for each import outside `allowed` (prefixes; None = anything) or inside `forbidden`."""
    out = []
    for path in files:
        for name in sorted(imports_of(path)):
            top = name.split(".")[0]
            bad = _under(name, forbidden) or (allowed is not None and top not in sys.stdlib_module_names
                                              and not _under(name, allowed))  # fmt: skip
            if bad:
                out.append(f"{path.relative_to(ROOT)}: {name}")
    return out


RULES = {
    "kernels import nothing of adrenaline_sgl": (_files("kernels"), None, ("adrenaline_sgl",)),
    "scheduler: the standard library and itself only": (_files("adrenaline_sgl", "scheduler"),
                                                        ("adrenaline_sgl.scheduler",), ()),
    "protocol: the standard library only": (_files("adrenaline_sgl", "protocol.py"), (), ()),
    "proxy: no SGLang glue, no SGLang, no offload runtime": (
        _files("adrenaline_sgl", "proxy"), None,
        ("adrenaline_sgl.sglang_ext", "sglang", "adrenaline_sgl.offload", "adrenaline_sgl.colocation")),
    "sim: neither the offload runtime nor the SGLang glue": (
        _files("adrenaline_sgl", "sim"), None, ("adrenaline_sgl.offload", "adrenaline_sgl.sglang_ext", "sglang")),
}  # fmt: skip


@pytest.mark.parametrize("rule", list(RULES))
def test_layer_rule(rule):
    files, allowed, forbidden = RULES[rule]
    assert files, f"{rule}: no files found (moved?)"
    assert _violations(files, allowed, forbidden) == []


def test_only_sglang_ext_imports_sglang():
    """Outside sglang_ext/, only the kernel benchmark's SGLang baseline may (it is the comparison)."""
    baseline = {ROOT / "kernels" / "sglang_loader.py", ROOT / "kernels" / "bench_impls.py"}
    files = [p for p in [*_files("adrenaline_sgl"), *_files("kernels")]
             if not p.is_relative_to(PKG / "sglang_ext") and p not in baseline]  # fmt: skip
    assert _violations(files, None, ("sglang",)) == []


def test_the_rules_catch_a_violation(tmp_path, monkeypatch):
    """The scanner itself: a lazy import inside a function and a relative import are both seen."""
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    bad = tmp_path / "adrenaline_sgl" / "scheduler" / "bad.py"
    bad.parent.mkdir(parents=True)
    bad.write_text("from . import specs\n\ndef f():\n    import torch\n    from ..sglang_ext import flags\n")
    assert imports_of(bad) >= {"torch", "adrenaline_sgl.scheduler.specs", "adrenaline_sgl.sglang_ext.flags"}
    assert _violations([bad], ("adrenaline_sgl.scheduler",), ()) == [
        "adrenaline_sgl/scheduler/bad.py: adrenaline_sgl.sglang_ext", "adrenaline_sgl/scheduler/bad.py:"
        " adrenaline_sgl.sglang_ext.flags", "adrenaline_sgl/scheduler/bad.py: torch"]  # fmt: skip


# ---- one owner per knob ----------------------------------------------------------------------------------

KNOBS = {  # knob name -> (the file whose literal is its one default, the constant holding it)
    "executor_sm_share": ("adrenaline_sgl/scheduler/bounds.py", "DEFAULT_EXECUTOR_SM_SHARE"),
    "tpot_slo_ms": ("adrenaline_sgl/scheduler/bounds.py", "DEFAULT_TPOT_SLO_MS"),
    "max_offload_ratio": ("adrenaline_sgl/scheduler/admission.py", "MAX_OFFLOAD_RATIO"),
    "replan_interval_s": ("adrenaline_sgl/colocation/replan.py", "DEFAULT_REPLAN_INTERVAL_S"),
    "arrival_window_s": ("adrenaline_sgl/colocation/replan.py", "DEFAULT_ARRIVAL_WINDOW_S"),
    "transport": ("adrenaline_sgl/offload/transports/base.py", "DEFAULT_TRANSPORT"),
}
STRING_KNOBS = {"transport": ("inproc", "mooncake", "cuda_ipc")}  # knobs whose default is one of these names
# where a string knob's name is a choice, not a default: the tools pick the transport they measure
STRING_KNOB_CHOOSERS = ("adrenaline_sgl/tools/",)
NAME_LISTS = {  # names of a registry -> (its owner file, how many of them make a copy of the list)
    "transports": (("inproc", "mooncake", "cuda_ipc"), "adrenaline_sgl/offload/transports/base.py"),
    "partitioners": (("green_context", "mps", "none", "fake"), "adrenaline_sgl/colocation/partitioner.py"),
    "policies": (("never", "always", "auto", "ratio:F"), "adrenaline_sgl/scheduler/admission.py"),
}


def _has_number(node) -> bool:
    """A number other than 0: 0 is "no value" (the load report's unknown share), never a default a knob takes."""
    return any(isinstance(n, ast.Constant) and type(n.value) in (int, float) and n.value != 0 for n in ast.walk(node))


def _has_value(node, knob: str) -> bool:
    """A default written in place: a number for numeric knobs, one of the registry's names for string knobs."""
    if knob not in STRING_KNOBS:
        return _has_number(node)
    return any(isinstance(n, ast.Constant) and n.value in STRING_KNOBS[knob] for n in ast.walk(node))


def _knob_literals(tree: ast.AST, knob: str, constant: str) -> list[int]:
    """Lines where `knob` gets a value written in place: `knob = 0.3`, `knob: float = field(default=0.3)`,
    `def f(knob=0.3)`, `f(knob=0.3)`, `add_argument("--knob", default=0.3)`, `d.get("knob", 0.3)`,
    `getattr(args, "knob", 0.3)`, or the constant itself."""
    flag = "--" + knob.replace("_", "-")
    lines = []
    for node in ast.walk(tree):
        if isinstance(node, ast.AnnAssign | ast.Assign):
            targets = [node.target] if isinstance(node, ast.AnnAssign) else node.targets
            names = {t.id if isinstance(t, ast.Name) else getattr(t, "attr", None) for t in targets}
            if names & {knob, constant, knob.upper()} and node.value is not None and _has_value(node.value, knob):
                lines.append(node.lineno)
        elif isinstance(node, ast.arguments):
            args = [*node.posonlyargs, *node.args]
            pairs = [*zip(args[len(args) - len(node.defaults) :], node.defaults),
                     *zip(node.kwonlyargs, node.kw_defaults)]  # fmt: skip
            lines += [d.lineno for a, d in pairs if a.arg == knob and d is not None and _has_value(d, knob)]
        elif isinstance(node, ast.Call):
            if knob not in STRING_KNOBS:  # a call passing a transport by name chooses it
                lines += [k.value.lineno for k in node.keywords if k.arg == knob and _has_value(k.value, knob)]
            if any(isinstance(a, ast.Constant) and a.value == flag for a in node.args):
                lines += [k.value.lineno for k in node.keywords if k.arg == "default" and _has_value(k.value, knob)]
            getter = getattr(node.func, "attr", None) == "get" or getattr(node.func, "id", None) == "getattr"
            keyed = [i for i, a in enumerate(node.args) if isinstance(a, ast.Constant) and a.value == knob]
            if getter and keyed and len(node.args) > keyed[0] + 1 and _has_value(node.args[keyed[0] + 1], knob):
                lines.append(node.lineno)
    return lines


@pytest.mark.parametrize("knob", list(KNOBS))
def test_each_knobs_default_is_written_once(knob):
    owner, constant = KNOBS[knob]
    files = [p for p in [*_files("adrenaline_sgl"), *_files("experiments")]
             if knob not in STRING_KNOBS or not str(p.relative_to(ROOT)).startswith(STRING_KNOB_CHOOSERS)]
    found = [f"{p.relative_to(ROOT)}:{line}" for p in files
             for line in _knob_literals(ast.parse(p.read_text()), knob, constant)]  # fmt: skip
    assert len(found) == 1 and found[0].startswith(owner + ":"), f"{knob} has literal defaults at {found}"


def _string_lists(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Tuple | ast.List | ast.Set):
            yield node.lineno, {e.value for e in node.elts if isinstance(e, ast.Constant) and isinstance(e.value, str)}


@pytest.mark.parametrize("names", list(NAME_LISTS))
def test_each_list_of_names_is_written_once(names):
    """A tuple/list/set literal holding two or more of a registry's names, outside its owner, is a copy that
    can drift (the owner's registry is a dict or its own tuple; everyone else imports it)."""
    known, owner = NAME_LISTS[names]
    copies = [f"{p.relative_to(ROOT)}:{line}" for p in _files("adrenaline_sgl") if str(p.relative_to(ROOT)) != owner
              for line, found in _string_lists(ast.parse(p.read_text())) if len(found & set(known)) >= 2]  # fmt: skip
    assert copies == [], f"{names} copied at {copies}; import them from {owner}"


def test_the_knob_scanner_sees_every_way_of_writing_a_default():
    src = ("x: float = field(default=0.3)\ny = _help('h', 0.2)\ndef f(executor_sm_share=0.5): pass\n"
           "g(executor_sm_share=0.25)\np.add_argument('--executor-sm-share', type=float, default=0.3)\n"
           "ok: float = field(default=DEFAULT)\nexecutor_sm_share: float = DEFAULT\nexecutor_sm_share: float = 0.0\n")
    tree = ast.parse(src.replace("x:", "executor_sm_share:").replace("y =", "executor_sm_share ="))
    assert _knob_literals(tree, "executor_sm_share", "DEFAULT_EXECUTOR_SM_SHARE") == [1, 2, 3, 4, 5]
    got = ast.parse("a = cfg.get('executor_sm_share', 0.2)\nb = getattr(args, 'executor_sm_share', 0.5)\n"
                    "c = cfg.get('executor_sm_share', DEFAULT)\nd = getattr(args, 'executor_sm_share')\n")
    assert _knob_literals(got, "executor_sm_share", "DEFAULT_EXECUTOR_SM_SHARE") == [1, 2]
    strings = ast.parse("def f(transport='mooncake'): pass\nt = getattr(a, 'transport', 'inproc')\n"
                        "def g(transport=DEFAULT_TRANSPORT): pass\nx = f(transport='inproc')\n")
    assert _knob_literals(strings, "transport", "DEFAULT_TRANSPORT") == [1, 2]


# ---- entry points ------------------------------------------------------------------------------------------

RUNTIME = ("scheduler", "offload", "colocation", "sim", "proxy", "sglang_ext", "emulate", "configs", "support")
ENTRY_POINTS = {  # runtime modules that are a process's own entry point (started by the launcher or a runtime)
    "adrenaline_sgl/proxy/__main__.py",  # the adrenaline proxy (python -m adrenaline_sgl.proxy)
    "adrenaline_sgl/proxy/config.py",  # its argparse parser, read from ProxyConfig's fields
    "adrenaline_sgl/offload/server.py",  # the executor process offload.process starts
    "adrenaline_sgl/support/run_with_stub.py",  # the wrapper SGLang tools run under on CPU machines
    "adrenaline_sgl/sglang_ext/cpu/server_env.py",  # writes a hand-started CPU node's shims (--print-commands)
}


def _is_cli(tree: ast.AST) -> bool:
    """An `if __name__ == "__main__":` block or an argparse parser built in the module."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Compare) and isinstance(node.left, ast.Name) and node.left.id == "__name__":
            return True
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "ArgumentParser":
            return True
    return False


def test_runtime_packages_keep_no_tools():
    """CLIs and tools live in `adrenaline_sgl/tools/` (`python -m adrenaline_sgl.tools.<name>`); a runtime
    package holds only the entry points of the processes it runs."""
    clis = [str(p.relative_to(ROOT)) for part in RUNTIME for p in _files("adrenaline_sgl", part)
            if _is_cli(ast.parse(p.read_text()))]  # fmt: skip
    assert sorted(set(clis) - ENTRY_POINTS) == [], "move these tools to adrenaline_sgl/tools/"
    assert _is_cli(ast.parse("import argparse\np = argparse.ArgumentParser()\n"))
    assert _is_cli(ast.parse("if __name__ == '__main__':\n    main()\n"))
