"""RMSNorm with its backward pass written out, for training small models on CPU.

transformers' Llama-family RMSNorm is five element-wise ops (square, mean, add, rsqrt, two products), and
autograd runs a backward for each: on the tiny Llama's (64, 46, 64) activations its forward and backward took
0.94 ms at 1 thread against 0.52 ms for this one, which saves the normalised input and its inverse RMS and
computes ``dx = rstd * (g w - x_hat * mean(g w x_hat))`` and ``dw = sum(g x_hat)`` directly (BENCHMARKS.md,
issue 18). The forward is the same ops in the same order, so outputs are identical; gradients agree up to float
rounding.

`use_fast_rms_norm(model)` gives a model's RMSNorm modules of the classes below this forward. It runs only where
a gradient is needed and the input and weight are float32; everything else (inference, other dtypes) takes the
module's own forward.
"""

from __future__ import annotations

import torch

# Modules computing weight * (x / sqrt(mean(x^2) + eps)) in float32, then cast to the input dtype.
PLAIN_RMS_NORMS = ("LlamaRMSNorm", "MistralRMSNorm", "Qwen2RMSNorm", "Qwen3RMSNorm")
_FAST_CLASSES: dict[type, type] = {}


class _RMSNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, eps):
        rstd = torch.rsqrt(hidden.pow(2).mean(-1, keepdim=True) + eps)
        normalised = hidden * rstd
        ctx.save_for_backward(normalised, weight, rstd)
        return weight * normalised

    @staticmethod
    def backward(ctx, grad_output):
        normalised, weight, rstd = ctx.saved_tensors
        grad_normalised = grad_output * weight
        projection = (grad_normalised * normalised).mean(-1, keepdim=True)
        grad_hidden = (grad_normalised - normalised * projection).mul_(rstd)
        grad_weight = (grad_output * normalised).reshape(-1, weight.shape[-1]).sum(0)
        return grad_hidden, grad_weight, None


def _fast_forward(self, hidden_states):
    if (
        torch.is_grad_enabled()
        and (hidden_states.requires_grad or self.weight.requires_grad)
        and hidden_states.dtype == self.weight.dtype == torch.float32
    ):
        return _RMSNorm.apply(hidden_states, self.weight, self.variance_epsilon)
    return super(type(self), self).forward(hidden_states)


def use_fast_rms_norm(model) -> int:
    """Give every RMSNorm module of a class in `PLAIN_RMS_NORMS` the written-out backward; returns how many."""
    count = 0
    for module in model.modules():
        cls = type(module)
        if cls.__name__ not in PLAIN_RMS_NORMS:
            continue
        if cls not in _FAST_CLASSES:
            _FAST_CLASSES[cls] = type(f"Fast{cls.__name__}", (cls,), {"forward": _fast_forward})
        module.__class__ = _FAST_CLASSES[cls]
        count += 1
    return count
