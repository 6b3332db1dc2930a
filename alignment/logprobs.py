"""Log-probabilities of chosen tokens from ``(tokens, vocab)`` logits, shared by PPO's policy and reference
log-probs and the reward model's likelihood feature."""

from __future__ import annotations

import torch


def target_logprobs(
    logits: torch.Tensor, targets: torch.Tensor, with_entropy: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``log softmax(logits)[target]`` per row of ``(tokens, vocab)`` logits (differentiable), and with
    ``with_entropy`` the entropy of ``softmax(logits)`` per row (no gradient; else None). The logits must be
    finite (a model's): a -inf entry would make the entropy NaN."""
    return _TargetLogprob.apply(logits, targets, with_entropy)


class _TargetLogprob(torch.autograd.Function):
    """``log softmax(z)[target]`` per row of ``(tokens, vocab)`` logits, and (no gradient) the entropy of
    ``softmax(z)``, in few passes over the vocabulary.

    On a small model these element-wise passes cost more than the LM head's matmul: autograd's log-softmax,
    gather and entropy read and write the ``(tokens, vocab)`` array about twelve times, this about seven (max,
    exp, sum, entropy's dot product; the backward one multiply and a scatter of the targets). The gradient is
    the exact one, ``g * (onehot(target) - softmax(z))``."""

    @staticmethod
    def forward(ctx, logits, targets, with_entropy):
        peak = logits.amax(dim=-1, keepdim=True)
        unnormalised = torch.sub(logits, peak).exp_()  # exp(z - max), kept for the backward pass
        total = unnormalised.sum(dim=-1)
        normaliser = total.log() + peak.squeeze(-1)
        logprob = logits.gather(1, targets.unsqueeze(-1)).squeeze(-1) - normaliser
        # H = logsumexp(z) - sum(softmax(z) * z)
        entropy = normaliser - torch.linalg.vecdot(unnormalised, logits) / total if with_entropy else None
        ctx.save_for_backward(unnormalised, total, targets)
        if entropy is not None:
            ctx.mark_non_differentiable(entropy)
        return logprob, entropy

    @staticmethod
    def backward(ctx, grad_logprob, grad_entropy):
        unnormalised, total, targets = ctx.saved_tensors
        grad = unnormalised * (-grad_logprob / total).unsqueeze(-1)
        grad.scatter_add_(1, targets.unsqueeze(-1), grad_logprob.unsqueeze(-1))
        return grad, None, None
