"""Build `sim/data/sharegpt_multiturn_llama2.csv`: one row per ShareGPT answer, its history as the prompt.

Why: the paper's calibration data for Llama-2 7B on ShareGPT (attention 69.5% of decode time at batch 80;
KV 57.3% of HBM) implies a mean in-flight context of about 1,100-1,200 tokens per decoding request, which
first-turn pairs (about 460) do not give and every answer with its conversation before it does
(`adrenaline_sgl.sim.workload_calibration`). This tool measures those lengths from the ShareGPT JSON.

Counting rule (`adrenaline_sgl.sim.datasets.answer_rows`, the one `--dataset-path` files go through too):
each turn is tokenized alone with the Llama-2 tokenizer, BOS included, as the first-turn sample counts it
(bench_serving's `tokenizer.encode(text)`). For every turn whose `from` is "gpt" at position k >= 1:
prompt = 1 (one BOS) + the sum over turns 0..k-1 of their counts without BOS (the turns concatenated with
no chat template or separator; Llama-2's chat template would add about 9 tokens per exchange); output =
that answer's count with BOS, as the first-turn file counts outputs. So an answer at k = 1 gets the
first-turn file's row.

Tokenizer: npm llama-tokenizer-js (LLaMA 1/2 SentencePiece BPE), run through node; checked on
"Hello, my dog is cute" before counting. The CSV keeps a deterministic row subsample (`--rows`, seed 0,
file order) to stay small in git.

    python -m adrenaline_sgl.tools.sharegpt_multiturn --sharegpt SHAREGPT.json --tokenizer-js NODE_MODULES_DIR \
        --out adrenaline_sgl/sim/data/sharegpt_multiturn_llama2.csv
"""

from __future__ import annotations

import argparse
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np

from adrenaline_sgl.sim.datasets import answer_rows

CHECK_TEXT = "Hello, my dog is cute"
CHECK_IDS = [1, 15043, 29892, 590, 11203, 338, 274, 1082]  # HF meta-llama/Llama-2-7b-hf's ids
SUBSAMPLE_SEED = 0

# Reads a JSON list of strings on stdin, writes their token counts (BOS included) as a JSON list, after the
# check; the module dir comes in argv so no path is baked in.
_NODE_COUNTER = r"""
const path = require('path');
const dir = process.argv[1];
import(path.join(dir, 'llama-tokenizer-js', 'llama-tokenizer.js')).then(m => {
  const tok = m.default;
  const check = tok.encode(%CHECK%).join(' ');
  if (check !== %IDS%) { console.error('tokenizer check failed: ' + check); process.exit(2); }
  let buf = '';
  process.stdin.on('data', d => buf += d);
  process.stdin.on('end', () => {
    const texts = JSON.parse(buf);
    process.stdout.write(JSON.stringify(texts.map(t => tok.encode(t).length)));
  });
});
"""


def conversation_rows(conversations: list, count: Callable[[list[str]], list[int]]) -> list[tuple[int, int]]:
    """Rows of every conversation in file order (`count` maps texts to token counts with BOS)."""
    turns = [t for c in conversations for t in c["conversations"]]
    counts = iter(count([t["value"] for t in turns]))
    rows = []
    for c in conversations:
        rows += answer_rows([(t["from"], next(counts)) for t in c["conversations"]], bos_tokens=1)
    return rows


def node_counter(modules_dir: Path) -> Callable[[list[str]], list[int]]:
    script = _NODE_COUNTER.replace("%CHECK%", json.dumps(CHECK_TEXT)).replace(
        "%IDS%", json.dumps(" ".join(map(str, CHECK_IDS)))
    )

    def count(texts: list[str]) -> list[int]:
        out = subprocess.run(["node", "-e", script, str(modules_dir)], input=json.dumps(texts), text=True,
                             capture_output=True, check=False)  # fmt: skip
        if out.returncode != 0:
            raise SystemExit(f"node tokenizer failed: {out.stderr.strip()[:400]}")
        return json.loads(out.stdout)

    return count


def subsample(rows: list[tuple[int, int]], n: int | None) -> list[tuple[int, int]]:
    """n rows drawn without replacement (seed SUBSAMPLE_SEED), kept in file order; all rows if n is None."""
    if n is None or n >= len(rows):
        return rows
    keep = np.sort(np.random.default_rng(SUBSAMPLE_SEED).choice(len(rows), size=n, replace=False))
    return [rows[i] for i in keep]


def stats(rows: list[tuple[int, int]], max_context: int | None) -> str:
    a = np.array(rows)
    if max_context is not None:
        a = a[(a[:, 0] >= 2) & (a[:, 1] >= 2) & (a.sum(1) <= max_context)]
    p, o = a[:, 0], a[:, 1]
    return (
        f"{len(a):,} rows: prompt mean {p.mean():.0f} median {np.median(p):.0f}, output mean {o.mean():.0f} "
        f"median {np.median(o):.0f}, in-flight mean (prompt + output / 2) {p.mean() + o.mean() / 2:.0f}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sharegpt", required=True, type=Path, help="ShareGPT JSON (list of {id, conversations})")
    ap.add_argument("--tokenizer-js", required=True, type=Path, help="node_modules dir with llama-tokenizer-js")
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--rows", type=int, default=None, help="deterministic subsample size (default: all rows)")
    ap.add_argument("--header", type=Path, help="text file of '# ' provenance lines to put above the CSV")
    args = ap.parse_args(argv)
    conversations = json.loads(args.sharegpt.read_text())
    rows = conversation_rows(conversations, node_counter(args.tokenizer_js))
    kept = subsample(rows, args.rows)
    print(f"all answers: {stats(rows, None)}\n  within 4096: {stats(rows, 4096)}")
    print(f"subsample:   {stats(kept, None)}\n  within 4096: {stats(kept, 4096)}")
    header = args.header.read_text() if args.header else ""
    body = "".join(f"{p},{o}\n" for p, o in kept)
    args.out.write_text(header + "prompt_tokens,output_tokens\n" + body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
