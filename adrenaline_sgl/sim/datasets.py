"""Real dataset files to (prompt_len, output_len) token counts for the simulator.

Formats, chosen by the file suffix:
- `.json`   ShareGPT: a list of {"conversations": [{"from": "human", "value": ...}, {"from": "gpt", ...}, ...]};
            the first two turns make one request, as in SGLang's bench_serving. Entries with fewer than two
            turns are skipped.
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
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np

CHARS_PER_TOKEN = 4.0


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


def _turn_text(turn, path: Path, where: str) -> str:
    if not isinstance(turn, dict):
        raise _fail(path, f"{where}: a turn is {type(turn).__name__}, expected an object")
    for key in ("value", "content"):
        if isinstance(turn.get(key), str):
            return turn[key]
    raise _fail(path, f"{where}: a turn has no string 'value' or 'content'")


def _pair_from_row(row, path: Path, where: str) -> tuple[str, str] | None:
    """(prompt text, output text) of one dataset row, None when it has fewer than two turns."""
    if not isinstance(row, dict):
        raise _fail(path, f"{where}: expected a JSON object, got {type(row).__name__}")
    turns = row.get("conversations", row.get("messages"))
    if turns is not None:
        if not isinstance(turns, list | tuple) and not hasattr(turns, "tolist"):
            raise _fail(path, f"{where}: 'conversations' is not a list")
        turns = list(turns.tolist() if hasattr(turns, "tolist") else turns)
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
        prompt_l, output_l = [], []
        for where, row in _READERS[path.suffix](path):
            pair = _pair_from_row(row, path, where)
            if pair is not None:
                prompt_l.append(count(pair[0]))
                output_l.append(count(pair[1]))
        prompt, output = np.asarray(prompt_l, dtype=np.int64), np.asarray(output_l, dtype=np.int64)
    else:
        raise ValueError(f"dataset file {path}: unknown suffix {path.suffix!r}; valid: .json .jsonl .parquet .csv")
    if len(prompt) == 0:
        raise _fail(path, f"no usable request for workload {workload!r}")
    return prompt, output
