"""The explain CLI: text, JSON, one-line errors."""

import json
from pathlib import Path

import pytest

from adrenaline_sgl.tools import explain

LLAMA2_70B_CONFIG = Path(__file__).parents[1] / "scheduler" / "fixtures" / "llama2-70b-hf.config.json"


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
        (["--model", "llama2-70b"], r"llama2-70b does not fit on a100-80g at tp=1: 128.5 GiB .* use tp >= 2"),
        (["--model", "llama2-70b", "--tp", "3"], r"tp=3 cannot split llama2-70b: .* valid tp: \[1, 2, 4, 8\]"),
        (["--tp", "0"], "tp must be an integer >= 1"),
        (["--model", "/nonexistent/config.json"], "model config '/nonexistent/config.json' cannot be read"),
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


def test_70b_at_tp4_prints_the_memory_arithmetic_and_the_bounds(capsys):
    assert explain.main(["--model", "llama2-70b", "--gpu", "a100-80g", "--tp", "4"]) == 0
    out = capsys.readouterr().out
    assert "TP 4 per instance" in out
    assert "0.88 x 80 GiB = 70.40 GiB" in out
    assert "weights per GPU                32.12 GiB (model 128.48 GiB, 68.98 B params; 16 of 64 q heads" in out
    assert "KV per token per GPU           80.00 KiB (80 layers x K,V x 2 of 8 KV heads x 128 x 2 B" in out
    assert "KV per GPU                     38.28 GiB -> 501,722 tokens per instance" in out  # (70.40-32.12)/80 KiB
    assert "161 all-reduces + 1 logits all-gather per step" in out
    for bound in ("B_TPOT = min(B_slo, B_mem)", "B_max", "OB_mem = min(HBM", "OB_comp = (B_max - B_TPOT)",
                  "OB = min(OB_mem, OB_comp)", "binding:"):  # fmt: skip
        assert bound in out


def test_tp_json_and_a_config_path_give_the_same_bounds_as_the_name(capsys):
    assert explain.main(["--model", "llama2-70b", "--tp", "2", "--json"]) == 0
    named = json.loads(capsys.readouterr().out)
    assert explain.main(["--model", str(LLAMA2_70B_CONFIG), "--tp", "2", "--json"]) == 0
    parsed = json.loads(capsys.readouterr().out)
    assert named["tp"] == 2 and named["weight_bytes_per_gpu"] * 2 > 128 * 1024**3
    assert named["kv_bytes_per_token_per_gpu"] == 80 * 2 * 4 * 128 * 2 and named["kv_capacity_tokens"] > 4096
    assert {k: v for k, v in parsed.items() if k != "model"} == {k: v for k, v in named.items() if k != "model"}


def test_more_tp_means_more_kv_tokens(capsys):
    caps = []
    for tp in ("2", "4", "8"):
        explain.main(["--model", "llama2-70b", "--tp", tp, "--json"])
        caps.append(json.loads(capsys.readouterr().out)["kv_capacity_tokens"])
    assert caps[0] < caps[1] < caps[2]
