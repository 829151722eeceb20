"""run_with_stub runs a module as __main__ with its arguments, torchvision importable on CPU machines."""

import subprocess
import sys
import textwrap


def test_module_sees_its_args_and_an_importable_torchvision(tmp_path):
    (tmp_path / "probe_tv.py").write_text(textwrap.dedent("""
        import sys
        import torchvision.transforms as T
        if __name__ == "__main__":
            print(T.InterpolationMode.BICUBIC.value, sys.argv[0], *sys.argv[1:])
        """))
    out = subprocess.run(
        [sys.executable, "-m", "adrenaline_sgl.support.run_with_stub", "probe_tv", "--flag", "x"],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    value, argv0, *args = out.stdout.split()
    assert value == "bicubic" and args == ["--flag", "x"]
    assert argv0.endswith("probe_tv.py")  # as under `python -m probe_tv`


def test_no_module_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "adrenaline_sgl.support.run_with_stub"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode != 0 and "usage" in out.stderr
