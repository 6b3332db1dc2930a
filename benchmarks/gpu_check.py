"""One-command GPU check: environment, bf16 step throughput and memory, generation, one paper-shape PPO iteration.

    PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --output_dir $OUT/gpu      # on one GPU, < 8 minutes
    python benchmarks/gpu_check.py --smoke --output_dir /tmp/gpu_check             # the same code on CPU, tiny shapes

Writes `gpu_check.json` and `gpu_check.md` to --output_dir, rewritten after every section, so a run cut short
keeps what it finished. Sections, in order:

1. environment: torch, CUDA, GPU, and which of the project's dependencies import (one line names the missing);
2. matmul peak: FLOP/s of large bf16 matmuls on this GPU, the denominator of every MFU below;
3. steps: SFT, reward and PPO steps on Llama-shaped models with random weights (no download) - a 1.1B shape
   (TinyLlama's) with full fine-tuning and the Llama 2 7B shape (arXiv 2307.09288, table 1) with LoRA. Each
   reports tokens/s, MFU, peak memory and what `llama2-align dry-run` (alignment/dry_run.py) predicts for the
   same settings;
4. generation: the project's sampling engine (rlhf/sampling.py, one prefill per prompt) against plain
   `generate(num_return_sequences=K)`, K = 4 and 16, on the 1.1B shape;
5. PPO iteration: one iteration at the paper's batch shape (512 rollouts, mini-batch 64; sec. 3.2.3) on the
   1.1B shape, split into generation and training time.

The code paths are the project's: `rlhf.ppo` (generate_and_score, forward_rollouts, compute_advantages,
ppo_update, make_optimizer), `rlhf.ppo_math` through them, `reward.loss.ranking_loss` for the reward step,
`rlhf.sampling.HFSamplingEngine` for generation, accelerate for mixed precision as the stages use it. Nothing
here imports trl or datasets, which the GPU machine lacks. Inputs are random token ids and reward scores are
random numbers (reward-model scoring is not timed); what is measured is speed and memory, never quality.

MFU counts model FLOPs in PaLM's convention (Chowdhery et al. 2022, app. B): a forward pass costs
2 N + 4 L h s FLOPs per token (N = matmul parameters, input embedding excluded; L layers, h hidden size, s
sequence length); a full backward twice that, a LoRA backward once that (input gradients only); recomputation
under gradient checkpointing is not counted.

A global budget (--budget_s) skips the sections it cannot reach and stops a section that overruns, with a note.
"""

# ruff: noqa: PLC0415 - the environment report runs before anything that may be missing on the GPU machine is
# imported; each section imports what it needs when it runs, so a missing package fails one section, not all.
from __future__ import annotations

import argparse
import contextlib
import copy
import datetime
import importlib
import importlib.metadata
import importlib.util
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import time
import traceback
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.data import PromptRecord, atomic_write_json, atomic_write_text  # noqa: E402
from alignment.distributed import gathered_full_weights  # noqa: E402
from alignment.dry_run import GIB, OVERHEAD, Launch, architecture_from_config, plan  # noqa: E402
from alignment.ratings import RATINGS  # noqa: E402
from benchmarks.common import markdown_table, measure_matmul_peak, synchronize  # noqa: E402
from benchmarks.sft_throughput import model_flops_params  # noqa: E402
from reward.loss import margin_for, ranking_loss  # noqa: E402
from reward.scoring import ScoreBatch  # noqa: E402
from rlhf.ppo import (  # noqa: E402
    PhaseClock,
    PPOModels,
    RolloutBatch,
    TokenValueModel,
    collate_rollouts,
    compute_advantages,
    forward_rollouts,
    generate_and_score,
    make_optimizer,
    ppo_update,
)
from rlhf.ppo_config import PPOConfig  # noqa: E402
from rlhf.sampling import HFSamplingEngine, Sample, SamplingParams  # noqa: E402
from rlhf.scoring import combine_scores  # noqa: E402

# Import name -> distribution name. "required": what pyproject.toml lists; "optional": its extras.
DEPENDENCIES = {
    "required": {
        "torch": "torch",
        "transformers": "transformers",
        "accelerate": "accelerate",
        "peft": "peft",
        "trl": "trl",
        "datasets": "datasets",
        "sentencepiece": "sentencepiece",
        "google.protobuf": "protobuf",
        "gguf": "gguf",
        "yaml": "pyyaml",
        "tqdm": "tqdm",
        "tensorboard": "tensorboard",
        "matplotlib": "matplotlib",
        "safetensors": "safetensors",
        "tokenizers": "tokenizers",
    },
    "optional": {"vllm": "vllm", "deepspeed": "deepspeed", "flash_attn": "flash-attn"},
}

CHECK_NEEDS = ("torch", "transformers", "accelerate", "peft", "yaml", "safetensors")

# Llama-shaped architectures: TinyLlama-1.1B (a Llama 2 architecture with GQA), Llama 2 7B (table 1), and a
# tiny one for --smoke.
SHAPES = {
    "1.1b": dict(
        hidden_size=2048,
        intermediate_size=5632,
        num_hidden_layers=22,
        num_attention_heads=32,
        num_key_value_heads=4,
        vocab_size=32000,
    ),
    "7b": dict(
        hidden_size=4096,
        intermediate_size=11008,
        num_hidden_layers=32,
        num_attention_heads=32,
        num_key_value_heads=32,
        vocab_size=32000,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        vocab_size=512,
    ),
}
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
LORA = dict(r=16, alpha=32)  # the stages' LoRA defaults (sft, reward and PPO configs), all seven projections


@dataclass
class StepCase:
    """One training step to time: stage, shape, and the settings the dry-run is asked about."""

    stage: str  # sft, reward, ppo
    shape: str
    lora: bool
    batch: int  # sequences (SFT), pairs (reward), rollouts per PPO step (= one mini-batch)
    seq_len: int  # SFT / reward: tokens per sequence; PPO: prompt + response tokens
    per_device: int = 0  # PPO micro-batch (rollouts per forward pass)
    checkpointing: bool = False
    weights: str = "float32"  # dtype the weights are loaded in; bf16 autocast runs on top on CUDA

    @property
    def name(self) -> str:
        return f"{self.stage} {self.shape} {'LoRA' if self.lora else 'full'}"


@dataclass
class Settings:
    steps: list[StepCase]
    timed_steps: int
    gen_shape: str
    gen_prompts: int
    gen_prompt_len: int
    gen_new_tokens: int
    gen_batch: int
    gen_ks: tuple[int, ...]
    ppo_shape: str
    ppo_rollouts: int
    ppo_mini_batch: int
    ppo_per_device: int
    ppo_gen_batch: int
    ppo_prompt_len: int
    ppo_new_tokens: int
    matmul_size: int
    budget_s: float
    bf16: bool  # bf16 weights where the case says so, and bf16 autocast (accelerate mixed precision)
    # Seconds a section needs at least; a section is skipped, with a note, when less is left.
    min_section_s: dict = field(default_factory=dict)


def gpu_settings(budget_s: float) -> Settings:
    # Paper-scale recipes (recipes/llama2-7b): SFT 4 x 4096 per device with checkpointing, reward 8 pairs per
    # device, PPO 4 rollouts per forward. Sequences are halved here so the whole check fits 8 minutes.
    steps = [
        StepCase("sft", "1.1b", False, batch=4, seq_len=2048),
        StepCase("reward", "1.1b", False, batch=4, seq_len=1024),
        StepCase("ppo", "1.1b", False, batch=64, seq_len=512, per_device=8, weights="bfloat16"),
        StepCase("sft", "7b", True, batch=4, seq_len=2048, checkpointing=True, weights="bfloat16"),
        StepCase("reward", "7b", True, batch=4, seq_len=1024, checkpointing=True, weights="bfloat16"),
        StepCase("ppo", "7b", True, batch=32, seq_len=512, per_device=4, weights="bfloat16"),
    ]
    return Settings(
        steps=steps,
        timed_steps=3,
        gen_shape="1.1b",
        gen_prompts=16,
        gen_prompt_len=512,
        gen_new_tokens=128,
        gen_batch=64,
        gen_ks=(4, 16),
        ppo_shape="1.1b",
        ppo_rollouts=512,
        ppo_mini_batch=64,
        ppo_per_device=8,
        ppo_gen_batch=64,
        ppo_prompt_len=128,
        ppo_new_tokens=128,
        matmul_size=8192,
        budget_s=budget_s,
        bf16=True,
        min_section_s={"matmul_peak": 5, "steps": 30, "generation": 45, "ppo_iteration": 60},
    )


def smoke_settings(budget_s: float, bf16: bool = False) -> Settings:
    # The GPU cases (LoRA, checkpointing, weight dtypes) on the tiny shape, with tiny batches.
    sizes = {
        "sft": dict(batch=2, seq_len=32),
        "reward": dict(batch=2, seq_len=32),
        "ppo": dict(batch=4, seq_len=24, per_device=2),
    }
    steps = [replace(case, shape="tiny", **sizes[case.stage]) for case in gpu_settings(budget_s).steps]
    return Settings(
        steps=steps,
        timed_steps=1,
        gen_shape="tiny",
        gen_prompts=2,
        gen_prompt_len=12,
        gen_new_tokens=6,
        gen_batch=16,
        gen_ks=(4, 16),
        ppo_shape="tiny",
        ppo_rollouts=16,
        ppo_mini_batch=8,
        ppo_per_device=4,
        ppo_gen_batch=8,
        ppo_prompt_len=8,
        ppo_new_tokens=6,
        matmul_size=256,
        budget_s=budget_s,
        bf16=bf16,
    )


# ---------------------------------------------------------------------------------------------------------
# Budget


class BudgetExceeded(Exception):
    """Raised by SIGALRM when the global budget runs out inside a section."""


def _on_alarm(signum, frame):
    raise BudgetExceeded()


@contextlib.contextmanager
def alarm_at(deadline: float):
    """Interrupt the block at `deadline` (time.monotonic) with BudgetExceeded; main thread, POSIX only."""
    usable = hasattr(signal, "SIGALRM") and _is_main_thread()
    if usable:
        previous = signal.signal(signal.SIGALRM, _on_alarm)
        signal.setitimer(signal.ITIMER_REAL, max(deadline - time.monotonic(), 0.001))
    try:
        yield
    finally:
        if usable:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)


def _is_main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# ---------------------------------------------------------------------------------------------------------
# Models and inputs


class IdTokenizer:
    """What the sampling engine and rollout collation read from a tokenizer, over bare ids (no vocabulary
    file is needed for random weights): Llama's pad 0 / bos 1 / eos 2, and ids decoded as numbers."""

    pad_token_id, bos_token_id, eos_token_id, unk_token_id = PAD_ID, BOS_ID, EOS_ID, None

    def __init__(self, vocab_size: int):
        self.vocab_size = vocab_size

    def __len__(self) -> int:
        return self.vocab_size

    def convert_tokens_to_ids(self, token: str):
        return None

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        return " ".join(str(int(i)) for i in ids if not (skip_special_tokens and int(i) in (PAD_ID, BOS_ID, EOS_ID)))


def llama_config(shape: str, **extra):
    from transformers import LlamaConfig

    return LlamaConfig(
        **SHAPES[shape],
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        bos_token_id=BOS_ID,
        eos_token_id=EOS_ID,
        **extra,
    )


def build_model(kind: str, shape: str, dtype: str, device: str, seed: int = 0):
    """A randomly initialised causal LM or one-label sequence classifier, built directly on `device`."""
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    torch.manual_seed(seed)
    cls = AutoModelForCausalLM if kind == "causal" else AutoModelForSequenceClassification
    config = llama_config(shape, num_labels=1) if kind == "classifier" else llama_config(shape)
    with torch.device(device):
        try:
            model = cls.from_config(config, dtype=getattr(torch, dtype))
        except TypeError:  # transformers 4 names it torch_dtype; the environment report shows which one ran
            model = cls.from_config(config, torch_dtype=getattr(torch, dtype))
    model.config.use_cache = False
    return model


def enable_checkpointing(model) -> None:
    """Activation checkpointing as the recipes' `gradient_checkpointing: true` asks the Trainer for it."""
    if hasattr(model, "activation_checkpointing_enable"):  # newer transformers 5 renamed it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def add_lora(model, task_type: str):
    # peft is only needed for the LoRA cases; the full fine-tuning cases run without it.
    from peft import LoraConfig, get_peft_model

    return get_peft_model(
        model,
        LoraConfig(
            r=LORA["r"],
            lora_alpha=LORA["alpha"],
            lora_dropout=0.0,
            task_type=task_type,
            target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"],
        ),
    )


def random_ids(rows: int, length: int, vocab: int, generator: torch.Generator) -> torch.Tensor:
    """Token ids that avoid pad / bos / eos, so no row ends or pads early."""
    return torch.randint(3, vocab, (rows, length), generator=generator)


# ---------------------------------------------------------------------------------------------------------
# Measurement helpers


def forward_flops_per_token(model_params: int, shape: str, seq_len: int) -> float:
    s = SHAPES[shape]
    return 2 * model_params + 4 * s["num_hidden_layers"] * s["hidden_size"] * seq_len


def counted_bytes(modules, optimizer) -> dict:
    """Bytes of distinct parameters, of the trainable ones (= their gradients) and of the optimiser state."""
    seen, weights, trainable = set(), 0, 0
    for module in modules:
        for p in module.parameters():
            if id(p) in seen:
                continue
            seen.add(id(p))
            weights += p.numel() * p.element_size()
            if p.requires_grad:
                trainable += p.numel() * p.element_size()
    states = sum(
        t.numel() * t.element_size()
        for state in optimizer.state.values()
        for t in state.values()
        if torch.is_tensor(t)
    )
    return {"weights_gib": weights / GIB, "gradients_gib": trainable / GIB, "optimizer_states_gib": states / GIB}


def release(accelerator, device: str) -> None:
    """Free the last case's models on CUDA (accelerate's references, then the cache) and restart the peak.

    Nothing on CPU: a gc pass costs ~1 s there once trl / transformers are imported, and the smoke shapes are tiny.
    """
    if device == "cuda":
        accelerator.free_memory()  # drops accelerate's references to prepared models, then gc and empty_cache
        torch.cuda.reset_peak_memory_stats()


def peak_memory(device: str, base: int) -> dict:
    if device != "cuda":
        return {"peak_allocated_gib": None, "peak_reserved_gib": None}  # the allocator's counters are CUDA's
    return {
        "peak_allocated_gib": (torch.cuda.max_memory_allocated() - base) / GIB,
        "peak_reserved_gib": torch.cuda.max_memory_reserved() / GIB,
    }


def dry_run_prediction(
    case: StepCase, bf16: bool, mini_batch: int | None = None, generation_batch: int | None = None
) -> dict:
    """`llama2-align dry-run`'s memory lines for one process with the case's settings (alignment.dry_run.plan).

    PPO: a step case is one mini-batch of rollouts and generates nothing (generation batch = micro-batch, so
    the training phase is the peak the dry-run picks); the PPO iteration passes its own mini- and generation
    batch."""
    arch = architecture_from_config(llama_config(case.shape).to_dict())
    launch = Launch("gpu_check: one process", "single", 1, 1, bf16=bf16)
    if case.stage == "ppo":
        response = case.seq_len // 2
        recipe = {
            "rollout_batch_size": case.batch,
            "mini_batch_size": mini_batch or case.batch,
            "per_device_train_batch_size": case.per_device,
            "generation_batch_size": generation_batch or case.per_device,
            "max_prompt_length": case.seq_len - response,
            "max_new_tokens": response,
            "use_lora": case.lora,
            "lora_r": LORA["r"],
            "offload_reward_models": True,
        }  # the check holds no reward models (random scores)
    else:
        recipe = {
            "global_batch_size": case.batch,
            "per_device_train_batch_size": case.batch,
            "max_length": case.seq_len,
            "use_lora": case.lora,
            "lora_r": LORA["r"],
            "gradient_checkpointing": case.checkpointing,
        }
    _, lines = plan(recipe, case.stage, launch, arch)
    lines_gib = {line.what: line.bytes / GIB for line in lines}
    total = sum(lines_gib.values())
    return {"lines_gib": lines_gib, "sum_gib": total, "total_with_overhead_gib": total * OVERHEAD}


def timed(fn, device: str) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------------------------------------
# Sections


def environment_report() -> dict:
    report = {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "cpu_threads": torch.get_num_threads(),
    }
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        report.update(
            gpu=props.name,
            gpu_count=torch.cuda.device_count(),
            gpu_memory_gib=props.total_memory / GIB,
            compute_capability=f"{props.major}.{props.minor}",
            bf16_supported=torch.cuda.is_bf16_supported(),
            nvidia_smi=nvidia_smi(),
        )
    packages, missing = {}, {"required": [], "optional": []}
    for group, names in DEPENDENCIES.items():
        for module, dist in names.items():
            try:
                # The check's own dependencies are imported; the others only located (importing trl, datasets,
                # matplotlib and tensorboard would take longer than the whole --smoke run).
                if module in CHECK_NEEDS:
                    importlib.import_module(module)
                elif importlib.util.find_spec(module) is None:
                    raise ImportError(f"no module named {module}")
                packages[dist] = importlib.metadata.version(dist)
            except Exception as error:  # a broken install counts as missing, with the reason kept
                packages[dist] = None
                missing[group].append(dist)
                report.setdefault("import_errors", {})[dist] = f"{type(error).__name__}: {error}"[:200]
    report["packages"] = packages
    report["missing"] = missing
    report["missing_line"] = (
        f"missing: {', '.join(missing['required']) or 'none'} (required); "
        f"{', '.join(missing['optional']) or 'none'} (optional)"
    )
    return report


def nvidia_smi() -> str | None:
    """Driver, clocks and power limit: what explains a low matmul peak (a capped or shared GPU)."""
    if shutil.which("nvidia-smi") is None:
        return None
    query = "name,driver_version,memory.total,clocks.max.sm,power.limit,mig.mode.current"
    try:
        return (
            subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=20,
            ).stdout.strip()
            or None
        )
    except (OSError, subprocess.SubprocessError):
        return None


def matmul_peak(settings: Settings, device: str) -> dict:
    dtype = torch.bfloat16 if settings.bf16 else torch.float32
    flops = measure_matmul_peak(
        dtype,
        size=settings.matmul_size,
        device=device,
        repeats=5 if device == "cuda" else 2,
        seconds_per_run=0.3 if device == "cuda" else 0.05,
    )
    return {
        "dtype": str(dtype).replace("torch.", ""),
        "size": settings.matmul_size,
        "flops": flops,
        "tflops": flops / 1e12,
    }


def run_step_case(case: StepCase, settings: Settings, accelerator, device: str, peak_flops: float) -> dict:
    """Build the case's models on the device, run one warm-up step and `timed_steps` timed ones."""
    bf16 = settings.bf16
    weights = case.weights if bf16 else "float32"  # fp32 smoke: fp32 throughout
    base = torch.cuda.memory_allocated() if device == "cuda" else 0
    generator = torch.Generator().manual_seed(0)
    vocab = SHAPES[case.shape]["vocab_size"]
    build_started = time.perf_counter()

    if case.stage in ("sft", "reward"):
        kind = "causal" if case.stage == "sft" else "classifier"
        model = build_model(kind, case.shape, weights, device)
        flops_params = model_flops_params(model)
        if case.checkpointing:
            enable_checkpointing(model)
        if case.lora:
            # SEQ_CLS trains the new scalar head in full beside the adapters, as reward/trainer.py does.
            model = add_lora(model, "CAUSAL_LM" if case.stage == "sft" else "SEQ_CLS")
        model.train()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        model, optimizer = accelerator.prepare(model, optimizer)
        modules = [model]
        rows = case.batch * (2 if case.stage == "reward" else 1)  # a pair is a chosen and a rejected row
        input_ids = random_ids(rows, case.seq_len, vocab, generator).to(device)
        tokens_per_step = rows * case.seq_len
        passes = 2 if case.lora else 3  # forward + backward (LoRA: input gradients only)
        flops_per_step = passes * forward_flops_per_token(flops_params, case.shape, case.seq_len) * tokens_per_step
        if case.stage == "sft":
            labels = input_ids.clone()
            labels[:, : case.seq_len // 2] = -100  # the prompt half is masked, as SFT masks user turns

            def forward_loss():
                return model(input_ids=input_ids, labels=labels, use_cache=False).loss
        else:
            margins = margin_for([RATINGS[i % len(RATINGS)] for i in range(case.batch)], "small")

            def forward_loss():
                scores = model(input_ids=input_ids, use_cache=False).logits.squeeze(-1).float()
                chosen, rejected = torch.chunk(scores, 2)
                return ranking_loss(chosen, rejected, margins)

        measured = {}

        def step():
            with accelerator.autocast():
                loss = forward_loss()
            accelerator.backward(loss)
            optimizer.step()
            if not measured:
                measured.update(counted_bytes(modules, optimizer))
            optimizer.zero_grad(set_to_none=True)
    else:
        config = PPOConfig(
            rollout_batch_size=case.batch,
            mini_batch_size=case.batch,
            per_device_train_batch_size=case.per_device,
            generation_batch_size=case.per_device,
            max_new_tokens=case.seq_len // 2,
            temperature=1.0,
            top_p=1.0,
            use_lora=case.lora,
            lora_r=LORA["r"],
            lora_alpha=LORA["alpha"],
            dtype=weights,
            bf16=bf16,
            progress=False,
            report_to=["none"],
        )
        config.validate(accelerator.num_processes)
        models = build_ppo_models(config, case.shape, device, accelerator)
        policy, reference, value_model, optimizer = (
            models.policy,
            models.reference,
            models.value_model,
            models.optimizer,
        )
        modules = [m for m in (policy, reference, value_model) if m is not None]
        value_params = model_flops_params(accelerator.unwrap_model(value_model).classifier)
        policy_params = model_flops_params(_base_causal_lm(accelerator.unwrap_model(policy)))
        fwd_policy = forward_flops_per_token(policy_params, case.shape, case.seq_len)
        fwd_value = forward_flops_per_token(value_params, case.shape, case.seq_len)
        tokens_per_step = case.batch * case.seq_len
        # pi_old, pi_0 and V_old forwards, then the policy's and the value model's forward + backward.
        flops_per_step = tokens_per_step * (
            2 * fwd_policy + fwd_value + (2 if case.lora else 3) * fwd_policy + 3 * fwd_value
        )
        response = case.seq_len // 2
        samples = [
            Sample(
                i,
                0,
                random_ids(1, case.seq_len - response, vocab, generator)[0].tolist(),
                random_ids(1, response, vocab, generator)[0].tolist(),
                "",
                False,
            )
            for i in range(case.batch)
        ]
        is_safety = torch.arange(case.batch) % 2 == 0
        iteration = [0]
        measured = {}

        def step():
            batch = synthetic_rollouts(samples, is_safety, generator).to(device)
            forward_rollouts(models, batch, config)
            compute_advantages(batch, config)
            ppo_update(models, batch, config, iteration[0])
            iteration[0] += 1
            if not measured:
                measured.update(counted_bytes(modules, optimizer))

    build_s = time.perf_counter() - build_started
    warmup_s = timed(step, device)
    times = [timed(step, device) for _ in range(settings.timed_steps)]
    seconds = statistics.median(times)
    result = {
        "case": case.name,
        **asdict(case),
        "weights_dtype": weights,
        "autocast": "bf16" if bf16 else "none (fp32)",
        "build_s": build_s,
        "warmup_s": warmup_s,
        "step_s": times,
        "median_step_s": seconds,
        "tokens_per_step": tokens_per_step,
        "tokens_per_s": tokens_per_step / seconds,
        "model_flops_per_step": flops_per_step,
        "mfu": flops_per_step / seconds / peak_flops,
        "counted": measured,
        **peak_memory(device, base),
        "dry_run": dry_run_prediction(case, bf16),
    }
    if result["peak_allocated_gib"] is not None:
        result["measured_over_predicted"] = result["peak_allocated_gib"] / result["dry_run"]["sum_gib"]
    return result  # the caller releases the memory, once this frame's references are gone


def _base_causal_lm(policy):
    """The transformers model under a peft wrapper (for parameter counts without adapters)."""
    return policy.get_base_model() if hasattr(policy, "get_base_model") else policy


def build_ppo_models(config: PPOConfig, shape: str, device: str, accelerator):
    """rlhf.ppo.build_models on random weights: the policy (LoRA: its adapter disabled is pi_0), else a frozen
    copy as pi_0, and a value model from a one-label classifier; the project's optimiser; accelerate's prepare."""
    policy = build_model("causal", shape, config.dtype, device)
    reference = None
    if config.use_lora:
        policy = add_lora(policy, "CAUSAL_LM")
    else:
        reference = copy.deepcopy(policy).requires_grad_(False)
    value_model = TokenValueModel(build_model("classifier", shape, config.dtype, device, seed=1))
    optimizer = make_optimizer(policy, value_model, config)
    policy, value_model, optimizer = accelerator.prepare(policy, value_model, optimizer)
    if reference is not None:
        reference = reference.to(accelerator.device).eval()
    policy.eval()  # as run_ppo: dropout would make pi_theta differ from pi_old
    value_model.eval()
    return PPOModels(accelerator, policy, reference, value_model, optimizer)


def synthetic_rollouts(samples: list[Sample], is_safety: torch.Tensor, generator: torch.Generator) -> RolloutBatch:
    """A RolloutBatch of the given samples with random R_h / R_s scores, gated into R_c by the project's rule."""
    input_ids, attention_mask, response_mask = collate_rollouts(samples, PAD_ID)
    scores = combine_scores(
        torch.randn(len(samples), generator=generator), torch.randn(len(samples), generator=generator), is_safety
    )
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        is_safety_prompt=is_safety,
        is_truncated=torch.tensor([not s.finished for s in samples]),
        helpfulness=scores.helpfulness,
        safety=scores.safety,
        combined=scores.combined,
        use_safety=scores.use_safety,
    )


class RandomScorer:
    """Stands in for a reward model in `generate_and_score`: seeded random scores (scoring is not timed here)."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)

    def score(self, prompts, responses) -> ScoreBatch:
        scores = torch.randn(len(responses), generator=self.generator)
        return ScoreBatch(scores=scores, probs=torch.sigmoid(scores))


def generation(settings: Settings, device: str, record) -> dict:
    """tokens/s of the sampling engine (shared prefill) and of generate(num_return_sequences=K), same prompts."""
    dtype = "bfloat16" if settings.bf16 else "float32"
    model = build_model("causal", settings.gen_shape, dtype, device).eval()
    model.config.use_cache = True
    vocab = SHAPES[settings.gen_shape]["vocab_size"]
    tokenizer = IdTokenizer(vocab)
    generator = torch.Generator().manual_seed(0)
    prompts = random_ids(settings.gen_prompts, settings.gen_prompt_len, vocab, generator).tolist()
    out = {
        "shape": settings.gen_shape,
        "dtype": dtype,
        "prompts": settings.gen_prompts,
        "prompt_tokens": settings.gen_prompt_len,
        "max_new_tokens": settings.gen_new_tokens,
        "batch_sequences": settings.gen_batch,
        "rows": [],
    }
    for k in settings.gen_ks:
        params = SamplingParams(
            num_samples=k, temperature=1.0, top_p=1.0, max_new_tokens=settings.gen_new_tokens, seed=0
        )
        row = {"k": k}
        for label, share in (("engine", True), ("generate", False)):
            engine = HFSamplingEngine(model, tokenizer, batch_size=settings.gen_batch, share_prefill=share)
            engine.generate(
                prompts[:1], SamplingParams(num_samples=k, temperature=1.0, top_p=1.0, max_new_tokens=2, seed=0)
            )  # warm-up: kernels of this batch shape
            synchronize(device)
            started = time.perf_counter()
            samples = engine.generate(prompts, params)
            seconds = time.perf_counter() - started
            tokens = sum(len(s.response_ids) for s in samples)
            row[label] = {"seconds": seconds, "tokens": tokens, "tokens_per_s": tokens / seconds}
        row["engine_over_generate"] = row["engine"]["tokens_per_s"] / row["generate"]["tokens_per_s"]
        out["rows"].append(row)
        record(out)  # a K finished is kept even if the next is cut by the budget
    return out


def ppo_iteration(settings: Settings, accelerator, device: str, peak_flops: float) -> dict:
    """One run_ppo iteration body: generate_and_score, forward_rollouts, compute_advantages, ppo_update."""
    bf16 = settings.bf16
    config = PPOConfig(
        rollout_batch_size=settings.ppo_rollouts,
        mini_batch_size=settings.ppo_mini_batch,
        per_device_train_batch_size=settings.ppo_per_device,
        generation_batch_size=settings.ppo_gen_batch,
        max_new_tokens=settings.ppo_new_tokens,
        temperature=1.0,
        top_p=1.0,
        dtype="bfloat16" if bf16 else "float32",
        bf16=bf16,
        progress=False,
        report_to=["none"],
    )
    config.validate(accelerator.num_processes)
    shape = settings.ppo_shape
    models = build_ppo_models(config, shape, device, accelerator)
    policy, value_model = models.policy, models.value_model
    vocab = SHAPES[shape]["vocab_size"]
    tokenizer = IdTokenizer(vocab)
    generator = torch.Generator().manual_seed(0)
    prompt_ids = random_ids(settings.ppo_rollouts, settings.ppo_prompt_len, vocab, generator).tolist()
    prompts = [
        PromptRecord(id=str(i), messages=[{"role": "user", "content": "random ids"}], is_safety_prompt=i % 2 == 0)
        for i in range(settings.ppo_rollouts)
    ]
    engine = HFSamplingEngine(accelerator.unwrap_model(policy), tokenizer, batch_size=config.generation_batch_size)
    started = time.perf_counter()
    clock = PhaseClock(device)
    with gathered_full_weights(policy, accelerator):
        batch = generate_and_score(
            engine, tokenizer, prompts, prompt_ids, (RandomScorer(1), RandomScorer(2)), config, seed=0, clock=clock
        )
    generation_s, scoring_s = clock.seconds["generation"], clock.seconds["scoring"]
    batch = batch.to(device)
    train_started = time.perf_counter()
    forward_rollouts(models, batch, config)
    compute_advantages(batch, config)
    losses = ppo_update(models, batch, config, 0)
    synchronize(device)
    training_s = time.perf_counter() - train_started
    total_s = time.perf_counter() - started
    generated = int(batch.response_mask.sum())
    seq_tokens = int(batch.attention_mask.sum())
    width = batch.input_ids.shape[1]
    params = model_flops_params(_base_causal_lm(accelerator.unwrap_model(policy)))
    value_params = model_flops_params(accelerator.unwrap_model(value_model).classifier)
    # Padded width is what the forwards compute on (mini-batches are cut to their own width; close enough).
    train_flops = batch.input_ids.numel() * (
        5 * forward_flops_per_token(params, shape, width) + 4 * forward_flops_per_token(value_params, shape, width)
    )
    result = {
        "shape": shape,
        "rollouts": settings.ppo_rollouts,
        "mini_batch": settings.ppo_mini_batch,
        "per_device": settings.ppo_per_device,
        "generation_batch": settings.ppo_gen_batch,
        "prompt_tokens": settings.ppo_prompt_len,
        "max_new_tokens": settings.ppo_new_tokens,
        "dtype": config.dtype,
        "generation_s": generation_s,
        "scoring_s": scoring_s,
        "training_s": training_s,
        "iteration_s": total_s,
        "generation_share": generation_s / total_s,
        "generated_tokens": generated,
        "generation_tokens_per_s": generated / generation_s,
        "training_tokens_per_s": seq_tokens / training_s,
        "training_mfu": train_flops / training_s / peak_flops,
        "rollouts_per_s": settings.ppo_rollouts / total_s,
        "losses": losses,
        **peak_memory(device, 0),
        "dry_run": dry_run_prediction(
            StepCase(
                "ppo",
                shape,
                False,
                batch=settings.ppo_rollouts,
                seq_len=settings.ppo_prompt_len + settings.ppo_new_tokens,
                per_device=settings.ppo_per_device,
            ),
            bf16,
            settings.ppo_mini_batch,
            settings.ppo_gen_batch,
        ),
    }
    if result["peak_allocated_gib"] is not None:
        result["measured_over_predicted"] = result["peak_allocated_gib"] / result["dry_run"]["sum_gib"]
    return result


# ---------------------------------------------------------------------------------------------------------
# Report


def _fmt(value, spec: str = ".2f") -> str:
    return "-" if value is None else format(value, spec)


def memory_row(step: dict) -> list:
    counted, lines = step["counted"], step["dry_run"]["lines_gib"]

    def predicted(word: str) -> float:
        return sum(v for k, v in lines.items() if word in k)

    rest = None
    if step["peak_allocated_gib"] is not None:
        rest = step["peak_allocated_gib"] - sum(counted.values())
    return [
        step["case"],
        f"{counted['weights_gib']:.2f} / {predicted('weights'):.2f}",
        f"{counted['gradients_gib']:.2f} / {predicted('gradients'):.2f}",
        f"{counted['optimizer_states_gib']:.2f} / {predicted('AdamW'):.2f}",
        _fmt(rest),
        f"{predicted('activations'):.2f}",
    ]


def markdown(report: dict) -> str:
    env = report.get("environment", {})
    lines = [
        f"# GPU check ({report['mode']})",
        "",
        f"Command: `{report['command']}`",
        "",
        f"{env.get('gpu', 'no GPU')}, torch {env.get('torch')}, CUDA {env.get('cuda')}, "
        f"Python {env.get('python')}; {env.get('missing_line', '')}",
        "",
    ]
    peak = report.get("matmul_peak")
    if peak:
        rate = f"{peak['tflops']:.1f} TFLOP/s" if peak["tflops"] >= 1 else f"{peak['flops'] / 1e9:.1f} GFLOP/s"
        lines += [f"Matmul peak ({peak['dtype']}, {peak['size']}^3): {rate}.", ""]
    if report.get("steps"):
        rows = []
        for r in report["steps"]:
            if "error" in r:
                rows.append([r["case"], "-", "-", "-", "-", "-", "-", "-", r["error"][:80]])
                continue
            dry = r["dry_run"]
            ratio = r.get("measured_over_predicted")
            flag = "" if ratio is None or abs(ratio - 1) <= 0.15 else " (>15%)"
            unit = {"reward": " pairs", "ppo": " rollouts"}.get(r["stage"], "")
            rows.append(
                [
                    r["case"],
                    f"{r['batch']}{unit} x {r['seq_len']}",
                    f"{r['weights_dtype']}",
                    f"{r['median_step_s']:.3f}",
                    f"{r['tokens_per_s']:,.0f}",
                    f"{100 * r['mfu']:.1f}%",
                    f"{_fmt(r['peak_allocated_gib'])} / {_fmt(r['peak_reserved_gib'])}",
                    f"{dry['sum_gib']:.2f} / {dry['total_with_overhead_gib']:.2f}",
                    f"{_fmt(ratio)}{flag}",
                ]
            )
        lines += [
            "Steps (median of the timed steps; memory in GiB):",
            "",
            markdown_table(
                [
                    "case",
                    "batch x tokens",
                    "weights",
                    "s/step",
                    "tokens/s",
                    "MFU",
                    "peak allocated / reserved",
                    "dry-run lines / +10%",
                    "allocated / dry-run",
                ],
                rows,
            ),
            "",
        ]
        lines += [
            'Memory by kind, GiB, counted from the tensors / the dry-run\'s lines. "Rest of peak" is peak '
            "allocated minus the three counted kinds: activations, logits and temporaries.",
            "",
            markdown_table(
                ["case", "weights", "gradients", "optimizer states", "rest of peak", "dry-run activations"],
                [memory_row(r) for r in report["steps"] if "error" not in r],
            ),
            "",
        ]
    gen = report.get("generation")
    if gen and gen.get("rows"):
        rows = [
            [
                r["k"],
                f"{r['engine']['tokens_per_s']:,.0f}",
                f"{r['generate']['tokens_per_s']:,.0f}",
                f"{r['engine_over_generate']:.2f}x",
            ]
            for r in gen["rows"]
        ]
        lines += [
            f"Generation ({gen['shape']}, {gen['dtype']}, {gen['prompts']} prompts of {gen['prompt_tokens']} "
            f"tokens, {gen['max_new_tokens']} new tokens, {gen['batch_sequences']} sequences per batch):",
            "",
            markdown_table(["K", "engine tokens/s", "generate(n=K) tokens/s", "ratio"], rows),
            "",
        ]
    it = report.get("ppo_iteration")
    if it:
        lines += [
            f"PPO iteration ({it['shape']}, {it['dtype']}, {it['rollouts']} rollouts, mini-batch "
            f"{it['mini_batch']}, {it['prompt_tokens']} + {it['max_new_tokens']} tokens):",
            "",
            markdown_table(
                [
                    "generation s",
                    "training s",
                    "iteration s",
                    "generation share",
                    "generated tokens/s",
                    "training tokens/s",
                    "training MFU",
                    "peak allocated GiB",
                    "dry-run lines GiB",
                    "allocated / dry-run",
                ],
                [
                    [
                        f"{it['generation_s']:.1f}",
                        f"{it['training_s']:.1f}",
                        f"{it['iteration_s']:.1f}",
                        f"{100 * it['generation_share']:.0f}%",
                        f"{it['generation_tokens_per_s']:,.0f}",
                        f"{it['training_tokens_per_s']:,.0f}",
                        f"{100 * it['training_mfu']:.1f}%",
                        _fmt(it["peak_allocated_gib"]),
                        f"{it['dry_run']['sum_gib']:.2f}",
                        _fmt(it.get("measured_over_predicted")),
                    ]
                ],
            ),
            "",
        ]
    if report.get("notes"):
        lines += ["Notes:", ""] + [f"- {note}" for note in report["notes"]] + [""]
    lines.append(
        f"Elapsed: {report.get('elapsed_s', 0):.0f} s of a {report['budget_s']:.0f} s budget "
        "(counted from after the imports)."
    )
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="\n\n".join(__doc__.split("\n\n")[1:3]),
    )
    parser.add_argument("--output_dir", required=True, help="where gpu_check.json and gpu_check.md are written")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help="tiny shapes on CPU in fp32: the same code paths, in well under a minute (the CI test)",
    )
    parser.add_argument(
        "--bf16",
        action="store_true",
        help="with --smoke: the GPU run's dtypes (bf16 weights "
        "where it uses them, bf16 autocast) on CPU, to try those paths without a GPU",
    )
    parser.add_argument(
        "--budget_s",
        type=float,
        default=None,
        help="seconds for all sections (default 420 on GPU, 60 with --smoke); sections that do not "
        "fit are skipped with a note",
    )
    parser.add_argument(
        "--skip", nargs="*", default=[], choices=["steps", "generation", "ppo_iteration"], help="sections to leave out"
    )
    return parser


def main(argv: list[str] | None = None) -> dict:
    args = build_parser().parse_args(argv)
    started = time.monotonic()
    if args.smoke:
        device = "cpu"
        # Tiny shapes: threads only contend (on a shared 2-core machine a step was 30-60x slower; tests/conftest.py).
        torch.set_num_threads(1)
        settings = smoke_settings(60.0 if args.budget_s is None else args.budget_s, bf16=args.bf16)
    else:
        if not torch.cuda.is_available():
            raise SystemExit("gpu_check: no CUDA device; use --smoke for the CPU run")
        device = "cuda"
        settings = gpu_settings(420.0 if args.budget_s is None else args.budget_s)
    deadline = started + settings.budget_s
    output_dir = Path(args.output_dir)
    command = " ".join(["python", "benchmarks/gpu_check.py", *(sys.argv[1:] if argv is None else argv)])
    mode = f"smoke (CPU, {'bf16' if settings.bf16 else 'fp32'}, tiny shapes)" if args.smoke else "GPU (bf16)"
    report = {
        "mode": mode,
        "command": command,
        "started_utc": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "budget_s": settings.budget_s,
        "notes": [],
        "errors": [],
    }

    def save() -> None:
        report["elapsed_s"] = time.monotonic() - started
        atomic_write_json(output_dir / "gpu_check.json", report)
        atomic_write_text(output_dir / "gpu_check.md", markdown(report))

    def section(name: str, fn) -> None:
        """Run one section unless the budget is spent; keep its result, or say why there is none. An error is
        recorded and the run goes on: the GPU run is rare, and every later section still counts."""
        left = deadline - time.monotonic()
        needed = 0 if args.smoke else settings.min_section_s.get(name, 0)
        if name in args.skip:
            report["notes"].append(f"{name}: skipped (--skip)")
        elif left <= needed:
            report["notes"].append(
                f"{name}: skipped, the budget is spent ({max(left, 0):.0f} s left, needs ~{needed} s)"
            )
        else:
            print(f"[gpu_check] {name} ({left:.0f} s of budget left)", flush=True)
            release(accelerator, device)
            try:
                with alarm_at(deadline):
                    fn()
            except BudgetExceeded:
                report["notes"].append(f"{name}: stopped, the budget ran out during it (results so far kept)")
            except Exception as error:
                record_error(name, error)
            # Out of the except blocks, so no traceback holds the section's tensors any more.
            release(accelerator, device)
        save()

    def record_error(where: str, error: Exception) -> None:
        report["errors"].append(f"{where}: {type(error).__name__}: {error}\n{traceback.format_exc(limit=-4)}"[-3000:])
        print(f"[gpu_check] error in {where}: {type(error).__name__}: {error}"[:500], flush=True)

    report["environment"] = environment_report()
    print(f"[gpu_check] {report['environment']['missing_line']}", flush=True)
    save()

    from accelerate import Accelerator

    accelerator = Accelerator(mixed_precision="bf16" if settings.bf16 else "no", cpu=device == "cpu")
    peak: dict = {}

    def do_peak():
        peak.update(matmul_peak(settings, device))
        report["matmul_peak"] = peak

    section("matmul_peak", do_peak)
    if not peak:
        report["notes"].append("no matmul peak: the MFU sections were not run")
        save()
        return report

    def do_steps():
        report["steps"] = []
        for case in settings.steps:
            print(f"[gpu_check]   step: {case.name}", flush=True)
            release(accelerator, device)
            try:
                report["steps"].append(run_step_case(case, settings, accelerator, device, peak["flops"]))
            except BudgetExceeded:
                raise
            except Exception as error:  # one failing case (e.g. out of memory) must not lose the others
                report["steps"].append({"case": case.name, "error": f"{type(error).__name__}: {error}"[:500]})
                record_error(f"step {case.name}", error)
            release(accelerator, device)
            save()

    def do_generation():
        def record(partial):
            report["generation"] = partial
            save()

        report["generation"] = generation(settings, device, record)

    def do_ppo_iteration():
        report["ppo_iteration"] = ppo_iteration(settings, accelerator, device, peak["flops"])

    section("steps", do_steps)
    section("generation", do_generation)
    section("ppo_iteration", do_ppo_iteration)
    print(
        f"[gpu_check] wrote {output_dir / 'gpu_check.json'} and gpu_check.md "
        f"({report['elapsed_s']:.0f} s, {len(report['errors'])} errors)",
        flush=True,
    )
    return report


if __name__ == "__main__":
    result = main()
    raise SystemExit(1 if result["errors"] else 0)
