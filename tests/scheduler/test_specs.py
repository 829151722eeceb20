"""Hardware and model specs: names, derived sizes, one-line errors."""

import json
from dataclasses import replace
from pathlib import Path

import pytest

from adrenaline_sgl.scheduler.specs import GPUS, MODELS, GPUSpec, ModelSpec, get_gpu, get_model

LLAMA2_70B_CONFIG = Path(__file__).parent / "fixtures" / "llama2-70b-hf.config.json"  # meta-llama/Llama-2-70b-hf


def test_names_of_the_contract_exist():
    assert {"a100-80g", "h100-sxm", "h200"} <= set(GPUS)
    assert {"llama2-7b", "llama2-13b", "llama2-70b", "llama3-8b", "llama3-70b", "smollm2-135m"} <= set(MODELS)


@pytest.mark.parametrize(
    "name, params_b",
    [
        ("llama2-7b", 6.74),
        ("llama2-13b", 13.0),
        ("llama2-70b", 68.98),  # the Hub's safetensors count: 68,976,648,192
        ("llama3-8b", 8.03),
        ("llama3-70b", 70.6),
        ("smollm2-135m", 0.1349),
    ],
)
def test_parameter_counts_match_the_published_sizes(name, params_b):
    assert get_model(name).num_params / 1e9 == pytest.approx(params_b, rel=0.01)


def test_kv_bytes_per_token():
    assert get_model("llama2-7b").kv_bytes_per_token == 2 * 32 * 4096 * 2  # 512 KiB
    assert get_model("llama3-8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # GQA: 128 KiB
    assert get_model("smollm2-135m").kv_bytes_per_token == 2 * 30 * 3 * 64 * 2


def test_a100_ridge_point():
    assert get_gpu("a100-80g").ridge_flops_per_byte == pytest.approx(312e12 / 2039e9)


@pytest.mark.parametrize("getter, field", [(get_gpu, "gpu"), (get_model, "model")])
def test_unknown_name_is_a_one_line_error_listing_valid_names(getter, field):
    with pytest.raises(ValueError) as exc:
        getter("gpt-5")
    msg = str(exc.value)
    assert "\n" not in msg and msg.startswith(f"{field} must be one of") and "'gpt-5'" in msg


def test_specs_pass_through_and_validate():
    g = get_gpu("h200")
    assert get_gpu(g) is g
    with pytest.raises(ValueError, match="hbm_gbs must be > 0"):
        GPUSpec("x", 1.0, 0.0, 1.0, 1, 1.0)
    with pytest.raises(ValueError, match="num_q_heads .* multiple of num_kv_heads"):
        ModelSpec("x", 1, 64, 9, 2, 8, 128, 100, 128)


def test_llama2_70b_is_the_hf_config():
    parsed = get_model(str(LLAMA2_70B_CONFIG))
    assert parsed.name == str(LLAMA2_70B_CONFIG)
    assert replace(parsed, name="llama2-70b") == MODELS["llama2-70b"]
    assert parsed.kv_bytes_per_token == 2 * 80 * 8 * 128 * 2  # GQA: 320 KiB


def _config(tmp_path, **changes):
    cfg = {**json.loads(LLAMA2_70B_CONFIG.read_text()), **changes}
    cfg = {k: v for k, v in cfg.items() if v is not ...}  # ... deletes a key
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def test_hf_config_optional_fields(tmp_path):
    m = get_model(_config(tmp_path, num_key_value_heads=..., torch_dtype=..., dtype="float32", head_dim=96))
    assert (m.num_kv_heads, m.bytes_per_param, m.head_dim) == (64, 4, 96)  # MHA when absent; newer `dtype`
    assert m.q_dim == 64 * 96
    tied = get_model(_config(tmp_path, tie_word_embeddings=True, torch_dtype="bfloat16"))
    assert tied.tied_embeddings and tied.num_params == MODELS["llama2-70b"].num_params - 32000 * 8192


@pytest.mark.parametrize(
    "changes, match",
    [
        ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, r"architecture \['GPT2LMHeadModel'\] is not"),
        ({"architectures": ..., "model_type": "mistral"}, "architecture mistral is not Llama-shaped"),
        ({"hidden_size": ...}, "lacks 'hidden_size'"),
        ({"num_hidden_layers": "80"}, "num_hidden_layers must be an integer"),
        ({"torch_dtype": "int8"}, "torch_dtype 'int8' is not modelled"),
        ({"quantization_config": {"quant_method": "awq"}}, "quantized checkpoints are not modelled"),
        ({"hidden_act": "gelu"}, "hidden_act 'gelu' is not modelled"),
        ({"num_key_value_heads": 7}, "multiple of num_kv_heads"),
    ],
)
def test_hf_config_errors_are_one_line(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match) as exc:
        get_model(_config(tmp_path, **changes))
    assert "\n" not in str(exc.value) and "config.json" in str(exc.value)


def test_unreadable_hf_configs(tmp_path):
    with pytest.raises(ValueError, match="cannot be read"):
        get_model(str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ValueError, match="is not valid JSON"):
        get_model(str(bad))
