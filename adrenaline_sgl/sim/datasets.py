"""Real dataset files to (prompt_len, output_len) token counts for the simulator.

Formats, chosen by the file suffix:
- `.json`   ShareGPT: a list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]};
            the first two turns make one request, as in SGLang's bench_serving. Entries with fewer than two
            turns are skipped. For workload `sharegpt_multiturn` every answer makes one request instead,
            the conversation before it as its prompt (`answer_rows`).
- `.jsonl`  OpenThoughts (one JSON object a line) and `.parquet` (the Hugging Face dump of the same rows):
            "conversations" (from/value or role/content), "messages" (role/content), or the
            problem / deepseek_reasoning + deepseek_solution columns of OpenThoughts-114k's metadata config.
- `.csv`    Azure LLM inference trace: `num_prefill_tokens,num_decode_tokens` already in tokens.

Text is counted with a local Hugging Face tokenizer directory when given (no download: local files only);
otherwise with the proxy `ceil(chars / 4)` (about 4 characters per token for English text with Llama-2's
tokenizer; OpenAI's rule of thumb). Every failure is one line naming the file and the problem.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

CHARS_PER_TOKEN = 4.0
ANSWER_ROLES = ("gpt", "assistant")  # ShareGPT's `from`, and `role` in the messages format
MULTITURN = "sharegpt_multiturn"  # the workload whose dataset rows are every answer with its history


def answer_rows(turns: Sequence[tuple[str, int]], bos_tokens: int = 0) -> list[tuple[int, int]]:
    """(prompt, output) token counts of every answer of one conversation, given its turns as (role, count).

    An answer is a turn whose role is in ANSWER_ROLES at position k >= 1. Its prompt is the turns before it
    concatenated with no chat template or separator: the sum of their counts; its output is its own count.
    `bos_tokens` (0 or 1) is how many tokens of each count are a BOS (counts taken as `tokenizer.encode(text)`
    with special tokens): the prompt then carries one BOS, not one per turn (an empty turn counts 0 tokens).
    """
    if bos_tokens not in (0, 1):
        raise ValueError(f"bos_tokens must be 0 or 1, got {bos_tokens!r}")
    rows, history = [], 0  # history: tokens of the turns so far, without BOS
    for k, (role, count) in enumerate(turns):
        if count < 0:
            raise ValueError(f"turn {k}: a token count is >= 0, got {count}")
        if k >= 1 and role in ANSWER_ROLES:
            rows.append((bos_tokens + history, count))
        history += max(count - bos_tokens, 0)
    return rows


def _fail(path: Path, why: str) -> ValueError:
    return ValueError(f"malformed dataset file {path}: {why}")


def token_counter(tokenizer: str | None) -> Callable[[str], int]:
    """A text -> token count function: a local HF tokenizer, or the chars/4 proxy when None."""
    if tokenizer is None:
        return lambda text: max(1, math.ceil(len(text) / CHARS_PER_TOKEN))
    if not Path(tokenizer).exists():
        raise ValueError(f"tokenizer={tokenizer!r} is not a local directory (downloads are not allowed)")
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer, local_files_only=True)
    return lambda text: len(tok.encode(text, add_special_tokens=False))


def _turn_role(turn) -> str:
    return str(turn.get("from", turn.get("role", ""))) if isinstance(turn, dict) else ""  # _turn_text checks


def _turn_text(turn, path: Path, where: str) -> str:
    if not isinstance(turn, dict):
        raise _fail(path, f"{where}: a turn is {type(turn).__name__}, expected an object")
    for key in ("value", "content"):
        if isinstance(turn.get(key), str):
            return turn[key]
    raise _fail(path, f"{where}: a turn has no string 'value' or 'content'")


def _turns_of_row(row, path: Path, where: str) -> list | None:
    """The turns of a conversation row, None when the row has no 'conversations' or 'messages' field."""
    if not isinstance(row, dict):
        raise _fail(path, f"{where}: expected a JSON object, got {type(row).__name__}")
    turns = row.get("conversations", row.get("messages"))
    if turns is None:
        return None
    if not isinstance(turns, list | tuple) and not hasattr(turns, "tolist"):
        raise _fail(path, f"{where}: 'conversations' is not a list")
    return list(turns.tolist() if hasattr(turns, "tolist") else turns)


def _pair_from_row(row, path: Path, where: str) -> tuple[str, str] | None:
    """(prompt text, output text) of one dataset row, None when it has fewer than two turns."""
    turns = _turns_of_row(row, path, where)
    if turns is not None:
        if len(turns) < 2:
            return None
        return _turn_text(turns[0], path, where), _turn_text(turns[1], path, where)
    if isinstance(row.get("problem"), str):
        answer = (row.get("deepseek_reasoning") or "") + (row.get("deepseek_solution") or "")
        return row["problem"], answer
    raise _fail(path, f"{where}: no 'conversations', 'messages' or 'problem' field")


def _rows_json(path: Path) -> Iterable[tuple[str, object]]:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise _fail(path, f"not valid JSON ({err})") from None
    if not isinstance(data, list):
        raise _fail(path, f"expected a JSON list of conversations, got {type(data).__name__}")
    return ((f"entry {i}", row) for i, row in enumerate(data))


def _rows_jsonl(path: Path) -> Iterable[tuple[str, object]]:
    rows = []
    with path.open() as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append((f"line {lineno}", json.loads(line)))
            except json.JSONDecodeError as err:
                raise _fail(path, f"line {lineno} is not valid JSON ({err.msg})") from None
    return rows


def _rows_parquet(path: Path) -> Iterable[tuple[str, object]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ValueError(f"reading {path} needs pyarrow (pip install pyarrow)") from None
    try:
        table = pq.read_table(path)
    except Exception as err:  # pyarrow raises several types for a bad file
        raise _fail(path, f"not a readable parquet file ({type(err).__name__})") from None
    return ((f"row {i}", row) for i, row in enumerate(table.to_pylist()))


def _lengths_csv(path: Path) -> tuple[np.ndarray, np.ndarray]:
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        need = {"num_prefill_tokens", "num_decode_tokens"}
        if reader.fieldnames is None or not need <= set(reader.fieldnames):
            raise _fail(path, f"a trace CSV needs columns {sorted(need)}, found {reader.fieldnames}")
        prompt, output = [], []
        for lineno, row in enumerate(reader, 2):
            try:
                prompt.append(int(float(row["num_prefill_tokens"])))
                output.append(int(float(row["num_decode_tokens"])))
            except (TypeError, ValueError):
                raise _fail(path, f"line {lineno}: token counts are not numbers") from None
    return np.asarray(prompt, dtype=np.int64), np.asarray(output, dtype=np.int64)


_READERS = {".json": _rows_json, ".jsonl": _rows_jsonl, ".parquet": _rows_parquet}


def load_lengths(path: str | Path, workload: str, tokenizer: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(prompt_len [k], output_len [k]) token counts of every usable request in a dataset file."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"dataset file not found: {path}")
    if path.suffix == ".csv":
        prompt, output = _lengths_csv(path)
    elif path.suffix in _READERS:
        count = token_counter(tokenizer)
        pairs = []
        for where, row in _READERS[path.suffix](path):
            if workload == MULTITURN:
                turns = _turns_of_row(row, path, where)
                if turns is None:
                    raise _fail(path, f"{where}: workload {workload!r} needs a 'conversations' or 'messages' field")
                pairs += answer_rows([(_turn_role(t), count(_turn_text(t, path, where))) for t in turns])
            elif (pair := _pair_from_row(row, path, where)) is not None:
                pairs.append((count(pair[0]), count(pair[1])))
        prompt = np.asarray([p for p, _ in pairs], dtype=np.int64)
        output = np.asarray([o for _, o in pairs], dtype=np.int64)
    else:
        raise ValueError(f"dataset file {path}: unknown suffix {path.suffix!r}; valid: .json .jsonl .parquet .csv")
    if len(prompt) == 0:
        raise _fail(path, f"no usable request for workload {workload!r}")
    return prompt, output
