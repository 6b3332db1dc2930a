"""Stage 0 for the embedded world: pretrain a tiny base model on plain text with the method's settings.

arXiv 2307.09288, sec. 2.2: AdamW (0.9, 0.95), eps 1e-5, cosine schedule with warmup ending at
10% of the peak LR, weight decay 0.1, gradient clipping 1.0. The loss is on every token (no chat masking),
and documents are packed into the context, as in pretraining. TRL's SFTTrainer on a "text" column does
exactly this, so it is reused.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from datasets import Dataset
from transformers.trainer_utils import get_last_checkpoint
from trl import SFTConfig, SFTTrainer

from alignment.batching import accumulation_steps, world_size
from alignment.config import (
    AT_LEAST_ONE,
    FRACTION,
    NON_NEGATIVE,
    POSITIVE,
    DataError,
    RecipeError,
    config_to_dict,
    require_file,
)
from alignment.data import atomic_write_json, load_rows
from alignment.models import load_causal_lm, load_tokenizer
from alignment.tiny import TinyLlamaSpec, init_llama
from alignment.training import CpuBf16Mixin
from alignment.world import pretraining_corpus
from alignment.world.corpus import CORPUS_PREPROMPT_SHARE
from sft.trainer import COMPLETE_MARKER


@dataclass
class PretrainArguments:
    model_name_or_path: str = field(
        default="builtin:tiny-llama",
        metadata={"help": "Model (or, with from_scratch, the tokenizer) to start from."},
    )
    from_scratch: bool = field(default=True, metadata={"help": "Fresh random weights of the size below."})
    hidden_size: int = field(default=128, metadata={"range": AT_LEAST_ONE, "help": "Width of a from-scratch model."})
    intermediate_size: int = field(
        default=352, metadata={"range": AT_LEAST_ONE, "help": "SwiGLU width of a from-scratch model."}
    )
    num_hidden_layers: int = field(
        default=4, metadata={"range": AT_LEAST_ONE, "help": "Layers of a from-scratch model."}
    )
    num_attention_heads: int = field(default=4, metadata={"range": AT_LEAST_ONE, "help": "Query heads."})
    num_key_value_heads: int = field(
        default=2, metadata={"range": AT_LEAST_ONE, "help": "KV heads (grouped-query attention)."}
    )
    corpus: str = field(default="builtin:world", metadata={"help": "JSONL with a 'text' field, or builtin:world."})
    corpus_docs: int = field(
        default=20000, metadata={"range": AT_LEAST_ONE, "help": "Documents drawn from builtin:world."}
    )
    corpus_seed: int = field(default=0, metadata={"help": "Seed of the builtin:world corpus."})
    corpus_preprompt_share: float = field(
        default=CORPUS_PREPROMPT_SHARE,
        metadata={"range": FRACTION, "help": "builtin:world: share of transcripts after a safety system prompt."},
    )
    global_batch_size: int = field(
        default=32, metadata={"range": AT_LEAST_ONE, "help": "Effective batch in packed sequences."}
    )


@dataclass
class Llama2PretrainConfig(CpuBf16Mixin, SFTConfig):
    learning_rate: float = field(
        default=3e-3, metadata={"range": POSITIVE, "help": "Peak LR (tiny models need a large one)."}
    )
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Cosine to 10% of peak."})
    lr_scheduler_kwargs: dict | str | None = field(
        default_factory=lambda: {"min_lr_rate": 0.1}, metadata={"help": "Final LR = 10% of peak (pretraining)."}
    )
    warmup_steps: float = field(
        default=20, metadata={"range": NON_NEGATIVE, "help": "Linear warmup steps (2000 at 7B scale)."}
    )
    weight_decay: float = field(default=0.1, metadata={"range": NON_NEGATIVE, "help": "Weight decay 0.1."})
    adam_beta2: float = field(default=0.95, metadata={"range": FRACTION, "help": "AdamW beta2 0.95."})
    adam_epsilon: float = field(default=1e-5, metadata={"range": POSITIVE, "help": "AdamW eps 1e-5."})
    max_grad_norm: float = field(default=1.0, metadata={"range": NON_NEGATIVE, "help": "Gradient clipping 1.0."})
    num_train_epochs: float = field(default=1.0, metadata={"range": POSITIVE, "help": "Passes over the corpus."})
    max_length: int | None = field(default=256, metadata={"range": AT_LEAST_ONE, "help": "Packed sequence length."})
    packing: bool = field(default=True, metadata={"help": "Pack documents into full sequences."})
    packing_strategy: str = field(default="wrapped", metadata={"help": "Pretraining packs across documents."})
    completion_only_loss: bool | None = field(default=False, metadata={"help": "Loss on every token."})
    gradient_checkpointing: bool = field(default=False, metadata={"help": "Trade compute for memory."})
    save_steps: float = field(default=100, metadata={"range": POSITIVE, "help": "Steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"range": AT_LEAST_ONE, "help": "Checkpoints kept."})
    logging_steps: float = field(default=20, metadata={"range": POSITIVE, "help": "Steps between log lines."})
    report_to: list[str] | str | None = field(default="none", metadata={"help": "Trackers."})
    output_dir: str | None = field(default="runs/pretrain", metadata={"help": "Where the base model goes."})


def corpus_texts(args: PretrainArguments) -> list[str]:
    if args.corpus == "builtin:world":
        return pretraining_corpus(args.corpus_docs, args.corpus_seed, preprompt_share=args.corpus_preprompt_share)
    require_file(args.corpus, "corpus")
    texts = []
    for source, number, row in load_rows(args.corpus):
        if not isinstance(row.get("text"), str):
            raise DataError(f"{source}:{number}: missing field 'text'")
        texts.append(row["text"])
    return texts


def build_model(args: PretrainArguments, tokenizer):
    if not args.from_scratch:
        return load_causal_lm(args.model_name_or_path)
    spec = TinyLlamaSpec(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_hidden_layers,
        num_attention_heads=args.num_attention_heads,
        num_key_value_heads=args.num_key_value_heads,
        max_position_embeddings=1024,
        seed=0,
    )
    return init_llama(tokenizer, spec)


def run_pretrain(args: PretrainArguments, training_args: Llama2PretrainConfig) -> dict:
    if args.num_attention_heads % args.num_key_value_heads:
        raise RecipeError("num_attention_heads must be a multiple of num_key_value_heads")
    training_args.gradient_accumulation_steps = accumulation_steps(
        args.global_batch_size, training_args.per_device_train_batch_size, world_size()
    )
    output_dir = Path(training_args.output_dir)
    tokenizer = load_tokenizer(args.model_name_or_path)
    texts = corpus_texts(args)
    # Each document is a separate "<s> text </s>", as in pretraining; packing then fills the context.
    dataset = Dataset.from_dict({"text": texts})
    model = build_model(args, tokenizer)
    trainer = SFTTrainer(model=model, args=training_args, train_dataset=dataset, processing_class=tokenizer)
    last_checkpoint = get_last_checkpoint(str(output_dir)) if output_dir.is_dir() else None
    started = time.time()
    result = trainer.train(resume_from_checkpoint=last_checkpoint)
    if trainer.accelerator.is_main_process:
        trainer.accelerator.unwrap_model(trainer.model).save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
        summary = {
            "documents": len(texts),
            "parameters": sum(p.numel() for p in model.parameters()),
            "seconds": time.time() - started,
            "resumed_from": last_checkpoint,
            "metrics": dict(result.metrics),
            "config": config_to_dict(args),
        }
        atomic_write_json(output_dir / COMPLETE_MARKER, summary)
        return summary
    return {}
