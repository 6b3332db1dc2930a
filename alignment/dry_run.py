"""`llama2-align dry-run`: a recipe and an accelerate config in, batch arithmetic and memory per device out.

    llama2-align dry-run --config recipes/llama2-70b/ppo.yaml [--accelerate_config recipes/accelerate/zero3.yaml]
                         [--num_processes 64] [--model_size 70b] [--device_memory_gb 80]

Nothing is loaded or launched: it answers "will this fit, and is the batch the paper's?" in a second, and
exits 2 with one line naming the problem when the combination is impossible (a batch that does not divide,
a generation set-up that cannot work, an estimate above the device's memory).

Paper-scale recipes name the launch they expect in comment lines the dry run reads (a recipe's keys are the
stage's dataclass fields, so these cannot be keys):
    # accelerate_config: recipes/accelerate/fsdp.yaml
    # num_processes: 16

Memory model (per device, bytes; P = parameters of a model, S = sharding degree: the number of processes
under FSDP / ZeRO-3, 1 under single / DDP; b = bytes per weight, 2 in bf16, 4 in fp32):
    trained model    P*b/S (weights) + T*b/S (gradients) + T*k/S (AdamW), T = trainable parameters;
                     k = 12 in bf16 (fp32 master weights, m, v; ZeRO paper, Rajbhandari et al. 2020), 8 in fp32
    frozen model     P*b/S (reference, reward models); 0 when offloaded to the CPU
    activations      per layer and sequence 34*s*h bytes (16-bit, Korthikanti et al. 2022, flash attention so no
                     s^2 term) or 2*s*h with gradient checkpointing plus one layer's 34*s*h; plus fp32 logits 4*s*V
    shard gathers    FSDP / ZeRO-3 materialise 2 decoder layers at a time (current + prefetch)
    generation       FSDP / ZeRO-3 gather the whole policy (P*b, the consolidation of sec. 3.2.3) plus the KV
                     cache 2*L*kv_heads*head_dim*s*b per sequence
The result is a rough planning figure (+-30%): allocator fragmentation, CUDA context (~1 GiB) and
communication buffers are not modelled beyond a fixed 10% overhead.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path

from alignment.batching import accumulation_steps
from alignment.config import RecipeError, fail, load_yaml
from alignment.launch import GENERATION_BACKENDS, check_generation_backend

GIB = 1024**3
STAGES = ("sft", "reward", "rejection_sampling", "ppo")
OVERHEAD = 1.10


@dataclass(frozen=True)
class Architecture:
    params: float
    hidden: int
    layers: int
    vocab: int
    intermediate: int
    heads: int
    kv_heads: int

    @property
    def layer_params(self) -> float:
        head_dim = self.hidden // self.heads
        attention = self.hidden * head_dim * (2 * self.heads + 2 * self.kv_heads)
        return attention + 3 * self.hidden * self.intermediate + 2 * self.hidden


# Llama 2 (Touvron et al. 2023, table 1; GQA with 8 KV heads for 70B) and the project's offline models.
ARCHITECTURES = {
    "7b": Architecture(6.74e9, 4096, 32, 32000, 11008, 32, 32),
    "13b": Architecture(13.02e9, 5120, 40, 32000, 13824, 40, 40),
    "70b": Architecture(68.98e9, 8192, 80, 32000, 28672, 64, 8),
    "smollm2-135m": Architecture(134.5e6, 576, 30, 49152, 1536, 9, 3),
    "tiny": Architecture(0.16e6, 64, 2, 512, 176, 4, 2),
}
_NAME_HINTS = [(r"70b", "70b"), (r"13b", "13b"), (r"7b", "7b"), (r"smollm2", "smollm2-135m"), (r"tiny", "tiny")]

# Fields the dry run reads, with the paper's value where the recipe leaves them out
# (arXiv 2307.09288, sec. 3.1-3.2 and appendix A.3).
STAGE_DEFAULTS = {
    "sft": {"global_batch_size": 64, "per_device_train_batch_size": 8, "max_length": 4096},
    "reward": {"global_batch_size": 512, "per_device_train_batch_size": 8, "max_length": 4096},
    # Prompt length is not a recipe field of these stages; 1024 tokens is the planning assumption.
    "rejection_sampling": {
        "generation_batch_size": 32,
        "max_prompt_length": 1024,
        "max_new_tokens": 1024,
        "num_samples": 10,
    },
    "ppo": {
        "rollout_batch_size": 512,
        "mini_batch_size": 64,
        "per_device_train_batch_size": 8,
        "generation_batch_size": 32,
        "max_prompt_length": 1024,
        "max_new_tokens": 128,
    },
}


@dataclass(frozen=True)
class Launch:
    """What an accelerate config file says about the processes and how the model is sharded."""

    path: str
    kind: str  # alignment.launch.DISTRIBUTED_KINDS
    num_processes: int
    num_machines: int
    bf16: bool
    offload_optimizer: bool = False
    offload_params: bool = False

    @property
    def shard_degree(self) -> int:
        return self.num_processes if self.kind in ("fsdp", "fsdp2", "deepspeed_zero3") else 1

    @property
    def optimizer_shard_degree(self) -> int:
        return self.num_processes if self.kind != "single" and self.kind != "ddp" else 1


def read_launch(path: str | None, num_processes: int | None = None, num_machines: int | None = None) -> Launch:
    if path is None:
        return Launch("(none: one process)", "single", num_processes or 1, num_machines or 1, bf16=False)
    data = load_yaml(path)
    distributed_type = str(data.get("distributed_type", "NO"))
    if distributed_type == "FSDP":
        fsdp = data.get("fsdp_config") or {}
        kind = "fsdp2" if int(fsdp.get("fsdp_version", 1)) == 2 else "fsdp"
        offload_params = bool(fsdp.get("fsdp_offload_params", False))
        offload_optimizer = offload_params
    elif distributed_type == "DEEPSPEED":
        ds = data.get("deepspeed_config") or {}
        kind = "deepspeed_zero3" if int(ds.get("zero_stage", 0)) == 3 else "deepspeed"
        offload_optimizer = str(ds.get("offload_optimizer_device", "none")) != "none"
        offload_params = str(ds.get("offload_param_device", "none")) != "none"
    elif distributed_type in ("MULTI_GPU", "MULTI_CPU", "MULTI_XPU", "MULTI_NPU"):
        kind, offload_optimizer, offload_params = "ddp", False, False
    elif distributed_type == "NO":
        kind, offload_optimizer, offload_params = "single", False, False
    else:
        raise RecipeError(f"{path}: distributed_type '{distributed_type}' is not one the stages are tested under")
    processes = num_processes or int(data.get("num_processes", 1))
    machines = num_machines or int(data.get("num_machines", 1))
    if kind == "single" and processes != 1:
        raise RecipeError(f"{path}: distributed_type NO runs one process, not {processes}")
    if processes % machines:
        raise RecipeError(f"{path}: {processes} processes do not split evenly over {machines} machines")
    return Launch(
        str(path),
        kind,
        processes,
        machines,
        str(data.get("mixed_precision", "no")) == "bf16",
        offload_optimizer,
        offload_params,
    )


def recipe_comments(path: str | Path) -> dict[str, str]:
    """`# key: value` comment lines of a recipe (the launch it expects)."""
    found = {}
    for line in Path(path).read_text().splitlines():
        match = re.match(r"#\s*(accelerate_config|num_processes|num_machines|model_size)\s*:\s*(\S+)", line.strip())
        if match:
            found[match.group(1)] = match.group(2)
    return found


def guess_stage(path: str | Path) -> str:
    stem = Path(path).stem.replace("-", "_")
    for stage in STAGES:
        if stem == stage or stem.startswith(stage):
            return stage
    raise RecipeError(f"{path}: cannot tell the stage from the file name; pass --stage ({', '.join(STAGES)})")


def resolve_architecture(model_size: str | None, model_name: str | None) -> tuple[str, Architecture]:
    if model_size:
        key = model_size.lower()
        if key not in ARCHITECTURES:
            raise RecipeError(f"unknown model_size '{model_size}' (known: {', '.join(ARCHITECTURES)})")
        return key, ARCHITECTURES[key]
    name = (model_name or "").lower()
    config = Path(model_name or "") / "config.json"
    if model_name and config.is_file():
        return model_name, architecture_from_config(json.loads(config.read_text()))
    for pattern, key in _NAME_HINTS:
        if re.search(pattern, name):
            return key, ARCHITECTURES[key]
    raise RecipeError(f"cannot tell the size of model '{model_name}'; pass --model_size ({', '.join(ARCHITECTURES)})")


def architecture_from_config(config: dict) -> Architecture:
    hidden, layers, vocab = config["hidden_size"], config["num_hidden_layers"], config["vocab_size"]
    heads = config["num_attention_heads"]
    arch = Architecture(
        0, hidden, layers, vocab, config["intermediate_size"], heads, config.get("num_key_value_heads", heads)
    )
    embeddings = vocab * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return Architecture(
        layers * arch.layer_params + embeddings + hidden,
        hidden,
        layers,
        vocab,
        arch.intermediate,
        heads,
        arch.kv_heads,
    )


def lora_params(arch: Architecture, rank: int) -> float:
    """LoRA on every attention and MLP projection: r * (in + out) per projection per layer."""
    head_dim = arch.hidden // arch.heads
    q_o = 2 * (arch.hidden + arch.heads * head_dim)
    k_v = 2 * (arch.hidden + arch.kv_heads * head_dim)
    mlp = 3 * (arch.hidden + arch.intermediate)
    return arch.layers * rank * (q_o + k_v + mlp)


@dataclass
class MemoryLine:
    what: str
    bytes: float


def trained_model_bytes(name: str, arch: Architecture, launch: Launch, trainable: float) -> list[MemoryLine]:
    b = 2 if launch.bf16 else 4
    k = 12 if launch.bf16 else 8
    shard = launch.shard_degree
    weights = 0.0 if launch.offload_params else arch.params * b / shard
    # ZeRO-1/2 (kind "deepspeed") shard the gradients and optimiser state but not the weights.
    grad_shard = launch.num_processes if launch.kind in ("fsdp", "fsdp2", "deepspeed", "deepspeed_zero3") else 1
    optimizer = 0.0 if launch.offload_optimizer else trainable * k / launch.optimizer_shard_degree
    return [
        MemoryLine(f"{name} weights", weights),
        MemoryLine(f"{name} gradients", trainable * b / grad_shard),
        MemoryLine(f"{name} AdamW states", optimizer),
    ]


def frozen_model_bytes(name: str, arch: Architecture, launch: Launch, offloaded: bool) -> MemoryLine:
    b = 2 if launch.bf16 else 4
    return MemoryLine(
        f"{name} weights{' (offloaded)' if offloaded else ''}",
        0.0 if offloaded else arch.params * b / launch.shard_degree,
    )


def activation_bytes(arch: Architecture, sequences: int, seq_len: int, checkpointing: bool) -> float:
    per_layer_full = 34 * seq_len * arch.hidden
    if checkpointing:
        per_sequence = 2 * seq_len * arch.hidden * arch.layers + per_layer_full
    else:
        per_sequence = per_layer_full * arch.layers
    return sequences * (per_sequence + 4 * seq_len * arch.vocab)


def gather_bytes(arch: Architecture, launch: Launch) -> float:
    b = 2 if launch.bf16 else 4
    return 2 * arch.layer_params * b if launch.shard_degree > 1 else 0.0


def generation_bytes(
    arch: Architecture, launch: Launch, sequences: int, seq_len: int, backend: str = "hf"
) -> list[MemoryLine]:
    b = 2 if launch.bf16 else 4
    head_dim = arch.hidden // arch.heads
    kv_cache = sequences * 2 * arch.layers * arch.kv_heads * head_dim * seq_len * b
    if backend == "vllm":
        # A colocated vLLM engine, tensor parallel over the GPUs of one node, holds its own copy of the policy.
        tp = launch.num_processes // launch.num_machines
        return [
            MemoryLine(f"vLLM policy copy (tensor parallel {tp})", arch.params * b / tp),
            MemoryLine("KV cache", kv_cache / tp),
        ]
    lines = [MemoryLine("KV cache", kv_cache)]
    if launch.shard_degree > 1:
        # The paper's fix: the whole policy is gathered once per rollout, minus the shard already held.
        lines.append(MemoryLine("gathered policy for generation", arch.params * b * (1 - 1 / launch.shard_degree)))
    return lines


def _get(recipe: dict, stage: str, key: str):
    return recipe.get(key, STAGE_DEFAULTS[stage].get(key))


def plan(
    recipe: dict, stage: str, launch: Launch, arch: Architecture, backend: str = "hf"
) -> tuple[list[str], list[MemoryLine]]:
    """Batch arithmetic lines and the memory lines of the stage's peak (training step or generation)."""
    processes = launch.num_processes
    use_lora = bool(recipe.get("use_lora", False))
    checkpointing = bool(recipe.get("gradient_checkpointing") or recipe.get("activation_checkpointing"))
    trainable = lora_params(arch, int(recipe.get("lora_r", 16))) if use_lora else arch.params
    arithmetic: list[str] = []
    memory: list[MemoryLine] = []

    if stage in ("sft", "reward"):
        global_batch = int(_get(recipe, stage, "global_batch_size"))
        per_device = int(_get(recipe, stage, "per_device_train_batch_size"))
        accumulation = accumulation_steps(global_batch, per_device, processes)
        unit = "pairs" if stage == "reward" else "sequences"
        arithmetic.append(
            f"global batch {global_batch} {unit} = {per_device} per device x {accumulation} "
            f"accumulation x {processes} processes"
        )
        rows = per_device * (2 if stage == "reward" else 1)  # a pair is a chosen and a rejected row
        memory += trained_model_bytes("policy" if stage == "sft" else "reward model", arch, launch, trainable)
        memory.append(
            MemoryLine(
                f"activations ({rows} x {_get(recipe, stage, 'max_length')} tokens)",
                activation_bytes(arch, rows, int(_get(recipe, stage, "max_length")), checkpointing),
            )
        )
        memory.append(MemoryLine("sharded layer gathers", gather_bytes(arch, launch)))
        return arithmetic, memory

    seq_len = int(_get(recipe, stage, "max_prompt_length")) + int(_get(recipe, stage, "max_new_tokens"))
    generation_batch = int(_get(recipe, stage, "generation_batch_size"))
    offload_rm = bool(recipe.get("offload_reward_models", False))
    if stage == "rejection_sampling":
        k = int(_get(recipe, stage, "num_samples"))
        prompts = recipe.get("num_prompts")
        share = f"{math.ceil(int(prompts) / processes)} prompts per process, " if prompts else ""
        arithmetic.append(f"{share}K = {k} samples each, generated {generation_batch} sequences at a time")
        memory.append(frozen_model_bytes("policy", arch, launch, False))
        memory += generation_bytes(arch, launch, generation_batch, seq_len, backend)
        memory.append(frozen_model_bytes("helpfulness RM", arch, launch, offload_rm))
        memory.append(frozen_model_bytes("safety RM", arch, launch, offload_rm))
        return arithmetic, memory

    rollouts = int(_get(recipe, stage, "rollout_batch_size"))
    mini_batch = int(_get(recipe, stage, "mini_batch_size"))
    per_device = int(_get(recipe, stage, "per_device_train_batch_size"))
    if rollouts % mini_batch:
        raise RecipeError(
            f"PPO batch {rollouts} is not a multiple of the mini-batch {mini_batch} (sec. 3.2.3: 512 / 64)"
        )
    accumulation = accumulation_steps(mini_batch, per_device, processes)
    arithmetic.append(
        f"PPO batch {rollouts} rollouts = {math.ceil(rollouts / processes)} per process x {processes} "
        f"processes; {rollouts // mini_batch} gradient steps per iteration"
    )
    arithmetic.append(
        f"mini-batch {mini_batch} = {per_device} per device x {accumulation} accumulation x {processes} processes"
    )
    memory += trained_model_bytes("policy", arch, launch, trainable)
    if bool(recipe.get("share_value_model", False)) or use_lora:
        memory.append(MemoryLine("value head (shared trunk)", arch.hidden * 4))
    else:
        memory += trained_model_bytes("value model", arch, launch, arch.params)
    if use_lora:
        memory.append(MemoryLine("reference (policy with adapter disabled)", 0.0))
    else:
        memory.append(frozen_model_bytes("reference policy", arch, launch, False))
    memory.append(frozen_model_bytes("helpfulness RM", arch, launch, offload_rm))
    memory.append(frozen_model_bytes("safety RM", arch, launch, offload_rm))
    memory.append(MemoryLine("sharded layer gathers", gather_bytes(arch, launch)))
    training = activation_bytes(arch, per_device, seq_len, checkpointing)
    rollout = sum(line.bytes for line in generation_bytes(arch, launch, generation_batch, seq_len, backend))
    # Generation and the gradient step do not overlap: the peak is the larger of the two phases.
    if rollout > training:
        memory += generation_bytes(arch, launch, generation_batch, seq_len, backend)
    else:
        memory.append(MemoryLine(f"activations ({per_device} x {seq_len} tokens)", training))
    return arithmetic, memory


def run(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(prog="llama2-align dry-run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="stage recipe (YAML)")
    parser.add_argument(
        "--accelerate_config",
        help="accelerate config (recipes/accelerate/*.yaml); default: the one the recipe names, else one process",
    )
    parser.add_argument("--num_processes", type=int, help="override the accelerate config's process count")
    parser.add_argument("--num_machines", type=int, help="override the accelerate config's machine count")
    parser.add_argument("--stage", choices=STAGES, help="default: from the recipe's file name")
    parser.add_argument("--model_size", help=f"one of {', '.join(ARCHITECTURES)}; default: from the model name")
    parser.add_argument(
        "--device_memory_gb",
        type=float,
        default=80.0,
        help="memory per device in GiB (80: the A100-80GB of the paper's Research Super Cluster)",
    )
    parser.add_argument(
        "--generation_backend",
        help="hf or vllm (PPO and rejection sampling); default: the recipe's sampling_backend, else hf",
    )
    args = parser.parse_args(argv)

    recipe = load_yaml(args.config)
    named = recipe_comments(args.config)
    stage = args.stage or guess_stage(args.config)
    accelerate_config = args.accelerate_config or named.get("accelerate_config")
    processes = args.num_processes or (int(named["num_processes"]) if "num_processes" in named else None)
    machines = args.num_machines or (int(named["num_machines"]) if "num_machines" in named else None)
    launch = read_launch(accelerate_config, processes, machines)
    backend = args.generation_backend or str(recipe.get("sampling_backend", "hf"))
    if stage in ("ppo", "rejection_sampling"):
        # vllm's own requirements (the package, CUDA) are checked at launch: planning runs on machines without.
        if backend not in GENERATION_BACKENDS:
            raise RecipeError(f"unknown generation backend '{backend}' (use one of {', '.join(GENERATION_BACKENDS)})")
        if backend == "hf":
            check_generation_backend("hf", launch.kind, device_type="cuda")
    size_name, arch = resolve_architecture(
        args.model_size or named.get("model_size"), recipe.get("model_name_or_path")
    )
    arithmetic, memory = plan(recipe, stage, launch, arch, backend)
    total = sum(line.bytes for line in memory) * OVERHEAD
    budget = args.device_memory_gb * GIB

    print(f"recipe            {args.config} (stage: {stage})")
    print(
        f"launch            {launch.path}: {launch.kind}, {launch.num_processes} processes on "
        f"{launch.num_machines} machine(s), {'bf16' if launch.bf16 else 'fp32'}, shard degree {launch.shard_degree}"
    )
    print(f"model             {size_name}: {arch.params / 1e9:.3g}B parameters, {arch.layers} layers")
    for line in arithmetic:
        print(f"batch             {line}")
    print("memory per device (estimate)")
    for line in memory:
        print(f"  {line.what:<44} {line.bytes / GIB:9.2f} GiB")
    print(f"  {'total (+10% overhead)':<44} {total / GIB:9.2f} GiB of {args.device_memory_gb:g} GiB")
    if total > budget:
        raise RecipeError(
            f"estimated {total / GIB:.1f} GiB per device exceeds {args.device_memory_gb:g} GiB: use more processes, "
            "a sharded config (recipes/accelerate/fsdp.yaml or zero3.yaml), use_lora, gradient_checkpointing, "
            "offload_reward_models or a smaller per-device batch"
        )
    return {
        "stage": stage,
        "kind": launch.kind,
        "num_processes": launch.num_processes,
        "arithmetic": arithmetic,
        "memory_gib": {line.what: line.bytes / GIB for line in memory},
        "total_gib": total / GIB,
    }


def main(argv: list[str] | None = None) -> int:
    """Entry point for `llama2-align dry-run`; returns 0, or exits 2 with one line on an impossible plan."""
    try:
        run(list(sys.argv[1:] if argv is None else argv))
    except (RecipeError, FileNotFoundError) as error:
        fail(str(error))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
