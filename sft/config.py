"""SFT recipe fields. Paper defaults (arXiv 2307.09288, sec. 3.1): LR 2e-5, cosine, weight decay 0.1,
batch 64, 2 epochs, loss on answer tokens only."""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import SFTConfig

from alignment.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, POSITIVE
from alignment.training import CpuBf16Mixin


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default="builtin:tiny-llama",
        metadata={
            "help": "Hub id, local directory, .gguf file, or builtin:tiny-llama / builtin:smollm2-135m-instruct."
        },
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype when loading (float32, bfloat16)."})
    chat_format: str = field(
        default="llama2", metadata={"help": "llama2 ([INST] template) or model (tokenizer's own)."}
    )
    use_lora: bool = field(default=False, metadata={"help": "Train a LoRA adapter (peft) instead of all weights."})
    lora_r: int = field(default=16, metadata={"range": AT_LEAST_ONE, "help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"range": POSITIVE, "help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.05, metadata={"range": FRACTION, "help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Modules that get LoRA adapters (Llama names)."},
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "Save merged weights so later stages load a plain model."}
    )


@dataclass
class DataArguments:
    dataset_name: str = field(
        default="builtin:demo-sft",
        metadata={"help": "Local .jsonl/.json/.parquet, a hub dataset, or builtin:demo-sft (shipped demonstrations)."},
    )
    dataset_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    eval_fraction: float = field(
        default=0.0, metadata={"range": FRACTION, "help": "Share of rows held out for evaluation (seeded)."}
    )
    max_train_rows: int | None = field(
        default=None, metadata={"range": AT_LEAST_ONE, "help": "Cap on training rows (demos, smoke tests)."}
    )
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip and count bad rows instead of failing."})
    global_batch_size: int = field(
        default=64,
        metadata={"range": AT_LEAST_ONE, "help": "Effective batch (sec. 3.1: 64); accumulation is derived from it."},
    )


@dataclass
class Llama2SFTConfig(CpuBf16Mixin, SFTConfig):
    learning_rate: float = field(default=2e-5, metadata={"range": POSITIVE, "help": "Initial LR (sec. 3.1: 2e-5)."})
    lr_scheduler_type: str = field(default="cosine", metadata={"help": "Cosine schedule (sec. 3.1)."})
    weight_decay: float = field(default=0.1, metadata={"range": NON_NEGATIVE, "help": "Weight decay (sec. 3.1: 0.1)."})
    num_train_epochs: float = field(default=2.0, metadata={"range": POSITIVE, "help": "Epochs (sec. 3.1: 2)."})
    adam_beta2: float = field(
        default=0.95, metadata={"range": FRACTION, "help": "AdamW beta2 as in pretraining (0.95)."}
    )
    adam_epsilon: float = field(
        default=1e-5, metadata={"range": POSITIVE, "help": "AdamW eps as in pretraining (1e-5)."}
    )
    max_length: int | None = field(
        default=4096, metadata={"range": AT_LEAST_ONE, "help": "Sequence length (sec. 3.1: 4096)."}
    )
    packing: bool = field(default=True, metadata={"help": "Concatenate examples to fill the sequence (sec. 3.1)."})
    # TRL defaults gradient_checkpointing to True and transformers 5 warns on every run that sets the old name;
    # None on both leaves it off, and the old name still works (with its warning) when a recipe sets it.
    activation_checkpointing: bool | None = field(
        default=None, metadata={"help": "Trade compute for memory (off unless set)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."}
    )
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint every save_steps for resumption."})
    save_steps: float = field(default=50, metadata={"range": POSITIVE, "help": "Steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"range": AT_LEAST_ONE, "help": "Checkpoints kept."})
    logging_steps: float = field(default=5, metadata={"range": POSITIVE, "help": "Steps between log lines."})
    report_to: list[str] | str | None = field(
        default="none", metadata={"help": "Trackers (tensorboard, wandb, none)."}
    )
    output_dir: str | None = field(default="runs/sft", metadata={"help": "Where checkpoints and the model go."})
