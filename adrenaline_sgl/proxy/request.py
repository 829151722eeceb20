"""Body handling for one proxied request: validation, the bootstrap fields, the offload mark.

Same wire protocol as SGLang's mini load balancer (`sglang_router/mini_lb.py`): `bootstrap_host`,
`bootstrap_port`, `bootstrap_room` are added (lists for a batched /generate), and the same body goes to the
prefill and the decode instance. The decision travels in the request's custom params (keys in
`adrenaline_sgl.protocol`), which SGLang carries to `req.sampling_params.custom_params` on both instances:
`sampling_params.custom_params` for /generate, the top-level `custom_params` for the OpenAI endpoints.
"""

from __future__ import annotations

import copy
import random

from adrenaline_sgl.protocol import EXECUTOR_KEY, OFFLOAD_KEY
from adrenaline_sgl.proxy.decide import RequestInfo
from adrenaline_sgl.proxy.tokens import TokenCounter

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when a request does not say
_ESTIMATE = TokenCounter()  # characters / 4


class BadRequest(ValueError):
    """A malformed request: answered with HTTP 400 and a JSON error naming the field."""


def _batch_size(body: dict) -> int | None:
    """Mini-LB's rule: a list `text` or a list of lists `input_ids` is a batch."""
    text = body.get("text")
    if text is not None:
        return None if isinstance(text, str) else len(text)
    ids = body.get("input_ids")
    if ids:
        return None if isinstance(ids[0], int) else len(ids)
    return None


def _check_types(body: dict, endpoint: str) -> None:
    if endpoint == "generate":
        if body.get("text") is None and body.get("input_ids") is None:
            raise BadRequest("field 'text' or 'input_ids' is required")
        text = body.get("text")
        if text is not None and not isinstance(text, (str, list)):
            raise BadRequest("field 'text': expected a string or a list of strings")
        ids = body.get("input_ids")
        if ids is not None and (not isinstance(ids, list) or not ids):
            raise BadRequest("field 'input_ids': expected a non-empty list of token ids (or of lists)")
        sp = body.get("sampling_params")
        items = sp if isinstance(sp, list) else [sp]
        for item in items:
            if item is not None and not isinstance(item, dict):
                raise BadRequest("field 'sampling_params': expected an object (or a list of objects)")
            if item and item.get("custom_params") is not None and not isinstance(item["custom_params"], dict):
                raise BadRequest("field 'sampling_params.custom_params': expected an object")
    else:
        key = "messages" if endpoint == "v1/chat/completions" else "prompt"
        if body.get(key) is None:
            raise BadRequest(f"field '{key}' is required")
        if endpoint == "v1/chat/completions" and not isinstance(body["messages"], list):
            raise BadRequest("field 'messages': expected a list")
        if body.get("custom_params") is not None and not isinstance(body["custom_params"], dict):
            raise BadRequest("field 'custom_params': expected an object")


def _int_field(body: dict, name: str, value) -> int | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise BadRequest(f"field '{name}': expected a non-negative integer, got {value!r}")
    return value


def request_info(body: dict, endpoint: str, tokens: TokenCounter = _ESTIMATE) -> RequestInfo:
    """Validate the body and count its sizes (the largest item of a batch) with `tokens`."""
    if not isinstance(body, dict):
        raise BadRequest(f"request body: expected a JSON object, got {type(body).__name__}")
    _check_types(body, endpoint)
    if endpoint == "generate":
        prompt = tokens.prompt(body["input_ids"] if body.get("input_ids") is not None else body["text"])
        sp = body.get("sampling_params")
        items = [item or {} for item in (sp if isinstance(sp, list) else [sp])]
        new = max((_int_field(body, "sampling_params.max_new_tokens", i.get("max_new_tokens")) or 0) for i in items)
    else:
        prompt = tokens.chat(body["messages"]) if endpoint == "v1/chat/completions" else tokens.prompt(body["prompt"])
        new = _int_field(body, "max_tokens", body.get("max_completion_tokens", body.get("max_tokens"))) or 0
    return RequestInfo(prompt_tokens=prompt, max_new_tokens=new or DEFAULT_MAX_NEW_TOKENS)


def prepare(
    body: dict, endpoint: str, bootstrap_host: str, bootstrap_port: int | None, offload: bool, executor: str,
    rng: random.Random,
) -> dict:  # fmt: skip
    """The body both instances get: a deep copy with the bootstrap fields and the offload mark."""
    out = copy.deepcopy(body)
    n = _batch_size(out) if endpoint == "generate" else None
    if n is None:
        out.update(bootstrap_host=bootstrap_host, bootstrap_port=bootstrap_port,
                   bootstrap_room=rng.randint(0, 2**63 - 1))  # fmt: skip
    else:
        out.update(bootstrap_host=[bootstrap_host] * n, bootstrap_port=[bootstrap_port] * n,
                   bootstrap_room=[rng.randint(0, 2**63 - 1) for _ in range(n)])  # fmt: skip
    mark = {OFFLOAD_KEY: offload}
    if offload:
        mark[EXECUTOR_KEY] = executor
    if endpoint == "generate":
        sp = out.get("sampling_params")
        if sp is None:
            sp = out["sampling_params"] = {}
        if isinstance(sp, list):
            sp = out["sampling_params"] = [item if item is not None else {} for item in sp]
        targets = sp if isinstance(sp, list) else [sp]
    else:
        targets = [out]
    for item in targets:
        if item.get("custom_params") is None:
            item["custom_params"] = {}
        item["custom_params"].update(mark)
    return out
