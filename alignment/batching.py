"""Batch arithmetic: per-device batch x gradient accumulation x processes must equal the method's batch."""

from __future__ import annotations

import os

from alignment.config import RecipeError


def accumulation_steps(global_batch_size: int, per_device_batch_size: int, num_processes: int) -> int:
    """Gradient accumulation that makes the effective batch exactly `global_batch_size`, or a clear error."""
    if global_batch_size <= 0 or per_device_batch_size <= 0 or num_processes <= 0:
        raise RecipeError("batch sizes and the number of processes must be positive")
    per_step = per_device_batch_size * num_processes
    if global_batch_size % per_step:
        raise RecipeError(
            f"global batch {global_batch_size} is not a multiple of per-device batch {per_device_batch_size} "
            f"x {num_processes} processes = {per_step}; change per_device_train_batch_size or global_batch_size"
        )
    return global_batch_size // per_step


def world_size() -> int:
    """Processes of this run, read the way accelerate/torchrun publish it, before any process group exists."""
    return int(os.environ.get("WORLD_SIZE", "1"))
