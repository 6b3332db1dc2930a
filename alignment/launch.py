"""What a launch can run, decided before any model or torch loads (the dry run and the stages both ask).

Kept free of torch so `llama2-align dry-run` answers in a second; `alignment.distributed` re-exports these.
"""

from __future__ import annotations

import importlib.util

from alignment.config import RecipeError

DISTRIBUTED_KINDS = ("single", "ddp", "fsdp", "fsdp2", "deepspeed", "deepspeed_zero3")
GENERATION_BACKENDS = ("hf", "vllm")


def check_generation_backend(backend: str, kind: str, device_type: str = "cpu", use_lora: bool = False) -> None:
    """Refuse, before any model loads, the generation set-ups that cannot work; say what to use instead.

    backend "hf": transformers `generate` on weights from `gathered_full_weights`; works under every kind
    except FSDP v1. backend "vllm": a vLLM engine whose weights are synced after every PPO iteration; needs
    the vllm package and a CUDA device.
    """
    if backend not in GENERATION_BACKENDS:
        raise RecipeError(f"unknown generation backend '{backend}' (use one of {', '.join(GENERATION_BACKENDS)})")
    if kind not in DISTRIBUTED_KINDS:
        raise RecipeError(f"unknown distributed kind '{kind}' (one of {', '.join(DISTRIBUTED_KINDS)})")
    if backend == "hf" and kind == "fsdp":
        raise RecipeError(
            "generation under FSDP v1 has no consolidated-weights path (~20x slower, Llama 2 sec. 3.2.3); use "
            "recipes/accelerate/fsdp.yaml (fsdp_version: 2) or generation_backend: vllm"
        )
    if backend == "vllm":
        if importlib.util.find_spec("vllm") is None:
            raise RecipeError("generation_backend: vllm needs the vllm package (pip install 'llama2-align[vllm]')")
        if device_type != "cuda":
            raise RecipeError(f"generation_backend: vllm runs on CUDA devices only, this run is on {device_type}")
        if use_lora and kind == "deepspeed_zero3":
            raise RecipeError(
                "generation_backend: vllm with a LoRA policy under ZeRO-3 is not supported (syncing merged "
                "adapter weights out of ZeRO-3 partitions is not implemented); use generation_backend: hf"
            )
