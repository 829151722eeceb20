"""Hardware and model specs: names, derived sizes, one-line errors."""

import pytest

from adrenaline_sgl.scheduler.specs import GPUS, MODELS, GPUSpec, ModelSpec, get_gpu, get_model


def test_names_of_the_contract_exist():
    assert {"a100-80g", "h100-sxm", "h200"} <= set(GPUS)
    assert {"llama2-7b", "llama2-13b", "llama3-8b", "llama3-70b", "smollm2-135m"} <= set(MODELS)


@pytest.mark.parametrize(
    "name, params_b",
    [("llama2-7b", 6.74), ("llama2-13b", 13.0), ("llama3-8b", 8.03), ("llama3-70b", 70.6), ("smollm2-135m", 0.1349)],
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
