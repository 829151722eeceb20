"""The explain CLI: text, JSON, one-line errors."""

import json

import pytest

from adrenaline_sgl.tools import explain


def test_json_has_the_bounds(capsys):
    assert explain.main(["--model", "llama2-13b", "--gpu", "a100-80g", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    for key in ("ob_mem", "ob_comp", "ob", "b_tpot", "b_max", "binding", "offload_ratio"):
        assert key in out
    assert out["ob"] == min(out["ob_mem"], out["ob_comp"]) and out["b_max"] >= out["b_tpot"] > 0


def test_more_prefill_instances_raise_ob_mem(capsys):
    explain.main(["--json", "--prefill-instances", "1"])
    one = json.loads(capsys.readouterr().out)
    explain.main(["--json", "--prefill-instances", "3"])
    three = json.loads(capsys.readouterr().out)
    assert three["ob_mem"] == pytest.approx(3 * one["ob_mem"])


def test_text_names_the_binding_bound(capsys):
    assert explain.main(["--model", "llama2-7b", "--tpot-slo-ms", "80"]) == 0
    out = capsys.readouterr().out
    assert "B_TPOT" in out and "B_max" in out and "binding:" in out and "OB = min(OB_mem, OB_comp)" in out


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--model", "gpt-5"], "model must be one of"),
        (["--gpu", "v100"], "gpu must be one of"),
        (["--tpot-slo-ms", "-3"], r"tpot_slo_ms must be > 0"),
        (["--executor-sm-share", "1.5"], r"executor_sm_share must be in \(0, 1\]"),
        (["--prefill-instances", "-1"], "prefill_instances must be >= 0"),
        (["--tpot-slo-ms", "abc"], "invalid float value"),
        (["--predictor", "table", "--gpu", "h200"], "no profile table"),
    ],
)
def test_bad_configuration_is_one_line(argv, match, capsys):
    with pytest.raises(SystemExit) as exc_info:
        rc = explain.main(argv)
        raise SystemExit(rc)
    assert exc_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and err.startswith("python -m adrenaline_sgl.tools.explain: error:")
    assert __import__("re").search(match, err)
