"""The converted SmolLM2-135M checkpoint is a real model: greedy chat answer contains "Paris"."""

import json

import pytest


def test_converted_checkpoint_layout(smollm2_dir):
    config = json.loads((smollm2_dir / "config.json").read_text())
    assert config["num_hidden_layers"] == 30
    assert config["num_attention_heads"] == 9 and config["num_key_value_heads"] == 3
    assert "quantization_config" not in config
    assert list(smollm2_dir.glob("*.safetensors"))
    assert (smollm2_dir / "tokenizer.json").exists() or (smollm2_dir / "tokenizer_config.json").exists()


@pytest.mark.slow
def test_capital_of_france_is_paris(smollm2_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smollm2_dir)
    model = AutoModelForCausalLM.from_pretrained(smollm2_dir, dtype=torch.float32)
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**ids, max_new_tokens=16, do_sample=False)
    answer = tok.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
