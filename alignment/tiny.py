"""The project's own tiny Llama: a SentencePiece BPE tokenizer trained locally and a model built from a config.

Both imitate Llama 2 (arXiv 2307.09288, sec. 2.2 and Llama 1's tokenizer): BPE with digits split and byte fallback;
RMSNorm, SwiGLU, RoPE and grouped-query attention. Tests and demos run on it because the hub is unreachable.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from alignment.chat import llama2_dialog_text
from alignment.data import load_dialogs
from alignment.paths import DEMO_SFT_DATA
from alignment.world import all_texts_for_tokenizer

# Chat markers become single tokens: the tiny model then spends its capacity on content, not on spelling
# "[INST]" piece by piece. Llama 2 itself spells them out; the template is the same text either way.
CHAT_SYMBOLS = ["[INST]", "[/INST]", "<<SYS>>", "<</SYS>>"]


@dataclass
class TinyLlamaSpec:
    vocab_size: int = 1024
    hidden_size: int = 64
    intermediate_size: int = 176
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    num_key_value_heads: int = 2  # grouped-query attention, as the 34B/70B models
    max_position_embeddings: int = 512
    seed: int = 0


def train_tokenizer(texts: list[str], output_dir: str | Path, vocab_size: int = 512):
    """Train a Llama-style SentencePiece BPE model and return it as a transformers tokenizer saved in output_dir."""
    # Only training a tokenizer needs it; the GPU check imports alignment.models (so this module) without it.
    import sentencepiece as spm  # noqa: PLC0415

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        prefix = str(Path(tmp) / "tokenizer")
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(texts),
            model_prefix=prefix,
            vocab_size=vocab_size,
            model_type="bpe",
            split_digits=True,
            byte_fallback=True,
            user_defined_symbols=CHAT_SYMBOLS,
            pad_id=0,
            unk_id=1,
            bos_id=2,
            eos_id=3,
            pad_piece="<pad>",
            character_coverage=1.0,
            normalization_rule_name="identity",
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            hard_vocab_limit=False,
            num_threads=2,
            minloglevel=2,
        )
        spm_dir = Path(tmp) / "hf"
        spm_dir.mkdir()
        shutil.copy(prefix + ".model", spm_dir / "tokenizer.model")
        (spm_dir / "tokenizer_config.json").write_text(
            json.dumps(
                {
                    "tokenizer_class": "LlamaTokenizer",
                    "bos_token": "<s>",
                    "eos_token": "</s>",
                    "unk_token": "<unk>",
                    "pad_token": "<pad>",
                    "add_bos_token": True,
                    "add_eos_token": False,
                    "legacy": False,
                }
            )
        )
        tokenizer = AutoTokenizer.from_pretrained(spm_dir)
        tokenizer.save_pretrained(output_dir)
    return tokenizer


def init_llama(tokenizer, spec: TinyLlamaSpec):
    """A randomly initialised (seeded) Llama of the given size for this tokenizer."""
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        rms_norm_eps=1e-5,
        hidden_act="silu",
        tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(spec.seed)
    model = LlamaForCausalLM(config)
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def build_tiny_llama(output_dir: str | Path, texts: list[str], spec: TinyLlamaSpec | None = None):
    """Train the tokenizer on `texts`, build a randomly initialised Llama and save both (safetensors)."""
    spec = spec or TinyLlamaSpec()
    output_dir = Path(output_dir)
    tokenizer = train_tokenizer(texts, output_dir, spec.vocab_size)
    model = init_llama(tokenizer, spec)
    model.save_pretrained(output_dir, safe_serialization=True)
    (output_dir / "tiny_llama_spec.json").write_text(json.dumps(asdict(spec), indent=2))
    return model, tokenizer


def default_tokenizer_texts() -> list[str]:
    """Text covering everything the tiny presets train on: the shipped demonstrations and the default world."""
    texts = []
    if DEMO_SFT_DATA.exists():
        texts += [llama2_dialog_text(d) for d in load_dialogs(str(DEMO_SFT_DATA))]
    texts += list(all_texts_for_tokenizer())
    return texts
