"""Prompt tokens of a request as the served model counts them: its Hugging Face tokenizer (loaded once, at
start, from `--model-path`), chat messages through its chat template. Without a tokenizer: characters / 4.

Why exact: admission checks the offloaded KV at each request's maximum length (C1) and the offloaded/local
token ratio (C2); characters / 4 is an English-prose estimate that can be off 2x for code or other scripts.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


class TokenCounter:
    """`tokenizer=None`: the characters / 4 estimate. `vocab_size`: the served model's embedding rows (token ids
    must be below it; None: not known, only negative ids are refused). `context_tokens`: its context length (a
    chat request without a token limit may decode up to it; None: not known)."""

    def __init__(self, tokenizer=None, vocab_size: int | None = None, context_tokens: int | None = None):
        self.tokenizer = tokenizer
        self.vocab_size = vocab_size
        self.context_tokens = context_tokens

    def text(self, text: str) -> int:
        return len(text) // 4 if self.tokenizer is None else len(self.tokenizer.encode(text))

    def prompt(self, prompt) -> int:
        """A /v1/completions or /generate prompt: text, token ids, or a batch of either (its largest item)."""
        if isinstance(prompt, str):
            return self.text(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            return len(prompt)
        if isinstance(prompt, list):
            return max((self.prompt(p) for p in prompt), default=0)
        return len(str(prompt)) // 4

    def chat(self, messages: list) -> int:
        """Chat messages as the server sees them: through the tokenizer's chat template when it has one."""
        if self.tokenizer is not None and getattr(self.tokenizer, "chat_template", None):
            try:
                out = self.tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True)
                return len(out["input_ids"] if hasattr(out, "keys") else out)
            except Exception as err:  # noqa: BLE001 (a message the template rejects: the server answers it)
                logger.debug("chat template failed (%s): counting the message texts", err)
        texts = [m.get("content") if isinstance(m, dict) else m for m in messages]
        return self.text(" ".join(t if isinstance(t, str) else str(t) for t in texts))


def config_value(model_path: str, key: str) -> int | None:
    """A positive integer `key` of the checkpoint's `config.json` (top level, or its `text_config`), None when
    not there (`vocab_size`; `max_position_embeddings`, SGLang's context length unless --context-length says)."""
    try:
        config = json.loads((Path(model_path) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict):
        return None
    for part in (config, config.get("text_config") or {}):
        value = part.get(key) if isinstance(part, dict) else None
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return None


def load_counter(model_path: str | None) -> TokenCounter:
    """The served model's tokenizer (transformers) and vocabulary size, or the estimate with a warning when
    there is none."""
    if not model_path:
        logger.warning("no --model-path: prompt tokens are estimated as characters / 4, token ids are not checked "
                       "against the vocabulary")  # fmt: skip
        return TokenCounter()
    vocab, context = config_value(model_path, "vocab_size"), config_value(model_path, "max_position_embeddings")
    if vocab is None:
        logger.warning("no vocab_size in %s/config.json: token ids are not checked against the vocabulary",
                       model_path)  # fmt: skip
    try:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(model_path)
    except (ImportError, OSError, ValueError) as err:
        logger.warning("no tokenizer at %s (%s): prompt tokens are estimated as characters / 4", model_path, err)
        return TokenCounter(vocab_size=vocab, context_tokens=context)
    logger.info("prompt tokens counted by the tokenizer of %s", model_path)
    logger.debug("token ids checked against a vocabulary of %s", vocab)
    return TokenCounter(tokenizer, vocab, context)
