"""`emulate:` in a cluster YAML: parsed and validated, and the launcher's commands carry it (nothing started)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from adrenaline_sgl.configs import cluster
from adrenaline_sgl.configs.commands import assign_ports, build_plan
from adrenaline_sgl.emulate import standin
from adrenaline_sgl.emulate.config import ENV_VAR, EmulateConfig

CONFIGS = Path(cluster.__file__).parent


@pytest.mark.parametrize("name, proxy", [("emulate_pd.yaml", "sglang-router"),
                                         ("emulate_adrenaline.yaml", "adrenaline")])
def test_shipped_emulated_configs_load(name, proxy):
    cfg = cluster.load(CONFIGS / name)
    assert cfg.emulate == EmulateConfig(gpu="a100-80g", model="llama2-13b", executor_sm_share=0.2, clock_scale=1)
    assert cfg.proxy.kind == proxy


def test_servers_get_the_pool_and_the_environment_the_proxy_the_cost_model():
    cfg = cluster.load(CONFIGS / "emulate_adrenaline.yaml")
    plan = {p.name: p for p in build_plan(cfg, "/standin", assign_ports(cfg, pick_free=False), "python", None)}
    for name in ("prefill-0", "decode-0"):
        argv = list(plan[name].argv)
        assert argv[argv.index("--max-total-tokens") + 1] == "60497"
        assert argv[argv.index("--chunked-prefill-size") + 1] == "8192"
        assert EmulateConfig.from_json(plan[name].env_overrides[ENV_VAR]) == cfg.emulate
    assert ENV_VAR not in plan["proxy"].env_overrides
    proxy = list(plan["proxy"].argv)
    assert proxy[proxy.index("--gpu") + 1] == "a100-80g" and proxy[proxy.index("--model") + 1] == "llama2-13b"
    assert proxy[proxy.index("--policy") + 1] == "auto"


def _load(tmp_path, data) -> cluster.ClusterConfig:
    path = tmp_path / "c.yaml"
    path.write_text(yaml.safe_dump(data))
    return cluster.load(path)


def test_emulate_errors_are_one_line_and_name_the_file(tmp_path):
    with pytest.raises(ValueError, match=r"c\.yaml: emulate: unknown keys \['gpus'\]"):
        _load(tmp_path, {"model": "smollm2:bfloat16", "emulate": {"gpus": "a100-80g"}})
    with pytest.raises(ValueError, match="tp=4 is not supported"):
        _load(tmp_path, {"model": "smollm2:bfloat16", "emulate": {"tp": 4}})
    with pytest.raises(ValueError, match=r"must not set \['--max-total-tokens'\] with emulate"):
        _load(tmp_path, {"model": "smollm2:bfloat16", "emulate": {}, "server_args": ["--max-total-tokens", "9"]})
    assert _load(tmp_path, {"model": "smollm2:bfloat16"}).emulate is None


def test_standin_checkpoint_keeps_the_tokenizer_and_context_with_a_tiny_kv(tmp_path):
    tok = tmp_path / "tok"
    tok.mkdir()
    (tok / "tokenizer_config.json").write_text("{}")
    (tok / "tokenizer.json").write_text('{"fake": true}')
    (tok / "config.json").write_text(json.dumps({"vocab_size": 5000, "bos_token_id": 1, "eos_token_id": 7}))
    out = standin.checkpoint_dir("llama2-13b", tok, cache_root_dir=tmp_path / "cache")
    assert standin.checkpoint_dir("llama2-13b", tok, cache_root_dir=tmp_path / "cache") == out  # cached
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["vocab_size"] == 5000 and cfg["eos_token_id"] == 7 and cfg["max_position_embeddings"] == 4096
    assert cfg["num_hidden_layers"] == 1 and cfg["num_key_value_heads"] == 1
    assert (out / "tokenizer.json").read_text() == '{"fake": true}'
    from safetensors.torch import load_file

    w = load_file(str(out / "model.safetensors"))
    assert w["model.embed_tokens.weight"].shape == (5000, 64)
    assert standin.kv_bytes_per_token() == 256  # vs 819,200 for Llama-2 13B
    with pytest.raises(FileNotFoundError, match="no tokenizer"):
        standin.checkpoint_dir("llama2-13b", tmp_path / "missing")
