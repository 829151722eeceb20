"""pyproject.toml lists every package folder (the list is by hand because kernels/ is renamed)."""

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _package_folders() -> set[str]:
    found = set()
    for top, name in (("adrenaline_sgl", "adrenaline_sgl"), ("kernels", "adrenaline_kernels")):
        for init in (ROOT / top).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / top)
            found.add(".".join([name, *rel.parts]))
    return found


def test_every_package_folder_is_listed():
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    assert _package_folders() <= listed, f"add to pyproject.toml: {sorted(_package_folders() - listed)}"


def test_kernels_import_as_adrenaline_kernels():
    import adrenaline_kernels

    assert Path(adrenaline_kernels.__file__).parent == ROOT / "kernels"
