"""Small adjustments shared by every stage built on transformers' TrainingArguments."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers.trainer_utils import get_last_checkpoint

from alignment.distributed import pad_dataset_to_multiple


class CpuBf16Mixin:
    """Let `bf16: true` mean bf16 autocast on a machine without a GPU, instead of an error.

    transformers refuses bf16 without a GPU unless `use_cpu` is set; the same recipe should run on a laptop and
    on a GPU node, and bf16 autocast is about 2x faster than fp32 on recent CPUs.
    """

    def __post_init__(self):
        # bf16 None means "on" in TRL's configs, so any machine without CUDA gets use_cpu (harmless there).
        if getattr(self, "bf16", None) is not False and not torch.cuda.is_available():
            self.use_cpu = True
        super().__post_init__()


def train_resumable(trainer, output_dir, global_batch_size: int, pad_token_id: int):
    """Train on whole global batches, resuming from the last checkpoint in output_dir if there is one.

    The training set is padded with zero-weight rows to a multiple of the global batch, so every process
    count sees the same batches (accelerate would otherwise repeat rows to even out the last one).
    Returns the trainer's result and the checkpoint it resumed from (or None).
    """
    trainer.train_dataset = pad_dataset_to_multiple(trainer.train_dataset, global_batch_size, pad_token_id)
    last_checkpoint = get_last_checkpoint(str(output_dir)) if Path(output_dir).is_dir() else None
    return trainer.train(resume_from_checkpoint=last_checkpoint), last_checkpoint
