"""Request bodies the phases send: a seeded mix of valid requests, and the malformed ones of issue 18.

Prompts are short (the demo runs on CPU); `max_new_tokens` is small except where a phase needs long decodes.
Every valid body sets `ignore_eos` where the length matters (the disconnect and long phases)."""

from __future__ import annotations

import json
import random

from adrenaline_sgl.tools.chaos.traffic import Call

PROMPTS = ("The capital of France is", "Water boils at a temperature of", "A haiku about the sea:",
           "def fibonacci(n):", "The three primary colors are", "Once upon a time, a small robot",
           "To make a cup of tea, first", "The largest planet in the solar system is")  # fmt: skip
KINDS = ("generate", "generate-stream", "chat", "chat-stream", "batch")


def generate(prompt: str, max_new_tokens: int, stream: bool = False, ignore_eos: bool = False) -> dict:
    return {"text": prompt, "stream": stream,
            "sampling_params": {"temperature": 0, "max_new_tokens": max_new_tokens, "ignore_eos": ignore_eos}}


def chat(prompt: str, max_tokens: int, stream: bool = False, n: int | None = None) -> dict:
    body = {"model": "default", "messages": [{"role": "user", "content": prompt}], "temperature": 0,
            "max_tokens": max_tokens, "stream": stream}  # fmt: skip
    if n is not None:
        body.update(n=n, temperature=0.7)  # several samples of one prompt
    return body


def valid_call(case: str, kind: str, prompt: str, max_new_tokens: int) -> Call:
    if kind == "generate":
        return Call(case, "/generate", generate(prompt, max_new_tokens))
    if kind == "generate-stream":
        return Call(case, "/generate", generate(prompt, max_new_tokens, stream=True))
    if kind == "chat":
        return Call(case, "/v1/chat/completions", chat(prompt, max_new_tokens))
    if kind == "chat-stream":
        return Call(case, "/v1/chat/completions", chat(prompt, max_new_tokens, stream=True))
    if kind == "batch":  # a batched /generate: a list of texts, one answer each
        body = generate(prompt, max_new_tokens)
        body["text"] = [prompt, PROMPTS[(PROMPTS.index(prompt) + 1) % len(PROMPTS)]]
        return Call(case, "/generate", body)
    raise ValueError(f"unknown kind {kind!r}; expected one of {KINDS}")


def basics(prefix: str, max_new_tokens: int = 8) -> list[Call]:
    """One of each kind."""
    return [valid_call(f"{prefix}/{kind}", kind, PROMPTS[i], max_new_tokens) for i, kind in enumerate(KINDS)]


def mix(prefix: str, count: int, rng: random.Random, max_new_tokens: tuple[int, int] = (4, 24)) -> list[Call]:
    """`count` valid calls of random kinds, prompts and lengths; at least one stream in every 4 calls (the
    hang detector's progress signal under load, see traffic.py)."""
    calls = []
    for i in range(count):
        kind = rng.choice(KINDS) if i % 4 else rng.choice(("generate-stream", "chat-stream"))
        calls.append(valid_call(f"{prefix}/{kind}", kind, rng.choice(PROMPTS), rng.randint(*max_new_tokens)))
    return calls


def parallel_samples(prefix: str) -> list[Call]:
    """`n: 2` on both endpoints, streamed and not (issue 18 defect 2): refused with a 400 at the proxy (SGLang's
    PD mode gives the samples one bootstrap room, and decode waited for KV that never came)."""
    gen = generate(PROMPTS[0], 8)
    gen["sampling_params"].update(n=2, temperature=0.7)
    gen_stream = dict(gen, stream=True)
    return [Call(f"{prefix}/chat-n2", "/v1/chat/completions", chat(PROMPTS[1], 8, n=2), expect="400"),
            Call(f"{prefix}/chat-n2-stream", "/v1/chat/completions", chat(PROMPTS[2], 8, stream=True, n=2),
                 expect="400"),
            Call(f"{prefix}/generate-n2", "/generate", gen, expect="400"),
            Call(f"{prefix}/generate-n2-stream", "/generate", gen_stream, expect="400")]  # fmt: skip


def _nested(depth: int) -> dict:
    inner: object = 1
    for _ in range(depth):
        inner = {"a": inner}
    return inner


def _raw(obj) -> bytes:
    return json.dumps(obj).encode()


# name -> (path, body, method, expected status). Bodies are bytes, sent as they are.
MALFORMED: dict[str, tuple[str, bytes, str, str]] = {
    "not-json": ("/generate", b"{not json", "POST", "400"),
    "json-array-body": ("/generate", b"[1, 2]", "POST", "400"),
    "empty-object": ("/generate", b"{}", "POST", "400"),
    "text-number": ("/generate", _raw({"text": 5}), "POST", "400"),
    "text-list-with-a-number": ("/generate", _raw({"text": ["a", 1]}), "POST", "400"),
    "input-ids-empty": ("/generate", _raw({"input_ids": []}), "POST", "400"),
    "input-ids-mixed-list": ("/generate", _raw({"input_ids": [[1, 2], 3]}), "POST", "400"),
    "input-ids-strings": ("/generate", _raw({"input_ids": ["a", "b"]}), "POST", "400"),
    "sampling-params-string": ("/generate", _raw({"text": "x", "sampling_params": "greedy"}), "POST", "400"),
    "max-new-tokens-negative": ("/generate", _raw({"text": "x", "sampling_params": {"max_new_tokens": -3}}),
                                "POST", "400"),
    "max-new-tokens-string": ("/generate", _raw({"text": "x", "sampling_params": {"max_new_tokens": "9"}}),
                              "POST", "400"),
    "temperature-negative": ("/generate", _raw({"text": "x", "sampling_params": {"temperature": -1}}), "POST", "400"),
    "custom-params-list": ("/generate", _raw({"text": "x", "sampling_params": {"custom_params": [1]}}),
                           "POST", "400"),
    "100k-deep-json": ("/generate", b"[" * 100_000 + b"]" * 100_000, "POST", "400"),
    "900-deep-field": ("/generate", _raw({"text": "x", "sampling_params": {"custom_params": _nested(900)}}),
                       "POST", "400"),
    "prompt-over-context": ("/generate", _raw({"text": "hello " * 20_000, "sampling_params": {"max_new_tokens": 4}}),
                            "POST", "400"),
    "chat-messages-string": ("/v1/chat/completions", _raw({"messages": "hi"}), "POST", "400"),
    "chat-messages-missing": ("/v1/chat/completions", _raw({"model": "default"}), "POST", "400"),
    "chat-message-without-content": ("/v1/chat/completions", _raw({"messages": [{"role": "user"}]}), "POST", "400"),
    "chat-max-tokens-negative": ("/v1/chat/completions",
                                 _raw({"messages": [{"role": "user", "content": "hi"}], "max_tokens": -1}),
                                 "POST", "400"),
    "unknown-path": ("/no/such/path", b"{}", "POST", "404"),
    "wrong-method": ("/generate", b"", "GET", "405"),
}

# Token ids SGLang does not check: its prefill forward fails on them (issue 18 defect 10).
MALFORMED_IDS: dict[str, tuple[str, bytes, str, str]] = {
    "input-ids-negative": ("/generate", _raw({"input_ids": [1, -5, 2], "sampling_params": {"max_new_tokens": 2}}),
                           "POST", "400"),
    "input-ids-out-of-vocabulary": ("/generate", _raw({"input_ids": [1, 50_000_000, 2],
                                                       "sampling_params": {"max_new_tokens": 2}}), "POST", "400"),
}


def malformed(prefix: str, table: dict[str, tuple[str, bytes, str, str]]) -> list[Call]:
    return [Call(f"{prefix}/{name}", path, body, method, expect)
            for name, (path, body, method, expect) in table.items()]  # fmt: skip
