"""Small adjustments shared by every stage built on transformers' TrainingArguments."""

from __future__ import annotations


class CpuBf16Mixin:
    """Let `bf16: true` mean bf16 autocast on a machine without a GPU, instead of an error.

    transformers refuses bf16 without a GPU unless `use_cpu` is set; the same recipe should run on a laptop and
    on a GPU node, and bf16 autocast is about 2x faster than fp32 on recent CPUs.
    """

    def __post_init__(self):
        import torch

        # bf16 None means "on" in TRL's configs, so any machine without CUDA gets use_cpu (harmless there).
        if getattr(self, "bf16", None) is not False and not torch.cuda.is_available():
            self.use_cpu = True
        super().__post_init__()
