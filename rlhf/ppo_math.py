"""PPO maths on padded token tensors: masked statistics, KL, GAE, clipped losses (Llama 2, sec. 3.2.3).

Every tensor here is ``(batch, tokens)`` with a boolean ``mask`` marking the response tokens the policy
generated; prompt and padding positions are ignored (they get 0 wherever a per-token tensor is returned).
Masking uses ``torch.where`` rather than multiplication so that a NaN or inf on a padding position (e.g. a
-inf log-probability) cannot leak into a sum as ``0 * inf``.

The paper gives the objective and the hyper-parameters (clip 0.2, batch 512, mini-batch 64, one gradient
step per mini-batch) but not the PPO internals; those follow Schulman et al. (2017), the GAE paper
(Schulman et al., 2016) and the choices of TRL / OpenRLHF, documented where made.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.distributed as dist


def _as_mask(x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.ones_like(x, dtype=torch.bool)
    return mask.to(dtype=torch.bool, device=x.device).expand_as(x)


def _distributed_sum(t: torch.Tensor, distributed: bool) -> torch.Tensor:
    if distributed and dist.is_available() and dist.is_initialized():
        t = t.clone()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def masked_sum(x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sum of ``x`` over the positions where ``mask`` is true (all positions when ``mask`` is None)."""
    return torch.where(_as_mask(x, mask), x, torch.zeros((), dtype=x.dtype, device=x.device)).sum()


def masked_mean(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    global_token_count: int | float | torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean of ``x`` over masked positions.

    With ``global_token_count`` the masked sum is divided by that count instead of the local one, so that a
    batch split over processes or mini-batches gives losses (and gradients) that add up to those of the
    whole batch: pass the number of response tokens in the unit one optimiser step should average over
    (e.g. the PPO mini-batch of 64 sequences, summed over all processes). Note that DDP *averages*
    gradients over processes, so with DDP multiply such a loss by the world size.
    With no masked token and no global count the result is 0 (not NaN), so an empty shard is harmless.
    """
    total = masked_sum(x, mask)
    if global_token_count is None:
        count = _as_mask(x, mask).sum().clamp(min=1)
    else:
        count = torch.as_tensor(global_token_count, device=x.device)
    return total / count.to(total.dtype)


def masked_moments(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    distributed: bool = False,
    unbiased: bool = False,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Masked mean, variance and token count of ``x``: ``(mean, var, count)``.

    With ``distributed=True`` and ``torch.distributed`` initialised, the sums are all-reduced across
    processes, so every process gets the statistics of the global batch, identical however it is split.
    Two passes (sum and count, then the sum of squared deviations from the global mean), accumulated in
    float64, avoid the cancellation of ``E[x^2] - E[x]^2``.
    ``unbiased=False`` (default) divides by n: whitened values then have exactly unit variance; the
    n/(n-1) Bessel factor is negligible at the paper's batch of 512 anyway.
    """
    m = _as_mask(x, mask)
    x64 = torch.where(m, x.detach().to(torch.float64), 0.0)
    sums = _distributed_sum(torch.stack([x64.sum(), m.sum().to(torch.float64)]), distributed)
    total, count = sums[0], sums[1]
    if count.item() == 0:
        raise ValueError("masked_moments: the mask selects no element (in any process)")
    mean = total / count
    sq_dev = _distributed_sum(torch.where(m, (x64 - mean) ** 2, 0.0).sum(), distributed)
    denom = count - 1 if unbiased else count
    if unbiased and denom.item() == 0:
        raise ValueError("masked_moments: unbiased variance needs at least two elements")
    var = sq_dev / denom
    return mean.to(x.dtype), var.to(x.dtype), count


def masked_var(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    unbiased: bool = False,
    distributed: bool = False,
) -> torch.Tensor:
    """Masked variance of ``x`` (biased by default; see ``masked_moments``)."""
    return masked_moments(x, mask, distributed=distributed, unbiased=unbiased)[1]


def masked_whiten(
    x: torch.Tensor,
    mask: torch.Tensor | None = None,
    shift_mean: bool = True,
    eps: float = 1e-8,
    distributed: bool = False,
) -> torch.Tensor:
    """WHITEN of sec. 3.2.3: ``(x - mean) / sqrt(var + eps)`` with masked statistics.

    Used on the combined reward R_c ("whitening stabilises training and balances against the KL term") and
    on advantages. ``shift_mean=False`` rescales but adds the mean back (as TRL's ``whiten``). Positions
    outside ``mask`` are returned as 0. ``distributed`` computes the statistics over all processes.
    The statistics are constants (detached): whitening is a normalisation, not something to differentiate.
    """
    m = _as_mask(x, mask)
    mean, var, _ = masked_moments(x, m, distributed=distributed)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(m, whitened, torch.zeros((), dtype=whitened.dtype, device=whitened.device))


def kl_per_token(
    logprobs: torch.Tensor,
    ref_logprobs: torch.Tensor,
    kind: str = "k1",
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Per-token estimate of KL(pi_theta || pi_0) from sampled tokens' log-probabilities (sec. 3.2.3).

    ``logprobs`` are under the policy that sampled the tokens, ``ref_logprobs`` under the reference pi_0.
    kind="k1": ``lp - ref`` (unbiased, can be negative per token; what the paper's penalty beta*KL sums to).
    kind="k3": ``(r - 1) - log r`` with ``r = exp(ref - lp)`` (unbiased and never negative; Schulman 2020,
    "Approximating KL divergence"). Positions outside ``mask`` (prompt, padding) are 0.
    """
    log_ratio = torch.where(_as_mask(logprobs, mask), logprobs - ref_logprobs, 0.0)
    if kind == "k1":
        kl = log_ratio
    elif kind == "k3":
        # r = exp(ref - lp) = exp(-log_ratio); (r - 1) - log r = expm1(-log_ratio) + log_ratio.
        kl = torch.expm1(-log_ratio) + log_ratio
    else:
        raise ValueError(f"unknown KL estimator {kind!r}; expected 'k1' or 'k3'")
    return kl


def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation over response tokens: ``(advantages, returns)``.

    delta_t = r_t + gamma * V_{t+1} - V_t;  A_t = delta_t + gamma * lam * A_{t+1}, where t+1 is the next
    *response* token of the same row. After a row's last response token V_{t+1} = 0 and A_{t+1} = 0:
    the response ends there (EOS or truncation), so nothing is bootstrapped. Masked-out positions (prompt
    on the left, padding on the right, rows of different lengths) get 0 advantage and 0 return and are
    skipped by the recursion. returns = advantages + values on response tokens.
    The paper does not give gamma or lambda; 1.0 and 0.95 are TRL's defaults for LM PPO (a single
    sequence-level reward, so no discounting within the response).
    """
    m = _as_mask(values, mask)
    rewards, values = rewards.detach(), values.detach()
    zero = torch.zeros_like(values[:, 0])
    next_value, next_advantage = zero, zero
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantage = delta + gamma * lam * next_advantage
        on = m[:, t]
        advantages[:, t] = torch.where(on, advantage, zero)
        next_advantage = torch.where(on, advantage, next_advantage)
        next_value = torch.where(on, values[:, t], next_value)
    returns = torch.where(m, advantages + values, torch.zeros_like(values))
    return advantages, returns


class PolicyLoss(NamedTuple):
    loss: torch.Tensor
    clip_fraction: torch.Tensor
    approx_kl: torch.Tensor


def policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    global_token_count: int | float | torch.Tensor | None = None,
) -> PolicyLoss:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), clip 0.2 as in sec. 3.2.3.

    loss = mean over response tokens of max(-A * rho, -A * clip(rho, 1 - clip, 1 + clip)), rho = exp(lp - old).
    Also returns (detached) ``clip_fraction``, the share of tokens where the clipped term is the active
    one, and ``approx_kl``, the k3 estimate of KL(pi_old || pi_theta) (unbiased and non-negative, where
    0.5 * (lp - old)^2 is only a second-order approximation). All three use ``global_token_count`` so that
    they add up over mini-batches / processes.
    """
    m = _as_mask(logprobs, mask)
    # Zeroing the log-ratio on padding before exp keeps inf/NaN out of the backward pass.
    log_ratio = torch.where(m, logprobs - old_logprobs, 0.0)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip, 1.0 + clip)
    loss = masked_mean(torch.maximum(unclipped, clipped), m, global_token_count)
    with torch.no_grad():
        clip_fraction = masked_mean((clipped > unclipped).to(logprobs.dtype), m, global_token_count)
        approx_kl = masked_mean(
            kl_per_token(old_logprobs, logprobs.detach(), kind="k3", mask=m), m, global_token_count
        )
    return PolicyLoss(loss, clip_fraction, approx_kl)


class ValueLoss(NamedTuple):
    loss: torch.Tensor
    clip_fraction: torch.Tensor


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor,
    clip: float = 0.2,
    global_token_count: int | float | torch.Tensor | None = None,
) -> ValueLoss:
    """Clipped value loss: 0.5 * mean(max((V - R)^2, (V_clip - R)^2)), V_clip = old + clip(V - old, +-clip).

    The paper gives only the policy clip (0.2); using the same range for the value head follows OpenAI's
    PPO baselines and TRL (``cliprange_value=0.2``). Taking the max makes the clip pessimistic, as for the
    policy. The 0.5 makes the gradient (V - R). ``clip_fraction`` is the share of tokens where the clipped
    error is the larger one.
    """
    m = _as_mask(values, mask)
    clipped_values = old_values + torch.clamp(values - old_values, -clip, clip)
    error = (values - returns) ** 2
    error_clipped = (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(error, error_clipped), m, global_token_count)
    with torch.no_grad():
        clip_fraction = masked_mean((error_clipped > error).to(values.dtype), m, global_token_count)
    return ValueLoss(loss, clip_fraction)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the softmax over the last dimension, per position: ``-sum p log p``.

    Log-probabilities are clamped to the dtype's finite minimum so that vocabulary entries masked to -inf
    contribute 0 * finite = 0 instead of NaN (also in the backward pass).
    """
    logp = torch.log_softmax(logits, dim=-1)
    p = logp.exp()
    return -(p * logp.clamp(min=torch.finfo(logp.dtype).min)).sum(dim=-1)


def explained_variance(
    values: torch.Tensor,
    returns: torch.Tensor,
    mask: torch.Tensor | None = None,
    distributed: bool = False,
) -> torch.Tensor:
    """1 - Var[R - V] / Var[R] over response tokens: 1 is a perfect value head, 0 no better than a constant.

    NaN when the returns have zero variance (the ratio is undefined).
    """
    var_returns = masked_var(returns, mask, distributed=distributed)
    var_residual = masked_var(returns - values, mask, distributed=distributed)
    explained = 1.0 - var_residual / var_returns
    return torch.where(var_returns > 0, explained, torch.full_like(explained, float("nan")))


def global_token_count(mask: torch.Tensor, distributed: bool = False) -> torch.Tensor:
    """Number of masked (response) tokens summed over all processes: the ``global_token_count`` to pass to
    ``masked_mean``, ``policy_loss`` and ``value_loss`` so that a mini-batch split over processes and
    micro-batches gives the loss of the whole mini-batch (sec. 3.2.3: one gradient step per mini-batch)."""
    return _distributed_sum(mask.to(torch.bool).sum().to(torch.float64), distributed)
