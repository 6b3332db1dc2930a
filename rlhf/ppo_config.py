"""PPO recipe fields (Llama 2, arXiv 2307.09288, sec. 3.2.3).

Paper values: batch 512, mini-batch 64, one gradient step per mini-batch, clip 0.2, beta 0.01 (0.005 for
34B/70B), AdamW (0.9, 0.95), eps 1e-5, weight decay 0.1, gradient clipping 1.0, constant LR 1e-6,
200-400 iterations with early stopping on held-out prompts. Fields the paper leaves open say so in their help.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from alignment.config import AT_LEAST_ONE, FRACTION, NON_NEGATIVE, OPEN_UNIT, POSITIVE, PROBABILITY, TOP_P, RecipeError
from rlhf.rewards import FLAGGED_REWARDS

KL_ESTIMATORS = ("k1", "k3")
BUILTIN_PROMPTS = "builtin:world"


@dataclass
class PPOConfig:
    # Models
    model_name_or_path: str = field(
        default="builtin:tiny-llama",
        metadata={"help": "Policy at PPO start (the RS/SFT checkpoint); also the frozen reference pi_0 (eq. 4)."},
    )
    chat_format: str = field(
        default="llama2", metadata={"help": "llama2 ([INST] template) or model (tokenizer's own)."}
    )
    dtype: str = field(default="float32", metadata={"help": "Weights dtype of policy and value model."})
    trust_remote_code: bool = field(
        default=False, metadata={"help": "Allow hub code in checkpoints (off by default)."}
    )
    helpfulness_model: str | None = field(
        default=None,
        metadata={
            "help": "Helpfulness RM R_h (frozen): a reward checkpoint, or builtin:world-helpfulness (gold judge)."
        },
    )
    safety_model: str | None = field(
        default=None,
        metadata={"help": "Safety RM R_s (frozen): a reward checkpoint, or builtin:world-safety (gold judge)."},
    )
    value_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Value model init. Default: the Helpfulness RM (a scalar head that already reads answers); "
            "the policy checkpoint when R_h is a builtin judge. Paper: not stated."
        },
    )
    reward_dtype: str = field(default="float32", metadata={"help": "Weights dtype of the two reward models."})
    reward_batch_size: int = field(
        default=16, metadata={"range": AT_LEAST_ONE, "help": "Sequences per reward-model forward pass."}
    )
    reward_device: str | None = field(
        default=None,
        metadata={
            "help": "Where the frozen R_h and R_s run: the policy's device when unset; 'cpu' offloads them "
            "off the accelerator to free its memory for the policy and value model."
        },
    )
    safety_threshold: float = field(
        default=0.15, metadata={"range": OPEN_UNIT, "help": "Gate R_s < 0.15 of eq. (3) (sec. 3.2.3)."}
    )
    flagged_reward: Literal[FLAGGED_REWARDS] = field(
        default="safety",
        metadata={
            "help": "R_c of an answer the gate flags on a prompt that is not a safety prompt: R_s as eq. (3) "
            "writes, or the lower of R_s and R_h, so that a flag never raises a reward when R_h's scores sit "
            "below logit(0.15) (rlhf.rewards.combined_reward)."
        },
    )
    use_lora: bool = field(
        default=False,
        metadata={"help": "Train a LoRA adapter; pi_0 is then the base with the adapter disabled (no second copy)."},
    )
    lora_r: int = field(default=16, metadata={"range": AT_LEAST_ONE, "help": "LoRA rank."})
    lora_alpha: int = field(default=32, metadata={"range": POSITIVE, "help": "LoRA scaling alpha."})
    lora_dropout: float = field(
        default=0.0, metadata={"range": FRACTION, "help": "LoRA dropout (0: dropout would make pi_old != pi_theta)."}
    )
    lora_target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        metadata={"help": "Modules that get LoRA adapters (Llama names)."},
    )
    merge_lora: bool = field(
        default=True, metadata={"help": "Save merged weights so later stages load a plain model."}
    )

    # Prompts
    prompts_name: str = field(
        default=BUILTIN_PROMPTS,
        metadata={
            "help": "PPO prompts: .jsonl/.json/.parquet rows {prompt, is_safety_prompt?, id?}, a hub dataset, "
            "or builtin:world (the embedded world's train split)."
        },
    )
    prompts_split: str = field(default="train", metadata={"help": "Split of a hub dataset."})
    heldout_prompts_name: str | None = field(
        default=None,
        metadata={
            "help": "Held-out prompts for early stopping; default: builtin:world's held-out split, or "
            "heldout_fraction of prompts_name."
        },
    )
    heldout_fraction: float = field(
        default=0.05, metadata={"range": FRACTION, "help": "Share of prompts held out when no held-out set is named."}
    )
    max_heldout_prompts: int = field(
        default=64, metadata={"range": AT_LEAST_ONE, "help": "Cap on held-out prompts scored per evaluation."}
    )
    heldout_temperature: float | None = field(
        default=None,
        metadata={
            "range": NON_NEGATIVE,
            "help": "Temperature of the held-out answers early stopping scores; default: the rollout temperature. "
            "0 scores greedy answers, the ones a greedy evaluation of the policy will read.",
        },
    )

    # Rollouts
    rollout_batch_size: int = field(
        default=512,
        metadata={"range": AT_LEAST_ONE, "help": "Rollouts per PPO iteration, all processes (sec. 3.2.3: 512)."},
    )
    mini_batch_size: int = field(
        default=64,
        metadata={"range": AT_LEAST_ONE, "help": "Rollouts per gradient step, all processes (sec. 3.2.3: 64)."},
    )
    per_device_train_batch_size: int = field(
        default=8,
        metadata={
            "range": AT_LEAST_ONE,
            "help": "Rollouts per forward pass; a mini-batch is accumulated from these (memory only).",
        },
    )
    generation_batch_size: int = field(
        default=32, metadata={"range": AT_LEAST_ONE, "help": "Sequences decoded together by the sampling engine."}
    )
    sampling_backend: str = field(
        default="hf",
        metadata={"help": "Sampling engine: hf (vllm is rejected until policy weights sync to it)."},
    )
    logprobs_from_sampling: bool = field(
        default=False,
        metadata={
            "help": "Take pi_old's log-probs from the sampling pass's logits (as TRL does) instead of a second "
            "forward of the policy: the same weights, so equal up to kernel noise; hf sampling, no bf16."
        },
    )
    short_causal_attention: bool = field(
        default=True,
        metadata={
            "help": "On CPU, attention over at most 64 keys by batched matmuls instead of the flash kernel "
            "(alignment/attention.py): the same values up to float rounding, faster at those lengths; every "
            "other call runs SDPA as before."
        },
    )
    fast_rms_norm: bool = field(
        default=True,
        metadata={
            "help": "RMSNorm with its backward written out (alignment/rms_norm.py) in the policy and value model's "
            "float32 training passes: the same outputs, gradients up to float rounding, half the time on CPU."
        },
    )
    max_new_tokens: int = field(
        default=128, metadata={"range": AT_LEAST_ONE, "help": "Response budget per rollout (paper: not stated)."}
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "range": POSITIVE,
            "help": "Rollout temperature. 1.0 samples pi_theta itself, as PPO's ratio and KL assume; the "
            "chat defaults (0.6, top-p 0.9) are for inference. Log-probs use logits / temperature.",
        },
    )
    top_p: float = field(
        default=1.0,
        metadata={"range": TOP_P, "help": "Rollout nucleus; below 1 the samples leave pi_theta's support."},
    )

    # PPO
    kl_coef: float = field(
        default=0.01, metadata={"range": NON_NEGATIVE, "help": "beta of eq. (4): 0.01 for 7B/13B, 0.005 for 34B/70B."}
    )
    kl_estimator: str = field(default="k1", metadata={"help": "Per-token KL: k1 = log pi - log pi_0 (eq. 4), or k3."})
    gamma: float = field(
        default=1.0,
        metadata={
            "range": PROBABILITY,
            "help": "GAE discount (paper: not stated; 1.0 as TRL, one reward per answer).",
        },
    )
    lam: float = field(
        default=0.95, metadata={"range": PROBABILITY, "help": "GAE lambda (paper: not stated; 0.95 as TRL)."}
    )
    clip_range: float = field(default=0.2, metadata={"range": POSITIVE, "help": "PPO clip epsilon (sec. 3.2.3: 0.2)."})
    value_clip_range: float = field(
        default=0.2, metadata={"range": POSITIVE, "help": "Value clip (paper: not stated; 0.2 as TRL/baselines)."}
    )
    whiten_advantages: bool = field(
        default=True, metadata={"help": "Whiten advantages over the global batch (masked)."}
    )
    truncated_penalty: float | None = field(
        default=None,
        metadata={
            "help": "Answers cut at max_new_tokens (no EOS): null scores them as the RM reads them; a number "
            "replaces their whitened R~_c (e.g. -1.0). Paper: not stated."
        },
    )
    ppo_epochs: int = field(
        default=1,
        metadata={
            "range": AT_LEAST_ONE,
            "help": "Passes over each rollout batch (sec. 3.2.3: one step per mini-batch).",
        },
    )

    # Optimiser (sec. 3.2.3 / pretraining AdamW)
    learning_rate: float = field(
        default=1e-6, metadata={"range": POSITIVE, "help": "Policy LR, constant (sec. 3.2.3: 1e-6)."}
    )
    value_learning_rate: float = field(
        default=1e-5,
        metadata={
            "range": POSITIVE,
            "help": "Value-model LR, constant (paper: not stated; the critic must track returns faster than "
            "the policy moves, as OpenRLHF's 9e-6 critic vs 5e-7 actor).",
        },
    )
    adam_beta1: float = field(default=0.9, metadata={"range": FRACTION, "help": "AdamW beta1 (0.9)."})
    adam_beta2: float = field(default=0.95, metadata={"range": FRACTION, "help": "AdamW beta2 (0.95)."})
    adam_epsilon: float = field(default=1e-5, metadata={"range": POSITIVE, "help": "AdamW eps (1e-5)."})
    weight_decay: float = field(
        default=0.1, metadata={"range": NON_NEGATIVE, "help": "AdamW weight decay (0.1), matrices only."}
    )
    max_grad_norm: float = field(
        default=1.0, metadata={"range": POSITIVE, "help": "Gradient clipping (1.0), per model."}
    )
    bf16: bool = field(default=False, metadata={"help": "bf16 autocast (accelerate mixed precision)."})

    # Loop
    num_iterations: int = field(
        default=200, metadata={"range": AT_LEAST_ONE, "help": "PPO iterations (sec. 3.2.3: 200-400)."}
    )
    eval_every: int = field(
        default=10, metadata={"range": NON_NEGATIVE, "help": "Iterations between held-out evaluations (0: never)."}
    )
    early_stopping_patience: int = field(
        default=5,
        metadata={
            "range": NON_NEGATIVE,
            "help": "Stop after this many evaluations without a better held-out R_c (0: never stop).",
        },
    )
    early_stopping_min_delta: float = field(
        default=0.0,
        metadata={
            "range": NON_NEGATIVE,
            "help": "A held-out R_c counts as better only when it beats the best so far by more "
            "than this: with a few held-out prompts and a noisy reward model, a "
            "smaller gain is noise, and the policy at PPO start is kept.",
        },
    )
    save_every: int = field(
        default=1, metadata={"range": AT_LEAST_ONE, "help": "Iterations between checkpoints (resume point)."}
    )
    keep_checkpoints: int = field(
        default=2, metadata={"range": AT_LEAST_ONE, "help": "Iteration checkpoints kept on disk."}
    )
    seed: int = field(default=0, metadata={"help": "Seed of prompt order, sampling and initialisation."})
    output_dir: str = field(default="runs/ppo", metadata={"help": "Checkpoints, logs and the final policy."})
    report_to: list[str] = field(
        default_factory=lambda: ["tensorboard"],
        metadata={"help": "accelerate trackers (tensorboard, wandb, ...; none)."},
    )
    progress: bool = field(default=True, metadata={"help": "Show a progress bar."})

    def validate(self, num_processes: int = 1) -> None:
        """Recipe checks that need no model, so a wrong recipe fails in a second."""
        if self.sampling_backend == "vllm":
            raise RecipeError(
                "sampling_backend 'vllm' is not supported by PPO: nothing syncs the updated policy "
                "weights into the vLLM engine yet; use sampling_backend: hf"
            )
        if self.logprobs_from_sampling and self.bf16:
            raise RecipeError(
                "logprobs_from_sampling needs bf16: false (sampling runs without autocast, so its "
                "log-probs would not be those of the bf16 training forward)"
            )
        if self.kl_estimator not in KL_ESTIMATORS:
            raise RecipeError(f"kl_estimator must be one of {', '.join(KL_ESTIMATORS)}, got '{self.kl_estimator}'")
        for name in (
            "rollout_batch_size",
            "mini_batch_size",
            "per_device_train_batch_size",
            "generation_batch_size",
            "max_new_tokens",
            "num_iterations",
            "ppo_epochs",
            "save_every",
            "keep_checkpoints",
        ):
            if getattr(self, name) < 1:
                raise RecipeError(f"{name} must be at least 1, got {getattr(self, name)}")
        if self.rollout_batch_size % self.mini_batch_size:
            raise RecipeError(
                f"rollout_batch_size {self.rollout_batch_size} is not a multiple of mini_batch_size "
                f"{self.mini_batch_size}"
            )
        if self.mini_batch_size % num_processes:
            raise RecipeError(f"mini_batch_size {self.mini_batch_size} does not split over {num_processes} processes")
        local = self.mini_batch_size // num_processes
        if local % min(self.per_device_train_batch_size, local):
            raise RecipeError(
                f"per-process mini-batch {local} is not a multiple of per_device_train_batch_size "
                f"{self.per_device_train_batch_size}"
            )
        if not 0 < self.safety_threshold < 1:
            raise RecipeError("safety_threshold is a probability in (0, 1)")
        if not 0 <= self.heldout_fraction < 1:
            raise RecipeError("heldout_fraction must be in [0, 1)")
        if self.temperature <= 0:
            raise RecipeError("PPO rollouts need temperature > 0 (greedy answers have no log-probability ratio)")
        if self.eval_every < 0 or self.early_stopping_patience < 0 or self.early_stopping_min_delta < 0:
            raise RecipeError("eval_every, early_stopping_patience and early_stopping_min_delta must be >= 0")
