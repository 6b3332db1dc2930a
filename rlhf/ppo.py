"""Stage 4: PPO on the safety-gated reward (Llama 2, arXiv 2307.09288, sec. 3.2.3), on accelerate.

`PPOTrainer` holds the stage (setup / train / save_checkpoint / cleanup, state in a typed `TrainerState`).
One iteration is generate -> score -> learn, the three talking through a typed `RolloutBatch`:

1. generate: `rollout_batch_size` prompts (split over processes) are answered by the policy through the
   project's sampling engine (`rlhf.sampling`);
2. score: R_h and R_s score each answer and `rlhf.scoring.score_samples` gates them into R_c (eq. 3); the
   per-token reward is `rlhf.rewards.shaped_ppo_reward`: -beta * KL(pi_theta || pi_0) on every response token
   and WHITEN(R_c) (statistics over the whole batch, all processes) on the last one (eq. 4);
3. learn: GAE, advantage whitening (masked, global), clipped surrogate and clipped value loss
   (`rlhf.ppo_math`), one AdamW step per mini-batch.

Token layout. A rollout row is ``prompt + response`` right-padded to the batch width ``L``. Per-token
tensors (log-probs, values, KL, rewards, advantages) have width ``L - 1``: position ``t`` is the *action*
"emit token t + 1", scored from the logits at position ``t``; ``response_mask[t]`` is true when token
``t + 1`` is a response token (stop token included). Prompt and padding positions are never on the mask,
so they get no KL, reward, advantage or loss.

Models. The policy pi_theta; the reference pi_0 is the policy at PPO start (a frozen copy, or with LoRA
the base weights with the adapter disabled, so no second copy is held); the value model is a sequence
classifier whose `score` layer is read at every position (`TokenValueModel`), initialised from the
Helpfulness RM by default; R_h and R_s are frozen scorers. All models stay in eval mode: dropout would
make pi_theta differ from pi_old before the first step (TRL disables it for the same reason).

Losses are normalised by the global number of response tokens of the mini-batch (all processes), so the
loss and the step are the same however the mini-batch is split over processes or micro-batches.

Truncated answers (no stop token within ``max_new_tokens``; the paper states no rule): by default they are
scored like any answer, R~_c on their last generated token, and GAE does not bootstrap past it (V = 0 after
the last token), so the value model learns that an unfinished answer ends there. ``truncated_penalty`` sets
their whitened R~_c to a fixed value instead (useful with short budgets, where the RM would otherwise score
a cut answer as if finished). Either way they count in the whitening statistics.

Resumption: every ``save_every`` iterations accelerate's ``save_state`` (models, optimiser, RNG of every
process), our trainer state and the best held-out policy so far are written to ``checkpoints/iteration-N.tmp``
and renamed, so a kill leaves the previous checkpoint whole and the best policy always matches the
``best_iteration`` recorded beside it. The data position is a function of the iteration (`prompt_indices`) and
sampling seeds derive from it, so a resumed run repeats the unbroken one. A NaN/inf reward, loss or gradient
raises `NonFiniteError` before the optimiser step, naming the last good checkpoint.

Cost. Each iteration logs its seconds per phase (``time/generation``, ``scoring``, ``logprobs``, ``values``,
``update``, ``evaluation``, ``checkpoint``, ``other``). No FLOPs go to prompts or padding where they can be
skipped exactly: rollout forwards run on length-sorted micro-batches cut to their own width; the LM head,
log-softmax and entropy run on response positions only (`token_logprobs`, with `alignment.logprobs` for the
few passes over the vocabulary); right-padded rows run without a padding mask, on causal attention alone
(`alignment.models.causal_attention_mask`). R_h and R_s given as one checkpoint are loaded and run once.
``logprobs_from_sampling`` takes pi_old from the sampling pass (`LogprobSamplingEngine`) instead of a second
policy forward.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import json
import os
import random
import re
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm
from transformers import DynamicCache

from alignment.attention import use_short_causal_attention
from alignment.chat import check_chat_format, encode_prompt
from alignment.config import RecipeError, config_to_dict, require_file
from alignment.data import (
    PromptRecord,
    append_jsonl,
    atomic_write_json,
    load_prompts,
    messages_key,
    read_jsonl_tolerant,
    split_by_key,
)
from alignment.distributed import gathered_full_weights, save_full_model
from alignment.logprobs import target_logprobs
from alignment.models import causal_attention_mask, load_causal_lm, load_tokenizer
from alignment.rms_norm import use_fast_rms_norm
from alignment.stages import COMPLETE_MARKER
from alignment.world.scorers import world_judge, world_prompt_records
from reward import scoring as reward_scoring  # module, not names: tests swap its RewardScorer
from reward.scoring import load_reward_model
from rlhf.ppo_config import BUILTIN_PROMPTS, PPOConfig
from rlhf.ppo_math import (
    entropy_from_logits,
    explained_variance,
    gae,
    global_token_count,
    kl_per_token,
    masked_mean,
    masked_whiten,
    policy_loss,
    value_loss,
)
from rlhf.rewards import shaped_ppo_reward
from rlhf.sampling import HFSamplingEngine, SamplingParams, left_pad, make_sample, make_sampling_engine
from rlhf.scoring import combine_scores, score_samples

CHECKPOINTS = "checkpoints"
TRAINER_STATE = "trainer_state.json"
BEST_POLICY = "best_policy.safetensors"
# A new best policy waits here until the next checkpoint publishes it together with its best_iteration.
PENDING_BEST_POLICY = "best_policy.pending.safetensors"
_CHECKPOINT_NAME = re.compile(r"^iteration-(\d+)$")


class NonFiniteError(RuntimeError):
    """A reward or loss became NaN/inf; training stopped before the bad step, checkpoints are intact."""


# ---------------------------------------------------------------------------------------------------------
# The batch the three phases exchange


@dataclass
class RolloutBatch:
    """One process's share of an iteration's rollouts. Sequence tensors ``(B, L)``, per-token ``(B, L - 1)``,
    per-rollout ``(B,)``. Targets (kl ... returns) are filled by `compute_advantages`."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    is_safety_prompt: torch.Tensor
    is_truncated: torch.Tensor
    helpfulness: torch.Tensor
    safety: torch.Tensor
    combined: torch.Tensor
    use_safety: torch.Tensor
    logprobs: torch.Tensor | None = None
    ref_logprobs: torch.Tensor | None = None
    values: torch.Tensor | None = None
    kl: torch.Tensor | None = None
    rewards: torch.Tensor | None = None
    advantages: torch.Tensor | None = None
    returns: torch.Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def to(self, device) -> RolloutBatch:
        return RolloutBatch(
            **{
                f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                for f in fields(self)
            }
        )

    def select(self, rows) -> RolloutBatch:
        """Rows ``rows``, cut to their own width (less padding to compute on)."""
        rows = torch.as_tensor(rows, dtype=torch.long)
        width = int(self.attention_mask[rows].sum(dim=1).max())
        out = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                out[f.name] = None
            elif value.dim() == 1:
                out[f.name] = value[rows]
            elif f.name in ("input_ids", "attention_mask"):
                out[f.name] = value[rows, :width]
            else:
                out[f.name] = value[rows, : width - 1]
        return RolloutBatch(**out)


def collate_rollouts(samples, pad_id: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, response_mask)`` of prompt + response rows, right-padded.

    ``response_mask`` has width ``L - 1`` and marks action positions: ``response_mask[i, t]`` is true when
    ``input_ids[i, t + 1]`` is a response token, i.e. positions ``P - 1 ... P + R - 2`` for a prompt of
    ``P`` tokens and a response of ``R``.
    """
    width = max(len(s.prompt_ids) + len(s.response_ids) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    attention_mask = torch.zeros((len(samples), width), dtype=torch.long)
    response_mask = torch.zeros((len(samples), width - 1), dtype=torch.bool)
    for row, sample in enumerate(samples):
        p, r = len(sample.prompt_ids), len(sample.response_ids)
        input_ids[row, : p + r] = torch.tensor(list(sample.prompt_ids) + list(sample.response_ids))
        attention_mask[row, : p + r] = 1
        response_mask[row, p - 1 : p + r - 1] = True
    return input_ids, attention_mask, response_mask


# ---------------------------------------------------------------------------------------------------------
# Models


class TokenValueModel(torch.nn.Module):
    """V(s_t) at every position: a sequence classifier (`AutoModelForSequenceClassification`, one label) whose
    `score` layer is applied to all hidden states instead of the last token's only. Initialised from a reward
    model, V starts as the RM's running estimate of the final score, a better start than a random head."""

    def __init__(self, classifier):
        super().__init__()
        self.classifier = classifier

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        base = getattr(self.classifier, self.classifier.base_model_prefix)
        mask = causal_attention_mask(attention_mask)
        hidden = base(input_ids=input_ids, attention_mask=mask, use_cache=False).last_hidden_state
        return self.classifier.score(hidden).squeeze(-1).float()


# Causal LMs whose logits are exactly ``lm_head(decoder(...).last_hidden_state)``: no logit scale, soft-capping or
# other maths after the head (transformers' LlamaForCausalLM, MistralForCausalLM, Qwen2/3ForCausalLM).
PLAIN_HEAD_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3"})


def _decoder_and_head(model):
    """``(decoder, head)`` where the LM head may be run on chosen hidden states only, else None.

    A model wrapped for DDP is called through its wrapper (the gradient all-reduce hangs on its forward), and a
    prompt-learning PEFT adapter changes the inputs in its own forward: both keep the whole-model call."""
    if hasattr(model, "module") or getattr(getattr(model, "config", None), "model_type", None) not in (
        PLAIN_HEAD_MODEL_TYPES
    ):
        return None
    if _is_peft(model) and model.active_peft_config.is_prompt_learning:
        return None
    return model.get_decoder(), model.get_output_embeddings()


def token_logprobs(
    model,
    input_ids,
    attention_mask,
    temperature: float = 1.0,
    with_entropy: bool = False,
    positions: torch.Tensor | None = None,
):
    """log pi(token_{t+1} | tokens_<=t) per action position, ``(B, L - 1)``; optionally the entropy there.

    Logits are divided by the sampling temperature so the log-probs are those of the distribution the
    rollouts were drawn from. With ``positions`` (a ``(B, L - 1)`` bool mask, the response actions) the
    LM head, log-softmax and entropy run there only and every other position is 0: the same values where the
    mask is on, with no work on prompts and padding. The head and the passes over the vocabulary are a large
    share of a small model's time: on the tiny Llama (64 wide, 1024 tokens) they took as long as its two decoder
    layers when run on every position with autograd's log-softmax."""
    attention_mask = causal_attention_mask(attention_mask)
    if positions is None:
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1].float()
        if temperature != 1.0:
            logits = logits / temperature
        targets = input_ids[:, 1:]
        logprobs = torch.gather(logits, 2, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
        if not with_entropy:
            return logprobs
        with torch.no_grad():
            entropy = entropy_from_logits(logits.detach())
        return logprobs, entropy
    parts = _decoder_and_head(model)
    if parts is not None:
        decoder, head = parts
        hidden = decoder(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).last_hidden_state
        picked = head(hidden[:, :-1][positions]).float()  # (tokens, vocab): response positions only
        keep, targets = positions, input_ids[:, 1:]
    else:
        start = int(positions.any(dim=0).nonzero()[0]) if bool(positions.any()) else input_ids.shape[1] - 1
        # logits_to_keep: without the decoder / head split, the head at least skips positions before `start`.
        logits = model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            use_cache=False,
            logits_to_keep=input_ids.shape[1] - start,
        ).logits[:, :-1]
        keep, targets = positions[:, start:], input_ids[:, start + 1 :]
        picked = logits[keep].float()
    if temperature != 1.0:
        picked = picked / temperature
    values, entropy = target_logprobs(picked, targets[keep], with_entropy)
    logprobs = torch.zeros(positions.shape, dtype=values.dtype, device=values.device).masked_scatter(positions, values)
    if not with_entropy:
        return logprobs
    return logprobs, torch.zeros_like(logprobs).masked_scatter(positions, entropy)


def _unwrap(model):
    return model.module if hasattr(model, "module") else model


def _is_peft(model) -> bool:
    return hasattr(_unwrap(model), "peft_config")


@contextlib.contextmanager
def reference_policy(policy, reference):
    """pi_0: the frozen copy, or (LoRA) the policy itself with its adapter disabled."""
    if reference is not None:
        yield reference
    else:
        with _unwrap(policy).disable_adapter():
            yield policy


def _value_model_path(config: PPOConfig) -> str:
    if config.value_model_name_or_path:
        return config.value_model_name_or_path
    if config.helpfulness_model and not config.helpfulness_model.startswith("builtin:world"):
        return config.helpfulness_model
    return config.model_name_or_path


def build_models(config: PPOConfig):
    """(policy, reference or None, value model, tokenizer), all on CPU, before `accelerator.prepare`."""
    tokenizer = load_tokenizer(config.model_name_or_path, trust_remote_code=config.trust_remote_code)
    policy = load_causal_lm(config.model_name_or_path, config.dtype, trust_remote_code=config.trust_remote_code)
    reference = None
    if config.use_lora:
        policy = get_peft_model(
            policy,
            LoraConfig(
                r=config.lora_r,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=list(config.lora_target_modules),
                task_type="CAUSAL_LM",
            ),
        )
    else:
        # Copied before any checkpoint is loaded: after a resume pi_0 is still the policy at PPO start.
        reference = copy.deepcopy(policy).requires_grad_(False)
    classifier = load_reward_model(_value_model_path(config), config.dtype, keep_likelihood=False)
    if classifier.config.get_text_config().vocab_size < len(tokenizer):
        raise RecipeError(
            f"value model '{_value_model_path(config)}' has a smaller vocabulary than the policy's "
            "tokenizer; it must share the policy's tokenizer"
        )
    for model in [m for m in (policy, reference, classifier) if m is not None]:
        if config.short_causal_attention:
            use_short_causal_attention(model)
        if config.fast_rms_norm:
            use_fast_rms_norm(model)
    return policy, reference, TokenValueModel(classifier), tokenizer


def build_scorer(name: str | None, kind: str, config: PPOConfig, device: str | None = None):
    if not name:
        raise RecipeError(f"{kind}_model is not set: name a reward checkpoint or builtin:world-{kind}")
    judge = world_judge(name)
    if judge is not None:
        return judge
    # The scorer keeps the window the RM was trained on (its stored training_max_length), as at training.
    return reward_scoring.RewardScorer(
        name,
        chat_format=config.chat_format,
        dtype=config.reward_dtype,
        batch_size=config.reward_batch_size,
        device=config.reward_device or device,
        short_causal_attention=config.short_causal_attention,
    )


FUSED_ADAM_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


def make_optimizer(policy, value_model, config: PPOConfig) -> torch.optim.Optimizer:
    """AdamW (0.9, 0.95), eps 1e-5, weight decay 0.1 on matrices (not norms), constant LRs (sec. 3.2.3).

    One optimiser, two LR groups per model: with Adam the scale of each model's loss does not matter,
    so the value-loss coefficient of a shared-trunk PPO becomes the value model's own LR here."""
    groups = []
    for model, lr in ((policy, config.learning_rate), (value_model, config.value_learning_rate)):
        params = [p for p in model.parameters() if p.requires_grad]
        groups.append({"params": [p for p in params if p.dim() >= 2], "lr": lr, "weight_decay": config.weight_decay})
        groups.append({"params": [p for p in params if p.dim() < 2], "lr": lr, "weight_decay": 0.0})
    params = [p for g in groups for p in g["params"]]
    # The fused kernel updates every tensor in one pass (CPU and CUDA float weights): 0.4 ms per step for the
    # tiny models' 24 tensors against 1.6 ms for the foreach loop, the same values up to float rounding.
    fused = all(p.device.type in ("cpu", "cuda") and p.dtype in FUSED_ADAM_DTYPES for p in params) or None
    return torch.optim.AdamW(
        [g for g in groups if g["params"]],
        betas=(config.adam_beta1, config.adam_beta2),
        eps=config.adam_epsilon,
        fused=fused,
    )


# ---------------------------------------------------------------------------------------------------------
# Prompts


def load_ppo_prompts(config: PPOConfig) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """(training prompts, held-out prompts for early stopping)."""
    if config.prompts_name == BUILTIN_PROMPTS:
        train, heldout = world_prompt_records("train"), world_prompt_records("heldout")
    else:
        require_file(config.prompts_name, "prompts_name")
        train = load_prompts(config.prompts_name, config.prompts_split)
        heldout = []
        if config.heldout_prompts_name is None and config.heldout_fraction > 0:
            train, heldout = split_heldout_by_prompt(train, config.heldout_fraction, config.seed)
    if config.heldout_prompts_name is not None:
        if config.heldout_prompts_name == BUILTIN_PROMPTS:
            heldout = world_prompt_records("heldout")
        else:
            require_file(config.heldout_prompts_name, "heldout_prompts_name")
            heldout = load_prompts(config.heldout_prompts_name, "test")
    if not train:
        raise RecipeError(f"{config.prompts_name}: no training prompts")
    if len(heldout) > config.max_heldout_prompts:
        heldout = random.Random(config.seed).sample(heldout, config.max_heldout_prompts)
    return train, heldout


def prompt_key(prompt: PromptRecord) -> str:
    return messages_key(prompt.messages)


def split_heldout_by_prompt(
    prompts: list[PromptRecord], fraction: float, seed: int
) -> tuple[list[PromptRecord], list[PromptRecord]]:
    """(training prompts, held-out prompts), split by prompt text (alignment.data.split_by_key): a prompt file
    that repeats prompts (the pipeline draws them with replacement) never has a held-out prompt among its
    training ones, and a held-out prompt stays held out when rows are added. Each held-out prompt is kept once."""
    train, heldout = split_by_key(prompts, prompt_key, fraction, seed)
    first: dict[str, PromptRecord] = {}
    for prompt in heldout:
        first.setdefault(prompt_key(prompt), prompt)
    return train, list(first.values())


@functools.lru_cache(maxsize=4)
def epoch_order(num_prompts: int, seed: int, epoch: int) -> tuple[int, ...]:
    """The seeded shuffle of one epoch of prompts (computed once per epoch, not once per rollout)."""
    order = list(range(num_prompts))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return tuple(order)


def prompt_indices(num_prompts: int, iteration: int, batch_size: int, seed: int) -> list[int]:
    """Global prompt indices of an iteration: epochs of seeded shuffles laid end to end, so the data
    position is a function of the iteration number alone and a resumed run reads the same prompts."""
    out = []
    for position in range(iteration * batch_size, (iteration + 1) * batch_size):
        epoch, offset = divmod(position, num_prompts)
        out.append(epoch_order(num_prompts, seed, epoch)[offset])
    return out


# ---------------------------------------------------------------------------------------------------------
# Generate and score


@dataclass
class PPOModels:
    """What the learning phases work on: the prepared models, their one optimiser, and the accelerator."""

    accelerator: Accelerator
    policy: torch.nn.Module
    reference: torch.nn.Module | None  # None with LoRA: pi_0 is the policy with its adapter disabled
    value_model: torch.nn.Module
    optimizer: torch.optim.Optimizer


PHASES = ("generation", "scoring", "logprobs", "values", "update", "evaluation", "checkpoint")


class PhaseClock:
    """Wall seconds of each phase of one iteration (metrics ``time/<phase>``). Device work is waited for at the
    end of each phase, so its seconds are the phase's own, not the next one's."""

    def __init__(self, device: torch.device | str = "cpu"):
        self.device = torch.device(device)
        self.seconds = dict.fromkeys(PHASES, 0.0)

    @contextlib.contextmanager
    def __call__(self, phase: str):
        started = time.perf_counter()
        try:
            yield
        finally:
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            self.seconds[phase] += time.perf_counter() - started


SAMPLING_BLOCK = 32


def sample_tokens(weights: torch.Tensor) -> torch.Tensor:
    """One token per row drawn with probability proportional to ``weights`` ``(B, V)`` (non-negative, e.g.
    ``exp(logits - max)``), by inverse CDF: the first token whose cumulative weight exceeds a uniform number
    times the row's total. One random number per row: drawing one per vocabulary entry, as `torch.multinomial`
    and the exponential race do, costs more than a small model's forward on CPU.

    The CDF is taken in two levels, over blocks of ``SAMPLING_BLOCK`` tokens and then within the drawn block, in
    float64: one pass over the vocabulary instead of a cumulative sum over all of it. A token of weight 0 is
    never drawn (the uniform number is kept strictly below each level's total)."""
    rows, vocab = weights.shape
    pad = -vocab % SAMPLING_BLOCK
    blocks = (torch.nn.functional.pad(weights, (0, pad)) if pad else weights).view(rows, -1, SAMPLING_BLOCK)
    # Block sums in the weights' dtype (a float64 sum would first copy the whole array), accumulated in float64.
    cdf = blocks.sum(dim=-1).double().cumsum(dim=-1)
    total = cdf[:, -1:]
    target = torch.minimum(
        torch.rand(rows, 1, dtype=torch.float64, device=weights.device) * total,
        torch.nextafter(total, torch.zeros_like(total)),
    )
    block = torch.searchsorted(cdf, target, right=True)  # < number of blocks: target < total
    before = torch.where(block > 0, cdf.gather(1, (block - 1).clamp(min=0)), 0.0)
    inner = blocks.gather(1, block.unsqueeze(-1).expand(rows, 1, SAMPLING_BLOCK)).squeeze(1).double().cumsum(-1)
    within = torch.minimum(target - before, torch.nextafter(inner[:, -1:], torch.zeros_like(total)))
    return (block * SAMPLING_BLOCK + torch.searchsorted(inner, within, right=True)).squeeze(1)


def _cache_argument(model) -> str:
    # transformers 5.x renamed `past_key_values` to `cache` (the old name warns and goes away in 5.40).
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "cache" if "cache" in inspect.signature(base.forward).parameters else "past_key_values"


class LogprobSamplingEngine(HFSamplingEngine):
    """Sampling for PPO that also keeps log pi_theta of every sampled token, so pi_old needs no second forward
    pass of the policy (TRL's PPOTrainer takes them from its sampling pass too). They equal `token_logprobs` up
    to kernel noise (cached decoding vs one full forward). ``logprobs[prompt_index]`` holds one ``(R,)`` tensor
    per sample.

    With top-p 1 (PPO's default) it decodes with its own loop: the same model calls as `generate` (prefill,
    then one token per step on a KV cache, positions from the attention mask), but a token is drawn by inverse
    CDF (the first token whose cumulative probability exceeds a uniform number: exactly a draw from p) instead
    of `torch.multinomial`, which costs more than the model itself for a small model on CPU, and the log-prob
    is read at the drawn token alone. The draws are from the same distribution but not the same random numbers as
    `generate`'s. With top-p < 1 it calls `generate` and reads the log-probs from its raw logits."""

    def generate(self, prompt_ids, params):
        if params.num_samples != 1 or params.temperature <= 0:
            raise ValueError("LogprobSamplingEngine samples one answer per prompt at a temperature above 0")
        self.logprobs: dict[int, torch.Tensor] = {}
        return super().generate(prompt_ids, params)

    def _generate_chunk(self, chunk, offset, params):
        input_ids, attention_mask = left_pad(chunk, self.pad_id, self.model.device)
        if params.top_p < 1.0:
            generated, logprobs = self._generate_with_logits(input_ids, attention_mask, params)
        else:
            generated, logprobs = self._decode(input_ids, attention_mask, params)
        stop = set(self.stop_ids)
        samples = []
        for row, tokens in enumerate(generated.tolist()):
            sample = make_sample(self.tokenizer, stop, offset + row, 0, chunk[row], tokens)
            self.logprobs[offset + row] = logprobs[row, : len(sample.response_ids)].cpu()
            samples.append(sample)
        return samples

    def _generate_with_logits(self, input_ids, attention_mask, params):
        output = self.model.generate(
            input_ids=input_ids,
            attention_mask=attention_mask,
            output_logits=True,
            return_dict_in_generate=True,
            **self._generation_kwargs(params),
        )
        generated = output.sequences[:, input_ids.shape[1] :]
        logits = torch.stack(output.logits, dim=1).float() / params.temperature  # raw logits, before top-p
        return generated, torch.gather(logits, 2, generated.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, -1)

    def _decode(self, input_ids, attention_mask, params):
        batch = input_ids.shape[0]
        stop = torch.tensor(self.stop_ids, device=input_ids.device)
        cache = {_cache_argument(self.model): DynamicCache(config=self.model.config)}
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        logits = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            use_cache=True,
            logits_to_keep=1,
            **cache,
        ).logits[:, -1]
        finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        tokens, logprobs = [], []
        for step in range(params.max_new_tokens):
            scaled = logits.float()
            if params.temperature != 1.0:
                scaled = scaled / params.temperature
            peak = scaled.amax(dim=-1, keepdim=True)
            weights = torch.sub(scaled, peak).exp_()  # softmax's numerator; its sum is the normaliser
            drawn = sample_tokens(weights)
            token = torch.where(finished, self.pad_id, drawn)
            tokens.append(token)
            normaliser = weights.sum(dim=-1, keepdim=True).log_() + peak
            logprobs.append((scaled.gather(1, token.unsqueeze(1)) - normaliser).squeeze(1))
            finished |= torch.isin(token, stop)
            if bool(finished.all()) or step + 1 == params.max_new_tokens:
                break
            attention_mask = torch.cat([attention_mask, attention_mask.new_ones(batch, 1)], dim=1)
            position_ids = position_ids[:, -1:] + 1
            logits = self.model(
                input_ids=token.unsqueeze(1),
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                **cache,
            ).logits[:, -1]
        return torch.stack(tokens, dim=1), torch.stack(logprobs, dim=1)


def heldout_engine(config: PPOConfig, policy, tokenizer, rollout_engine):
    """The engine that answers the held-out prompts: the rollout engine, or a plain one for greedy answers,
    which PPO's log-prob sampler does not decode."""
    if config.heldout_temperature == 0 and isinstance(rollout_engine, LogprobSamplingEngine):
        return HFSamplingEngine(policy, tokenizer, batch_size=config.generation_batch_size)
    return rollout_engine


def make_engine(config: PPOConfig, policy, tokenizer):
    if config.logprobs_from_sampling:
        return LogprobSamplingEngine(policy, tokenizer, batch_size=config.generation_batch_size)
    return make_sampling_engine(config.sampling_backend, policy, tokenizer, batch_size=config.generation_batch_size)


def generate_and_score(
    engine,
    tokenizer,
    prompts: list[PromptRecord],
    prompt_ids: list[list[int]],
    scorers,
    config: PPOConfig,
    seed: int,
    clock: PhaseClock | None = None,
    temperature: float | None = None,
) -> RolloutBatch:
    """Rollouts of `prompts` with their rewards (``scorers``: R_h, R_s), seconds into ``clock``, at `temperature`
    (default: the rollout temperature; 0 is greedy). With a `LogprobSamplingEngine` the batch also carries pi_old's
    log-probs from the sampling pass."""
    clock = clock or PhaseClock()
    params = SamplingParams(
        num_samples=1,
        temperature=config.temperature if temperature is None else temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
        seed=seed,
    )
    with clock("generation"):
        samples = sorted(engine.generate(prompt_ids, params), key=lambda s: s.prompt_index)
    messages, texts = [p.messages for p in prompts], [s.text for s in samples]
    flags = [p.is_safety_prompt for p in prompts]
    with clock("scoring"):
        if scorers[0] is scorers[1]:  # R_h and R_s are one checkpoint: one pass gives both scores
            both = scorers[0].score(messages, texts).scores
            scores = combine_scores(both, both, flags, config.safety_threshold, config.flagged_reward)
        else:
            scores = score_samples(*scorers, messages, texts, flags, config.safety_threshold, config.flagged_reward)
    input_ids, attention_mask, response_mask = collate_rollouts(samples, tokenizer.pad_token_id)
    batch = RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        is_safety_prompt=torch.tensor(flags),
        is_truncated=torch.tensor([not s.finished for s in samples]),
        helpfulness=scores.helpfulness,
        safety=scores.safety,
        combined=scores.combined,
        use_safety=scores.use_safety,
    )
    if isinstance(engine, LogprobSamplingEngine):
        batch.logprobs = torch.zeros(response_mask.shape, dtype=torch.float32)
        for row, sample in enumerate(samples):
            p, r = len(sample.prompt_ids), len(sample.response_ids)
            batch.logprobs[row, p - 1 : p + r - 1] = engine.logprobs[sample.prompt_index]
    return batch


@torch.no_grad()
def forward_rollouts(
    models: PPOModels, batch: RolloutBatch, config: PPOConfig, clock: PhaseClock | None = None
) -> None:
    """Fill pi_old log-probs, pi_0 log-probs and V_old, in micro-batches (one model at a time, so each
    model's seconds are its own phase)."""
    clock = clock or PhaseClock()
    # Rows sorted by length into micro-batches, each cut to its own width: no FLOPs on padding. Each row's
    # values do not depend on its neighbours, so only kernel noise differs from one padded pass.
    order = torch.argsort(batch.attention_mask.sum(dim=1), stable=True)
    parts = [batch.select(rows) for rows in order.split(config.per_device_train_batch_size)]

    def gather(compute) -> torch.Tensor:
        out = torch.zeros(batch.response_mask.shape, dtype=torch.float32, device=batch.input_ids.device)
        for rows, part in zip(order.split(config.per_device_train_batch_size), parts):
            out[rows, : part.response_mask.shape[1]] = compute(part).float()
        return out

    autocast = models.accelerator.autocast
    with clock("logprobs"):
        with autocast():
            if batch.logprobs is None:  # not already taken from the sampling pass
                batch.logprobs = gather(
                    lambda part: token_logprobs(
                        models.policy,
                        part.input_ids,
                        part.attention_mask,
                        config.temperature,
                        positions=part.response_mask,
                    )
                )
            with reference_policy(models.policy, models.reference) as ref:
                batch.ref_logprobs = gather(
                    lambda part: token_logprobs(
                        ref, part.input_ids, part.attention_mask, config.temperature, positions=part.response_mask
                    )
                )
    with clock("values"), autocast():
        batch.values = gather(lambda part: models.value_model(part.input_ids, part.attention_mask)[:, :-1])


def compute_advantages(batch: RolloutBatch, config: PPOConfig, distributed: bool = False) -> None:
    """Per-token KL and reward (eq. 4), GAE advantages and returns, advantage whitening; in place.

    Whitening of R_c and of the advantages uses masked statistics over all processes (``distributed``)."""
    mask = batch.response_mask
    batch.kl = kl_per_token(batch.logprobs, batch.ref_logprobs, config.kl_estimator, mask)
    batch.rewards = shaped_ppo_reward(
        batch.combined,
        batch.kl,
        mask,
        config.kl_coef,
        is_truncated=batch.is_truncated,
        truncated_penalty=config.truncated_penalty,
        distributed=distributed,
    )
    batch.advantages, batch.returns = gae(batch.rewards, batch.values, mask, config.gamma, config.lam)
    if config.whiten_advantages:
        batch.advantages = masked_whiten(batch.advantages, mask, distributed=distributed)


# ---------------------------------------------------------------------------------------------------------
# Learn


def _all_finite(accelerator, *tensors) -> bool:
    ok = torch.tensor([float(all(bool(torch.isfinite(t).all()) for t in tensors))], device=accelerator.device)
    return bool(accelerator.reduce(ok, reduction="sum").item() == accelerator.num_processes)


UPDATE_STATISTICS = ("policy_loss", "value_loss", "clip_fraction", "value_clip_fraction", "approx_kl", "entropy")


def ppo_update(models: PPOModels, batch: RolloutBatch, config: PPOConfig, iteration: int) -> dict[str, float]:
    """PPO epochs over the batch, one optimiser step per mini-batch; returns mini-batch-averaged statistics.

    Each process holds ``mini_batch_size / processes`` rows of every mini-batch. Losses are sums over the
    process's tokens divided by the mini-batch's global token count, times the number of processes because
    DDP averages gradients: the step equals the one-process step on the whole mini-batch. A non-finite loss
    or gradient raises `NonFiniteError` before the optimiser step."""
    accelerator, optimizer = models.accelerator, models.optimizer
    policy, value_model = models.policy, models.value_model
    world = accelerator.num_processes
    distributed = world > 1
    n_mini = config.rollout_batch_size // config.mini_batch_size
    local_mini = len(batch) // n_mini
    micro = min(config.per_device_train_batch_size, local_mini)
    generator = torch.Generator().manual_seed(config.seed * 1_000_003 + iteration)
    totals = dict.fromkeys(UPDATE_STATISTICS, 0.0)
    steps = 0
    for _ in range(config.ppo_epochs):
        order = torch.randperm(len(batch), generator=generator)
        for m in range(n_mini):
            mini = batch.select(order[m * local_mini : (m + 1) * local_mini])
            tokens = global_token_count(mini.response_mask, distributed)
            sums = torch.zeros(len(UPDATE_STATISTICS), dtype=torch.float64, device=accelerator.device)
            for start in range(0, local_mini, micro):
                part = mini.select(range(start, start + micro))
                last = start + micro >= local_mini
                with contextlib.ExitStack() as stack:
                    if not last:  # gradients are all-reduced once per mini-batch, on its last micro-batch
                        stack.enter_context(accelerator.no_sync(policy))
                        stack.enter_context(accelerator.no_sync(value_model))
                    with accelerator.autocast():
                        logprobs, entropy = token_logprobs(
                            policy,
                            part.input_ids,
                            part.attention_mask,
                            config.temperature,
                            with_entropy=True,
                            positions=part.response_mask,
                        )
                        values = value_model(part.input_ids, part.attention_mask)[:, :-1]
                    pl = policy_loss(
                        logprobs, part.logprobs, part.advantages, part.response_mask, config.clip_range, tokens
                    )
                    vl = value_loss(
                        values, part.values, part.returns, part.response_mask, config.value_clip_range, tokens
                    )
                    accelerator.backward((pl.loss + vl.loss) * world)
                sums += torch.stack(
                    [
                        pl.loss.detach().double(),
                        vl.loss.detach().double(),
                        pl.clip_fraction.double(),
                        vl.clip_fraction.double(),
                        pl.approx_kl.double(),
                        masked_mean(entropy, part.response_mask, tokens).double(),
                    ]
                )
            if not _all_finite(accelerator, sums):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(f"non-finite PPO loss at iteration {iteration + 1}, mini-batch {m + 1}")
            policy_norm = accelerator.clip_grad_norm_(policy.parameters(), config.max_grad_norm)
            value_norm = accelerator.clip_grad_norm_(value_model.parameters(), config.max_grad_norm)
            if not _all_finite(accelerator, torch.as_tensor(policy_norm), torch.as_tensor(value_norm)):
                optimizer.zero_grad(set_to_none=True)
                raise NonFiniteError(f"non-finite gradient at iteration {iteration + 1}, mini-batch {m + 1}")
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            sums = accelerator.reduce(sums, reduction="sum") if distributed else sums
            for key, value in zip(UPDATE_STATISTICS, sums.tolist()):
                totals[key] += value
            steps += 1
    return {key: value / steps for key, value in totals.items()}


def rollout_metrics(accelerator, batch: RolloutBatch) -> dict[str, float]:
    """Means over all processes' rollouts: rewards, gate share, KL per answer, answer length, truncation; and
    the batch's real (non-pad) tokens, which the benchmark turns into FLOPs."""
    distributed = accelerator.num_processes > 1
    lengths = batch.response_mask.sum(dim=1).double()
    per_row = torch.stack(
        [
            batch.helpfulness.double(),
            batch.safety.double(),
            batch.combined.double(),
            batch.use_safety.double(),
            torch.where(batch.response_mask, batch.kl, 0.0).sum(dim=1).double(),  # KL of each answer
            lengths,
            batch.is_truncated.double(),
            batch.attention_mask.sum(dim=1).double(),
        ]
    )
    sums = torch.cat([per_row.sum(dim=1), per_row.new_tensor([float(len(batch))])])
    if distributed:
        sums = accelerator.reduce(sums, reduction="sum")
    names = (
        "reward/helpfulness",
        "reward/safety",
        "reward/combined",
        "reward/gated_to_safety",
        "kl",
        "response_length",
        "truncated_share",
        "sequence_length",
    )
    out = {name: value / sums[-1].item() for name, value in zip(names, sums[:-1].tolist())}
    out["explained_variance"] = float(
        explained_variance(batch.values, batch.returns, batch.response_mask, distributed=distributed)
    )
    return out


# ---------------------------------------------------------------------------------------------------------
# Checkpoints


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete iteration checkpoint (published by rename, with its trainer state)."""
    root = output_dir / CHECKPOINTS
    if not root.is_dir():
        return None
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _CHECKPOINT_NAME.match(p.name)) and (p / TRAINER_STATE).is_file()
    ]
    return max(found)[1] if found else None


def save_checkpoint(accelerator, output_dir: Path, state: dict, keep: int, best_policy: Path | None = None) -> Path:
    """accelerate's save_state (models, optimiser, RNG of every process) plus our trainer state, written to a
    temporary folder and renamed, so a kill at any moment leaves the previous checkpoint whole.

    ``best_policy`` (the weights of ``state['best_iteration']``) is published inside the same folder, so the
    best policy and the iteration it belongs to are renamed together: a kill can never leave one without the
    other."""
    root = output_dir / CHECKPOINTS
    final = root / f"iteration-{state['iteration']:06d}"
    tmp = root / f"{final.name}.tmp"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        if best_policy is not None:
            _link_or_copy(best_policy, tmp / BEST_POLICY)
        atomic_write_json(tmp / TRAINER_STATE, state)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        done = sorted((int(m.group(1)), p) for p in root.iterdir() if (m := _CHECKPOINT_NAME.match(p.name)))
        for _, old in done[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def _link_or_copy(source: Path, target: Path) -> None:
    # A hard link costs nothing; the source is only ever replaced by rename, so the link keeps the old bytes.
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _trainable_state(policy) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in _unwrap(policy).named_parameters() if p.requires_grad}


def save_best_policy(accelerator, policy, path: Path) -> None:
    """The trainable weights (the adapter with LoRA) of the best held-out policy, in safetensors."""
    state = _trainable_state(policy)
    if accelerator.is_main_process:
        tmp = path.with_name(path.name + ".tmp")
        save_file(state, str(tmp))
        os.replace(tmp, path)
    accelerator.wait_for_everyone()


def load_best_policy(policy, path: Path) -> None:
    missing = set(_trainable_state(policy)) - set(load_file(str(path)))
    if missing:
        raise RecipeError(f"{path}: does not match the policy (missing {sorted(missing)[:3]})")
    _unwrap(policy).load_state_dict(load_file(str(path)), strict=False)


def save_final_policy(accelerator, policy, tokenizer, output_dir: Path, merge_lora: bool) -> None:
    """The policy as an ordinary checkpoint (LoRA merged) that later stages load, in safetensors."""
    model = _unwrap(accelerator.unwrap_model(policy))
    if not (_is_peft(model) and merge_lora):
        save_full_model(policy, output_dir, accelerator, tokenizer)
        return
    model = model.merge_and_unload()
    if accelerator.is_main_process:
        model.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    accelerator.wait_for_everyone()


# ---------------------------------------------------------------------------------------------------------
# The trainer


def _tracker_config(config: PPOConfig) -> dict:
    return {
        k: (v if isinstance(v, (int, float, str, bool)) else json.dumps(v)) for k, v in config_to_dict(config).items()
    }


@dataclass
class TrainerState:
    """What a checkpoint records beside the models, optimiser and RNG (``trainer_state.json``)."""

    iteration: int = 0  # iterations finished
    prompts_consumed: int = 0
    best_score: float | None = None  # best held-out mean R_c so far
    best_iteration: int | None = None  # the iteration whose policy scored it (0: the policy at PPO start)
    evals_without_improvement: int = 0
    stopped_early: bool = False

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainerState:
        return cls(**{f.name: values[f.name] for f in fields(cls) if f.name in values})


class PPOTrainer:
    """The PPO stage as a recipe object (torchtune's shape): `setup` builds models, optimiser and data and
    resumes from the last checkpoint; `train` runs the iterations; `save_checkpoint` writes a resume point;
    `cleanup` saves the final (best held-out) policy and the summary. `run` does the four in order.

    Scorers and prompts may be passed in (the pipeline keeps RMs in memory; tests pass fakes); otherwise they
    are built from the config. ``on_iteration_end(iteration, metrics)`` is called after each checkpointed
    iteration (tests use it to simulate a kill).
    """

    def __init__(
        self,
        config: PPOConfig,
        *,
        helpfulness_scorer=None,
        safety_scorer=None,
        prompts: list[PromptRecord] | None = None,
        heldout_prompts: list[PromptRecord] | None = None,
        on_iteration_end=None,
    ):
        self.config = config
        self.output_dir = Path(config.output_dir)
        self.scorers = (helpfulness_scorer, safety_scorer)
        self.prompts = prompts
        self.heldout_prompts = heldout_prompts
        self.on_iteration_end = on_iteration_end
        self.state = TrainerState()
        self.best_policy: Path | None = None  # the weights of state.best_iteration, once evaluated
        self.metrics: dict = {}

    # -- setup ------------------------------------------------------------------------------------------

    def setup(self) -> None:
        config = self.config
        trackers = [t for t in config.report_to if t != "none"]
        self.accelerator = accelerator = Accelerator(
            mixed_precision="bf16" if config.bf16 else "no",
            log_with=trackers or None,
            project_dir=str(self.output_dir),
        )
        config.validate(accelerator.num_processes)
        check_chat_format(config.chat_format)
        if accelerator.is_main_process:
            self.output_dir.mkdir(parents=True, exist_ok=True)
        if self.prompts is None:
            self.prompts, loaded_heldout = load_ppo_prompts(config)
            self.heldout_prompts = loaded_heldout if self.heldout_prompts is None else self.heldout_prompts
        self.heldout_prompts = self.heldout_prompts or []
        helpfulness, safety = self.scorers
        device = str(accelerator.device)
        helpfulness = helpfulness or build_scorer(config.helpfulness_model, "helpfulness", config, device)
        if safety is None and config.safety_model == config.helpfulness_model and self.scorers[0] is None:
            safety = helpfulness  # one checkpoint for both: loaded once, scored once
        self.scorers = (helpfulness, safety or build_scorer(config.safety_model, "safety", config, device))

        set_seed(config.seed)
        policy, reference, value_model, self.tokenizer = build_models(config)
        check_chat_format(config.chat_format, self.tokenizer)
        optimizer = make_optimizer(policy, value_model, config)
        policy, value_model, optimizer = accelerator.prepare(policy, value_model, optimizer)
        if reference is not None:
            reference = reference.to(accelerator.device).eval()
        policy.eval()
        value_model.eval()
        self.models = PPOModels(accelerator, policy, reference, value_model, optimizer)
        generator = _unwrap(accelerator.unwrap_model(policy))
        self.engine = make_engine(config, generator, self.tokenizer)
        self.heldout_engine = heldout_engine(config, generator, self.tokenizer, self.engine)
        self.prompt_ids = [encode_prompt(self.tokenizer, p.messages, config.chat_format) for p in self.prompts]
        self.heldout_ids = [
            encode_prompt(self.tokenizer, p.messages, config.chat_format) for p in self.heldout_prompts
        ]
        self.load_checkpoint()
        if trackers:
            accelerator.init_trackers("ppo", config=_tracker_config(config))

    def load_checkpoint(self) -> None:
        checkpoint = latest_checkpoint(self.output_dir)
        if checkpoint is None:
            return
        self.accelerator.load_state(str(checkpoint))
        self.state = TrainerState.from_dict(json.loads((checkpoint / TRAINER_STATE).read_text()))
        self.best_policy = checkpoint / BEST_POLICY if (checkpoint / BEST_POLICY).is_file() else None
        self.accelerator.print(f"resuming PPO from {checkpoint} (iteration {self.state.iteration} done)")

    # -- train ------------------------------------------------------------------------------------------

    @property
    def evaluating(self) -> bool:
        return bool(self.heldout_prompts) and self.config.eval_every > 0

    def where(self) -> str:
        last = latest_checkpoint(self.output_dir)
        return f"training stopped; last good checkpoint: {last if last else 'none (no iteration finished)'}"

    def train(self) -> None:
        config = self.config
        if self.evaluating and self.state.best_score is None:
            self.evaluate(0)  # the policy at PPO start is the baseline that training must beat
        bar = tqdm(
            total=config.num_iterations,
            initial=self.state.iteration,
            desc="PPO",
            unit="it",
            disable=not (config.progress and self.accelerator.is_local_main_process),
        )
        while self.state.iteration < config.num_iterations and not self.state.stopped_early:
            metrics = self.train_iteration()
            bar.update(1)
            bar.set_postfix(
                {
                    "R_c": f"{metrics['reward/combined']:.3f}",
                    "kl": f"{metrics['kl']:.3f}",
                    "gen": f"{metrics['time/generation'] / metrics['time/iteration']:.0%}",
                }
            )
            if self.on_iteration_end is not None:
                self.on_iteration_end(self.state.iteration, metrics)
        bar.close()

    def rollouts(self, iteration: int, clock: PhaseClock) -> RolloutBatch:
        """This process's share of the iteration's rollouts, scored, on its device."""
        config, accelerator = self.config, self.accelerator
        world, rank = accelerator.num_processes, accelerator.process_index
        local = config.rollout_batch_size // world
        indices = prompt_indices(len(self.prompts), iteration, config.rollout_batch_size, config.seed)
        mine = indices[rank * local : (rank + 1) * local]
        seed = (config.seed * 1_000_003 + iteration) * world + rank
        with gathered_full_weights(self.models.policy, accelerator):  # FSDP/ZeRO-3: generate on whole weights
            batch = generate_and_score(
                self.engine,
                self.tokenizer,
                [self.prompts[i] for i in mine],
                [self.prompt_ids[i] for i in mine],
                self.scorers,
                config,
                seed,
                clock,
            )
        return batch.to(accelerator.device)

    def train_iteration(self) -> dict:
        """generate -> score -> learn, then evaluate and checkpoint when due; returns the iteration's metrics."""
        config, accelerator, state = self.config, self.accelerator, self.state
        iteration = state.iteration
        clock = PhaseClock(accelerator.device)
        started = time.perf_counter()
        batch = self.rollouts(iteration, clock)
        if not _all_finite(accelerator, batch.combined):
            raise NonFiniteError(f"non-finite reward at iteration {iteration + 1}; {self.where()}")
        train_started = time.perf_counter()
        forward_rollouts(self.models, batch, config, clock)
        compute_advantages(batch, config, distributed=accelerator.num_processes > 1)
        if not _all_finite(accelerator, batch.rewards, batch.advantages):
            raise NonFiniteError(f"non-finite reward or advantage at iteration {iteration + 1}; {self.where()}")
        with clock("update"):
            try:
                losses = ppo_update(self.models, batch, config, iteration)
            except NonFiniteError as error:
                raise NonFiniteError(f"{error}; {self.where()}") from None
        train_s = time.perf_counter() - train_started

        state.iteration = iteration + 1
        state.prompts_consumed = state.iteration * config.rollout_batch_size
        if self.evaluating and state.iteration % config.eval_every == 0:
            with clock("evaluation"):
                self.evaluate(state.iteration)
            if config.early_stopping_patience and state.evals_without_improvement >= config.early_stopping_patience:
                state.stopped_early = True
        metrics = {**rollout_metrics(accelerator, batch), **losses}
        if state.iteration % config.save_every == 0 or state.iteration == config.num_iterations or state.stopped_early:
            with clock("checkpoint"):
                self.save_checkpoint()
        elapsed = time.perf_counter() - started
        metrics.update({f"time/{phase}": seconds for phase, seconds in clock.seconds.items()})
        metrics.update(
            {
                "time/training": train_s,
                "time/other": elapsed - sum(clock.seconds.values()),
                "time/iteration": elapsed,
                "rollouts_per_s": config.rollout_batch_size / elapsed,
            }
        )
        accelerator.log(metrics, step=state.iteration)
        if accelerator.is_main_process:
            append_jsonl(self.output_dir / "metrics.jsonl", [{"iteration": state.iteration, **metrics}])
        self.metrics = metrics
        return metrics

    def evaluate(self, iteration: int) -> None:
        """Held-out mean R_c; a new best (by more than ``early_stopping_min_delta``) saves its policy, which
        the next checkpoint publishes together with ``best_iteration``."""
        with gathered_full_weights(self.models.policy, self.accelerator):
            score = evaluate_heldout(
                self.accelerator,
                self.heldout_engine,
                self.tokenizer,
                self.heldout_prompts,
                self.heldout_ids,
                self.scorers,
                self.config,
            )
        self.accelerator.log({"heldout/combined": score}, step=iteration)
        state = self.state
        if state.best_score is None or score > state.best_score + self.config.early_stopping_min_delta:
            state.best_score, state.best_iteration, state.evals_without_improvement = score, iteration, 0
            self.best_policy = self.output_dir / PENDING_BEST_POLICY
            save_best_policy(self.accelerator, self.models.policy, self.best_policy)
        else:
            state.evals_without_improvement += 1

    # -- save and finish --------------------------------------------------------------------------------

    def save_checkpoint(self) -> Path:
        saved = save_checkpoint(
            self.accelerator,
            self.output_dir,
            self.state.to_dict(),
            self.config.keep_checkpoints,
            best_policy=self.best_policy,
        )
        if self.best_policy is not None:
            self.best_policy = saved / BEST_POLICY
        return saved

    def cleanup(self) -> dict:
        """Load the best held-out policy, save it as the stage's model, write the summary and end trackers."""
        accelerator, state, policy = self.accelerator, self.state, self.models.policy
        if state.best_iteration is not None and self.best_policy is not None:
            load_best_policy(accelerator.unwrap_model(policy), self.best_policy)
            if accelerator.is_main_process:
                shutil.copyfile(self.best_policy, self.output_dir / BEST_POLICY)
                (self.output_dir / PENDING_BEST_POLICY).unlink(missing_ok=True)
        save_final_policy(accelerator, policy, self.tokenizer, self.output_dir, self.config.merge_lora)
        history = {row["iteration"]: row for row in read_jsonl_tolerant(self.output_dir / "metrics.jsonl")}
        summary = {
            "iterations": state.iteration,
            "stopped_early": state.stopped_early,
            "best_iteration": state.best_iteration,
            "best_heldout_combined": state.best_score,
            "final_metrics": self.metrics or history.get(state.iteration, {}),
            "train_prompts": len(self.prompts),
            "heldout_prompts": len(self.heldout_prompts),
            "config": config_to_dict(self.config),
        }
        if accelerator.is_main_process:
            atomic_write_json(self.output_dir / COMPLETE_MARKER, summary)
        accelerator.end_training()
        return summary

    def run(self) -> dict:
        """The whole stage; a finished run returns its saved summary, a killed one resumes."""
        if (self.output_dir / COMPLETE_MARKER).is_file():
            return json.loads((self.output_dir / COMPLETE_MARKER).read_text())
        self.setup()
        self.train()
        return self.cleanup()


def evaluate_heldout(
    accelerator, engine, tokenizer, heldout: list[PromptRecord], heldout_ids, scorers, config: PPOConfig
) -> float:
    """Mean R_c (raw scale) of one seeded answer per held-out prompt, over all processes: the early-stopping
    criterion (sec. 3.2.3: "early stopping on held-out prompts"). The same seed each time, so evaluations
    differ by the policy only. The answers are sampled at ``heldout_temperature`` (greedy at 0): `engine` must
    decode at that temperature (`heldout_engine`)."""
    rank, world = accelerator.process_index, accelerator.num_processes
    mine = list(range(rank, len(heldout), world))
    total = torch.zeros(2, dtype=torch.float64, device=accelerator.device)
    if mine:
        batch = generate_and_score(
            engine,
            tokenizer,
            [heldout[i] for i in mine],
            [heldout_ids[i] for i in mine],
            scorers,
            config,
            seed=config.seed + 7919,
            temperature=config.heldout_temperature,
        )
        total += torch.tensor(
            [batch.combined.double().sum().item(), float(len(mine))], dtype=torch.float64, device=accelerator.device
        )
    if world > 1:
        total = accelerator.reduce(total, reduction="sum")
    return total[0].item() / max(total[1].item(), 1.0)


def run_ppo(
    config: PPOConfig,
    *,
    helpfulness_scorer=None,
    safety_scorer=None,
    prompts: list[PromptRecord] | None = None,
    heldout_prompts: list[PromptRecord] | None = None,
    on_iteration_end=None,
) -> dict:
    """Train the policy with PPO and save it to ``config.output_dir``; returns a summary (see `PPOTrainer`).

    A run that was killed resumes from its last complete iteration (weights, optimiser, RNG, data position);
    a finished run returns its saved summary."""
    return PPOTrainer(
        config,
        helpfulness_scorer=helpfulness_scorer,
        safety_scorer=safety_scorer,
        prompts=prompts,
        heldout_prompts=heldout_prompts,
        on_iteration_end=on_iteration_end,
    ).run()


__all__ = [
    "NonFiniteError",
    "PPOConfig",
    "PPOModels",
    "PPOTrainer",
    "PhaseClock",
    "RolloutBatch",
    "TokenValueModel",
    "TrainerState",
    "collate_rollouts",
    "compute_advantages",
    "forward_rollouts",
    "generate_and_score",
    "latest_checkpoint",
    "ppo_update",
    "prompt_indices",
    "run_ppo",
    "token_logprobs",
]
