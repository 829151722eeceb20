"""Prompt tokens counted with the served model's tokenizer (SmolLM2), chat through its template; the estimate
without one."""

import logging

import pytest

from adrenaline_sgl.proxy.request import request_info
from adrenaline_sgl.proxy.tokens import TokenCounter, load_counter

MESSAGES = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def smollm2(smollm2_dir):
    from transformers import AutoTokenizer

    return load_counter(str(smollm2_dir)), AutoTokenizer.from_pretrained(str(smollm2_dir))


def test_counts_are_the_served_tokenizers(smollm2):
    counter, tok = smollm2
    text = "def f(x):\n    return {k: v for k, v in x.items()}  # code tokenizes far from chars / 4"
    assert counter.text(text) == len(tok.encode(text)) != len(text) // 4
    out = tok.apply_chat_template(MESSAGES, tokenize=True, add_generation_prompt=True)
    templated = len(out["input_ids"] if hasattr(out, "keys") else out)
    assert templated > len(tok.encode(MESSAGES[0]["content"]))  # the template's role markers count
    info = request_info({"messages": MESSAGES, "max_tokens": 7}, "v1/chat/completions", counter)
    assert (info.prompt_tokens, info.max_new_tokens) == (templated, 7)
    batch = {"text": ["a", text], "sampling_params": {"max_new_tokens": 3}}
    assert request_info(batch, "generate", counter).prompt_tokens == len(tok.encode(text))  # the largest item
    assert request_info({"input_ids": [[1, 2], [3, 4, 5]]}, "generate", counter).prompt_tokens == 3
    assert request_info({"prompt": [text, "b"]}, "v1/completions", counter).prompt_tokens == len(tok.encode(text))
    odd = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]  # parts: the template may refuse
    assert counter.chat(odd) > 0


def test_without_a_tokenizer_the_estimate_is_chars_over_4_and_says_so(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="adrenaline_sgl.proxy.tokens"):
        missing = load_counter(str(tmp_path))  # a folder without tokenizer files
        none = load_counter(None)
    assert missing.tokenizer is None and none.tokenizer is None
    assert sum("characters / 4" in r.getMessage() for r in caplog.records) == 2
    assert TokenCounter().text("x" * 40) == 10 and TokenCounter().chat(MESSAGES) == len(MESSAGES[0]["content"]) // 4
    assert request_info({"text": "y" * 80}, "generate").prompt_tokens == 20


def test_the_proxy_loads_the_served_tokenizer_once_at_start(smollm2_dir, caplog):
    from adrenaline_sgl.proxy.config import ProxyConfig
    from adrenaline_sgl.proxy.server import Proxy

    with caplog.at_level(logging.INFO, logger="adrenaline_sgl.proxy.tokens"):
        proxy = Proxy(ProxyConfig(prefill=(("http://h:1", None),), decode=("http://h:2",), model_path=str(smollm2_dir)))
    assert proxy.tokens.tokenizer is not None and proxy.tokens.text("hello world") == 2
    assert proxy.tokens.vocab_size == 49152  # SmolLM2's config.json: token ids at or above it are refused
    assert proxy.tokens.context_tokens == 8192  # its max_position_embeddings
    assert [r.getMessage() for r in caplog.records] == [f"prompt tokens counted by the tokenizer of {smollm2_dir}"]


def test_a_chat_request_without_a_token_limit_counts_up_to_the_context():
    """SGLang decodes such a request until the context is full (max_new_tokens None): its full length, which
    capacity admission compares with the executor's room, is the context, not a default of 128."""
    counter = TokenCounter(context_tokens=1000)
    info = request_info({"messages": [{"role": "user", "content": "x" * 40}]}, "v1/chat/completions", counter)
    assert (info.prompt_tokens, info.max_seq_tokens) == (10, 1000)
    assert request_info({"messages": MESSAGES, "max_tokens": 7}, "v1/chat/completions", counter).max_new_tokens == 7
