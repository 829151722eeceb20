"""Body handling for one proxied request: validation, the bootstrap fields, the offload mark.

Same wire protocol as SGLang's mini load balancer (`sglang_router/mini_lb.py`): `bootstrap_host`,
`bootstrap_port`, `bootstrap_room` are added (lists for a batched /generate), and the same body goes to the
prefill and the decode instance. The decision travels in the request's custom params (keys in
`adrenaline_sgl.protocol`), which SGLang carries to `req.sampling_params.custom_params` on both instances:
`sampling_params.custom_params` for /generate, the top-level `custom_params` for the OpenAI endpoints.
"""

from __future__ import annotations

import copy
import json
import random

from adrenaline_sgl.protocol import EXECUTOR_KEY, OFFLOAD_KEY
from adrenaline_sgl.proxy.decide import RequestInfo
from adrenaline_sgl.proxy.tokens import TokenCounter

DEFAULT_MAX_NEW_TOKENS = 128  # SGLang's default when a request does not say
MAX_DEPTH = 64  # nesting of arrays and objects a request may have (tool schemas stay well under it)
_ESTIMATE = TokenCounter()  # characters / 4


class BadRequest(ValueError):
    """A malformed request: answered with HTTP 400 and a JSON error naming the field."""


def parse_body(raw: bytes) -> object:
    """The request's JSON, nested at most `MAX_DEPTH` deep. Why here: deeper bodies made the proxy's own
    copies and checks recurse until Python's limit (HTTP 500 and 139 KB of traceback for a 1.9 KB request)."""
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadRequest(f"request body is not valid JSON: {err}") from None
    except RecursionError:
        raise BadRequest(f"request body: JSON nested deeper than {MAX_DEPTH} levels") from None
    _check_depth(body)
    return body


def _check_depth(body: object) -> None:
    """Iterative (a recursive check would fail the way it guards against)."""
    stack = [(body, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict):
            children = item.values()
        elif isinstance(item, list):
            children = item
        else:
            continue
        if depth > MAX_DEPTH:
            raise BadRequest(f"request body: JSON nested deeper than {MAX_DEPTH} levels")
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_ids(ids: list, name: str, vocab_size: int | None) -> None:
    """A flat, non-empty list of token ids in [0, vocab_size). Why: SGLang does not check them, and a negative or
    out-of-vocabulary id fails its embedding lookup inside the scheduler (IndexError: the prefill server dies)."""
    if not ids:
        raise BadRequest(f"field '{name}': expected a non-empty list of token ids")
    for i, token in enumerate(ids):
        if not _is_int(token):
            raise BadRequest(f"field '{name}[{i}]': expected an integer token id, got {_short(token)}")
        if token < 0 or (vocab_size is not None and token >= vocab_size):
            top = f"{vocab_size - 1} (the served model's vocabulary)" if vocab_size is not None else "..."
            raise BadRequest(f"field '{name}[{i}]': token id {token} is out of range 0..{top}")


def _check_prompt(value, name: str, vocab_size: int | None) -> None:
    """`text`/`prompt` (a string or a non-empty list of strings) or token ids (a list of ids or of lists)."""
    if isinstance(value, str):
        return
    if not isinstance(value, list) or not value:
        raise BadRequest(f"field '{name}': expected a string, a list of strings or a list of token ids, "
                         f"got {_short(value)}")  # fmt: skip
    if isinstance(value[0], str):
        for i, item in enumerate(value):
            if not isinstance(item, str):
                raise BadRequest(f"field '{name}[{i}]': expected a string (the list is a batch of texts), "
                                 f"got {_short(item)}")  # fmt: skip
    elif isinstance(value[0], list):
        for i, item in enumerate(value):
            if not isinstance(item, list):
                raise BadRequest(f"field '{name}[{i}]': expected a list of token ids (the list is a batch), "
                                 f"got {_short(item)}")  # fmt: skip
            _check_ids(item, f"{name}[{i}]", vocab_size)
    else:
        _check_ids(value, name, vocab_size)


def _short(value) -> str:
    """A value for an error message: its type and at most 40 characters of it."""
    text = repr(value)
    return f"{type(value).__name__} {text[:40]}{'...' if len(text) > 40 else ''}"


def _batch_size(body: dict) -> int | None:
    """Mini-LB's rule: a list `text` or a list of lists `input_ids` is a batch."""
    text = body.get("text")
    if text is not None:
        return None if isinstance(text, str) else len(text)
    ids = body.get("input_ids")
    if ids:
        return None if isinstance(ids[0], int) else len(ids)
    return None


def _check_types(body: dict, endpoint: str, vocab_size: int | None = None) -> None:
    if endpoint == "generate":
        if body.get("text") is None and body.get("input_ids") is None:
            raise BadRequest("field 'text' or 'input_ids' is required")
        text = body.get("text")
        if text is not None:
            if not isinstance(text, (str, list)) or (isinstance(text, list) and not text):
                raise BadRequest("field 'text': expected a string or a non-empty list of strings")
            if isinstance(text, list):
                for i, item in enumerate(text):
                    if not isinstance(item, str):
                        raise BadRequest(f"field 'text[{i}]': expected a string, got {_short(item)}")
        ids = body.get("input_ids")
        if ids is not None:
            if not isinstance(ids, list) or not ids or isinstance(ids[0], str):
                raise BadRequest("field 'input_ids': expected a non-empty list of token ids (or of lists)")
            _check_prompt(ids, "input_ids", vocab_size)
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
        if endpoint == "v1/chat/completions":
            if not isinstance(body["messages"], list) or not body["messages"]:
                raise BadRequest("field 'messages': expected a non-empty list")
            for i, message in enumerate(body["messages"]):
                if not isinstance(message, dict):
                    raise BadRequest(f"field 'messages[{i}]': expected an object, got {_short(message)}")
        else:
            _check_prompt(body["prompt"], "prompt", vocab_size)
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
    _check_types(body, endpoint, tokens.vocab_size)
    if samples(body, endpoint) > 1:
        # SGLang's PD mode gives every sample of a request one bootstrap room: decode waits for KV that never
        # comes (a hang, with or without offload); refused here instead (issue 18 defect 2)
        raise BadRequest("field 'n': more than one sample per request is not supported in PD disaggregation "
                         "(SGLang gives the samples one KV hand-off); send n separate requests")
    if endpoint == "generate":
        prompt = tokens.prompt(body["input_ids"] if body.get("input_ids") is not None else body["text"])
        sp = body.get("sampling_params")
        items = [item or {} for item in (sp if isinstance(sp, list) else [sp])]
        new = max((_int_field(body, "sampling_params.max_new_tokens", i.get("max_new_tokens")) or 0) for i in items)
    else:
        prompt = tokens.chat(body["messages"]) if endpoint == "v1/chat/completions" else tokens.prompt(body["prompt"])
        new = _int_field(body, "max_tokens", body.get("max_completion_tokens", body.get("max_tokens"))) or 0
        if not new and endpoint == "v1/chat/completions" and tokens.context_tokens:
            # SGLang then decodes until the context is full: that is the length its KV may reach
            new = max(1, tokens.context_tokens - prompt)
    return RequestInfo(prompt_tokens=prompt, max_new_tokens=new or DEFAULT_MAX_NEW_TOKENS)


def samples(body: dict, endpoint: str) -> int:
    """`n`: how many samples each prompt of the request asks for (a valid body)."""
    if endpoint == "generate":
        sp = body.get("sampling_params")
        items = [item or {} for item in (sp if isinstance(sp, list) else [sp])]
        return max((_int_field(body, "sampling_params.n", item.get("n")) or 1) for item in items)
    return _int_field(body, "n", body.get("n")) or 1


def sequences(body: dict, endpoint: str) -> int:
    """How many sequences the request decodes, each with its own KV: the batch size times `n` (a valid body)."""
    if endpoint == "generate":
        batch = _batch_size(body) or 1
    else:
        prompt = body.get("prompt")
        listed = endpoint == "v1/completions" and isinstance(prompt, list) and prompt and not _is_int(prompt[0])
        batch = len(prompt) if listed else 1
    return batch * samples(body, endpoint)


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
