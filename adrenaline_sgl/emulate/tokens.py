"""The token ids the emulated model "generates": valid, deterministic, and ending where the workload says.

Token k (1-based) of a request is a pure function of the request's key and k: the same request gets the
same text on every run, on prefill (token 1) and on decode (tokens 2..), whatever the batch it runs in. The
key is the PD bootstrap room when there is one (prefill and decode share it; their SGLang rids differ),
else the rid. Ids are drawn from ordinary vocabulary entries (`FIRST_ID` up, clear of the special tokens a
tokenizer puts first), never EOS.

Length: SGLang stops a request at `max_new_tokens` (with `ignore_eos`, as the benchmarks send, that is the
output length). A workload that wants a request to end by itself before that sets
`sampling_params.custom_params["adrenaline_emulate_output_len"] = n`: token n is then EOS (which SGLang
honours unless `ignore_eos`).
"""

from __future__ import annotations

import hashlib

FIRST_ID = 1000  # clear of special and byte-fallback tokens in Llama/SmolLM2-style vocabularies
OUTPUT_LEN_KEY = "adrenaline_emulate_output_len"


def request_key(rid: str, bootstrap_room: int | None) -> int:
    """A stable 64-bit key of a request (the bootstrap room, else a hash of the rid)."""
    if bootstrap_room is not None:
        return int(bootstrap_room) & 0xFFFFFFFFFFFFFFFF
    return int.from_bytes(hashlib.blake2b(str(rid).encode(), digest_size=8).digest(), "little")


def token_id(key: int, index: int, vocab_size: int) -> int:
    """Token number `index` (1-based) of the request with `key`, in [FIRST_ID, vocab_size)."""
    if index < 1:
        raise ValueError(f"index must be >= 1 (1-based output position), got {index}")
    if vocab_size <= FIRST_ID + 1:
        raise ValueError(f"vocab_size must be > {FIRST_ID + 1}, got {vocab_size}")
    mixed = (key * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
    mixed ^= mixed >> 31
    return FIRST_ID + mixed % (vocab_size - FIRST_ID)


def next_token(key: int, index: int, vocab_size: int, eos_id: int | None, stop_at: int | None) -> int:
    """`token_id`, or `eos_id` when the workload asked this request to end at output token `stop_at`."""
    if stop_at is not None and eos_id is not None and index >= stop_at:
        return int(eos_id)
    return token_id(key, index, vocab_size)


def stop_at_of(custom_params) -> int | None:
    """The workload's requested output length (`OUTPUT_LEN_KEY` in custom_params), if any."""
    if not custom_params or OUTPUT_LEN_KEY not in custom_params:
        return None
    n = custom_params[OUTPUT_LEN_KEY]
    if not isinstance(n, int) or isinstance(n, bool) or n < 1:
        raise ValueError(f"custom_params[{OUTPUT_LEN_KEY!r}] must be an integer >= 1, got {n!r}")
    return n
