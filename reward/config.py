"""Reward-model recipe: one dataclass, TRL's RewardConfig plus the model, data and mixing fields.

Paper defaults (arXiv 2307.09288, sec. 3.2.2): 1 epoch, max LR 1e-5, cosine decay to 10% of max, warmup 3% of
steps but at least 5, effective batch 512 pairs, AdamW as in pretraining (beta2 0.95, eps 1e-5, weight decay
0.1, clipping 1.0).

Data fields, for the pipeline that retrains R_h and R_s on "everything collected so far":
- `comparison_files`: files in the project's own schema (reward/data.py); their rows carry `kind`.
- `sources`: other files, each a mapping {path, format ("llama2-align" | "hh-rlhf" | "pku-saferlhf"), kind?,
  rating?, pool?, limit?}; `pool` names the mixing pool (default: the comparison's kind).
- `mixture_ratios` / `mixture_anchor` / `mixture_seed`: the mix of sec. 3.2.2 (see reward.data.mix_comparisons);
  left empty, the paper's mix for `reward_model` is used (DEFAULT_MIXTURES).
- `eval_fraction` of each source's prompts is held out (seeded, before mixing) and `eval_files` are added to
  the held-out set; evaluation covers all of it, per test set (kind).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from trl import RewardConfig

from alignment.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, OPEN_UNIT, POSITIVE, TOP_P
from alignment.training import CpuBf16Mixin

# sec. 3.2.2: R_h = all helpfulness data + an equal amount from safety and open-source data;
# R_s = all safety data (Meta Safety + Anthropic Harmless) mixed 90/10 with helpfulness data.
DEFAULT_MIXTURES: dict[str, dict[str, float]] = {
    "helpfulness": {"helpfulness": 0.5, "safety+open_source": 0.5},
    "safety": {"safety": 0.9, "helpfulness": 0.1},
}
REWARD_MODELS = tuple(DEFAULT_MIXTURES)


@dataclass
class Llama2RewardConfig(CpuBf16Mixin, RewardConfig):
    # Model
    model_name_or_path: str = field(
        default="builtin:tiny-llama",
        metadata={"help": "SFT/chat checkpoint to start from; its LM head is replaced by a scalar head (sec. 3.2.2)."},
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype when loading (float32, bfloat16)."})
    chat_format: str = field(
        default="llama2", metadata={"help": "llama2 ([INST] template) or model (tokenizer's own)."}
    )
    use_lora: bool = field(
        default=False, metadata={"help": "Train a LoRA adapter (plus the scalar head) instead of all weights."}
    )
    lora_r: int = field(default=16, metadata={"range": AT_LEAST_ONE, "help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"range": POSITIVE, "help": "LoRA scaling alpha."})
    lora_dropout: float = field(default=0.0, metadata={"range": FRACTION, "help": "LoRA dropout."})
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Modules that get LoRA adapters (Llama names)."},
    )
    train_top_layers: int | None = field(
        default=None,
        metadata={
            "range": NON_NEGATIVE,
            "help": "Train only the top N decoder layers (+ final norm, scalar head); 0 = the head alone; "
            "None = all, as the paper. "
            "A compute saver for CPU runs: no backward pass through the frozen layers.",
        },
    )
    likelihood_feature: bool = field(
        default=False,
        metadata={
            "help": "Add scale * the answer's log-likelihood under the model's own next-token head (kept from the "
            "checkpoint) to the scalar head's score; the scale is learnt. For small models, whose knowledge is "
            "in their next-token predictions, not in the last token's features (reward/scoring.py). Not in the "
            "paper."
        },
    )
    # Data
    reward_model: str = field(
        default="helpfulness", metadata={"help": "Which RM: helpfulness (R_h) or safety (R_s); picks the default mix."}
    )
    comparison_files: list[str] = field(
        default_factory=list, metadata={"help": "Comparison files in the project's own schema (reward/data.py)."}
    )
    sources: list[dict] = field(
        default_factory=list,
        metadata={"help": "Other comparison files: {path, format, kind?, rating?, pool?, limit?} each."},
    )
    eval_files: list[str] = field(
        default_factory=list,
        metadata={"help": "Held-out comparison files (own schema), evaluated but never trained on."},
    )
    eval_fraction: float = field(
        default=0.05,
        metadata={"range": FRACTION, "help": "Share of each source's prompts held out for evaluation (seeded)."},
    )
    mixture_ratios: dict = field(
        default_factory=dict,
        metadata={"help": "Pool -> share of the training mix ('a+b' joins pools); {} = paper's mix."},
    )
    mixture_anchor: str = field(default="", metadata={"help": "Pool used in full; '' = the reward_model's own kind."})
    mixture_seed: int = field(default=0, metadata={"help": "Seed of the split and the mix."})
    max_train_pairs: int | None = field(
        default=None, metadata={"range": AT_LEAST_ONE, "help": "Cap on mixed training pairs (demos, benchmarks)."}
    )
    max_eval_pairs: int | None = field(
        default=None, metadata={"range": AT_LEAST_ONE, "help": "Cap on held-out pairs evaluated."}
    )
    skip_bad_rows: bool = field(default=False, metadata={"help": "Skip and count malformed rows instead of failing."})
    margin: str = field(default="small", metadata={"help": "Margin table m(r): none, small or large (Table 27)."})
    safety_threshold: float = field(
        default=0.15,
        metadata={
            "range": OPEN_UNIT,
            "help": "Unsafe when sigmoid(R_s) < this (sec. 3.3); evaluated as precision/recall.",
        },
    )
    calibrate_unsafe_precision: float | None = field(
        default=None,
        metadata={
            "range": TOP_P,
            "help": "Safety RM: shift its scores so that sigmoid(R_s) < safety_threshold flags "
            "unsafe training responses with this precision (the paper's 0.89); "
            "responses of helpfulness pairs count as safe. None: raw scores.",
        },
    )
    global_batch_size: int = field(
        default=512,
        metadata={
            "range": AT_LEAST_ONE,
            "help": "Effective batch in pairs (sec. 3.2.2: 512); accumulation is derived from it.",
        },
    )
    min_warmup_steps: int = field(
        default=5, metadata={"range": NON_NEGATIVE, "help": "Warmup is 3% of steps but at least this (sec. 3.2.2)."}
    )
    eval_batch_size: int = field(
        default=16, metadata={"range": AT_LEAST_ONE, "help": "Sequences per forward pass when scoring held-out pairs."}
    )
    # TRL / transformers fields with the paper's values
    learning_rate: float = field(
        default=1e-5, metadata={"range": POSITIVE, "help": "Max LR (sec. 3.2.2: 1e-5; 5e-6 for 70B)."}
    )
    lr_scheduler_type: str = field(default="cosine_with_min_lr", metadata={"help": "Cosine decay (sec. 3.2.2)."})
    lr_scheduler_kwargs: dict | str | None = field(
        default_factory=lambda: {"min_lr_rate": 0.1}, metadata={"help": "Decay to 10% of max LR (sec. 3.2.2)."}
    )
    warmup_steps: float = field(
        default=0.03,
        metadata={"range": NON_NEGATIVE, "help": "Warmup: 3% of steps (sec. 3.2.2); see min_warmup_steps."},
    )
    num_train_epochs: float = field(
        default=1.0, metadata={"range": POSITIVE, "help": "1 epoch: longer overfits (sec. 3.2.2)."}
    )
    weight_decay: float = field(
        default=0.1, metadata={"range": NON_NEGATIVE, "help": "AdamW weight decay as in pretraining (0.1)."}
    )
    adam_beta2: float = field(
        default=0.95, metadata={"range": FRACTION, "help": "AdamW beta2 as in pretraining (0.95)."}
    )
    adam_epsilon: float = field(
        default=1e-5, metadata={"range": POSITIVE, "help": "AdamW eps as in pretraining (1e-5)."}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"range": NON_NEGATIVE, "help": "Gradient clipping as in pretraining (1.0)."}
    )
    max_length: int | None = field(
        default=4096,
        metadata={
            "range": AT_LEAST_ONE,
            "help": "Tokens per prompt+response (context 4096); longer inputs keep their end.",
        },
    )
    per_device_train_batch_size: int = field(
        default=8, metadata={"range": AT_LEAST_ONE, "help": "Pairs per device per step."}
    )
    # TRL defaults gradient_checkpointing to True, and transformers 5 warns whenever the old name is set.
    activation_checkpointing: bool | None = field(
        default=False, metadata={"help": "Trade compute for memory (off: a 135M model fits; on for 7B+)."}
    )
    gradient_checkpointing: bool | None = field(
        default=None, metadata={"help": "Deprecated alias of activation_checkpointing."}
    )
    train_sampling_strategy: str = field(
        default="group_by_length",
        metadata={"help": "Batch pairs of similar length: less padding, same expected gradient."},
    )
    save_strategy: str = field(default="steps", metadata={"help": "Checkpoint every save_steps for resumption."})
    save_steps: float = field(default=50, metadata={"range": POSITIVE, "help": "Steps between checkpoints."})
    save_total_limit: int | None = field(default=2, metadata={"range": AT_LEAST_ONE, "help": "Checkpoints kept."})
    logging_steps: float = field(default=5, metadata={"range": POSITIVE, "help": "Steps between log lines."})
    report_to: list[str] | str | None = field(
        default="none", metadata={"help": "Trackers (tensorboard, wandb, none)."}
    )
    output_dir: str | None = field(default="runs/reward", metadata={"help": "Where checkpoints, the RM and eval go."})

    def get_warmup_steps(self, num_training_steps: int) -> int:
        """3% of steps, at least `min_warmup_steps` (sec. 3.2.2); an explicit step count (>= 1) is kept."""
        steps = super().get_warmup_steps(num_training_steps)
        return steps if self.warmup_steps >= 1 else max(self.min_warmup_steps, steps)
