"""Eight realistic chat prompts for the decode harness, tokenized with the model's own chat template."""

from __future__ import annotations

CHAT_PROMPTS: tuple[str, ...] = (
    "What is the capital of France?",
    "Write a haiku about the ocean at night.",
    "Explain in two sentences why the sky is blue.",
    "Give me three tips for staying focused while studying.",
    "How do I reverse a list in Python?",
    "What is the difference between weather and climate?",
    "Suggest a name for a friendly robot that helps in the kitchen.",
    "Summarize the plot of Romeo and Juliet in one paragraph.",
)


def chat_prompt_ids(tokenizer, count: int = 8) -> list[list[int]]:
    """Token ids of the first `count` prompts as single-turn user messages, ready for the assistant's turn."""
    if not 1 <= count <= len(CHAT_PROMPTS):
        raise ValueError(f"count must lie in [1, {len(CHAT_PROMPTS)}], got {count}")
    out = []
    for text in CHAT_PROMPTS[:count]:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True,
                                            tokenize=True)
        out.append(list(ids["input_ids"] if hasattr(ids, "keys") else ids))
    return out
