"""The combined reward R_c and the per-token PPO reward (Llama 2, sec. 3.2.3, eq. 3-4).

This is the project's one definition of the reward; rejection sampling, PPO and the reports all call it.

Score convention. Both reward models output a raw scalar score (a logit); the paper writes its rule on the
sigmoid scale ("R_s(g|p) < 0.15") and then applies LOGIT(R_c) to undo that sigmoid. We therefore keep raw
scores throughout: the gate looks at sigmoid(safety_score), and R_c is the chosen raw score, which equals
logit(sigmoid(score)) exactly, without the precision loss of a sigmoid/logit round trip at large |score|.
``logit`` is provided for callers that hold probabilities.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from rlhf.ppo_math import masked_moments, masked_whiten

__all__ = [
    "SAFETY_THRESHOLD",
    "CombinedReward",
    "safety_gate",
    "combined_reward",
    "logit",
    "masked_moments",
    "whiten",
    "shaped_ppo_reward",
]

# Sec. 3.2.3: precision 0.89 and recall 0.55 on the Meta Safety test set.
SAFETY_THRESHOLD = 0.15
# What R_c is for an answer the gate flags on a prompt that is not a safety prompt: R_s (eq. 3), or the lower of R_s
# and R_h, so that being flagged can never raise an answer's reward (`combined_reward`).
FLAGGED_REWARDS = ("safety", "lower")

# WHITEN of eq. (3); one implementation, shared with the PPO maths (masked statistics, optional all-reduce).
whiten = masked_whiten


def safety_gate(
    safety_prob: torch.Tensor,
    is_safety_prompt: torch.Tensor | bool,
    threshold: float = SAFETY_THRESHOLD,
) -> torch.Tensor:
    """True where R_c uses the Safety RM: IS_SAFETY(p) or R_s(g|p) < threshold (sec. 3.2.3, eq. 3).

    ``safety_prob`` is sigmoid of the Safety RM score. The comparison is strict, as the paper writes
    "R_s < 0.15": a probability of exactly 0.15 goes to the Helpfulness RM.
    """
    is_safety = torch.as_tensor(is_safety_prompt, dtype=torch.bool, device=safety_prob.device)
    return is_safety | (safety_prob < threshold)


class CombinedReward(NamedTuple):
    score: torch.Tensor
    use_safety: torch.Tensor


def combined_reward(
    helpfulness_score: torch.Tensor,
    safety_score: torch.Tensor,
    is_safety_prompt: torch.Tensor | bool,
    threshold: float = SAFETY_THRESHOLD,
    flagged_reward: str = "safety",
) -> CombinedReward:
    """R_c on the raw-score (logit) scale and the gate mask: ``(score, use_safety)`` (sec. 3.2.3, eq. 3).

    ``helpfulness_score`` and ``safety_score`` are the raw RM outputs for the same (prompt, generation)
    pairs. The gate is evaluated on sigmoid(safety_score) against ``threshold``; ``score`` is the safety
    score where gated and the helpfulness score elsewhere, i.e. LOGIT(R_c) of the paper.

    ``flagged_reward="lower"`` gives an answer the gate flagged on a prompt that is not a safety prompt the lower
    of its two scores instead of R_s. Eq. 3 sends a flagged answer to R_s as a penalty: a score under
    logit(0.15) = -1.73, low when R_h's scores sit around 0. A ranking loss leaves each RM's level free, and where
    R_h's typical score is lower than that, the flag becomes a bonus that PPO learns to seek (BENCHMARKS.md,
    issue 14: one off-subject answer R_s flags on most arithmetic prompts). Safety prompts always get R_s.
    """
    if flagged_reward not in FLAGGED_REWARDS:
        raise ValueError(f"flagged_reward must be one of {FLAGGED_REWARDS}, got {flagged_reward!r}")
    use_safety = safety_gate(torch.sigmoid(safety_score), is_safety_prompt, threshold)
    score = torch.where(use_safety, safety_score, helpfulness_score)
    if flagged_reward == "lower":
        is_safety = torch.as_tensor(is_safety_prompt, dtype=torch.bool, device=score.device)
        flagged = use_safety & ~is_safety
        score = torch.where(flagged, torch.minimum(safety_score, helpfulness_score), score)
    return CombinedReward(score, use_safety)


def logit(p: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """log(p / (1 - p)) with p clamped to [eps, 1 - eps], the LOGIT of eq. (3), finite at p = 0 or 1."""
    return torch.logit(p, eps=eps)


def shaped_ppo_reward(
    combined_score: torch.Tensor,
    kl: torch.Tensor,
    response_mask: torch.Tensor,
    beta: float,
    *,
    is_truncated: torch.Tensor | None = None,
    truncated_penalty: float | None = None,
    whiten_score: bool = True,
    distributed: bool = False,
) -> torch.Tensor:
    """Per-token PPO reward R(g|p) = R~_c(g|p) - beta * KL (sec. 3.2.3, eq. 4), shape ``(B, T)``.

    ``combined_score`` is R_c per sequence on the raw scale, ``(B,)``; ``kl`` the per-token KL
    (log pi_theta - log pi_0, see ``kl_per_token``), ``(B, T)``; ``response_mask`` marks response tokens.
    Every response token gets -beta * KL; the last response token also gets R~_c = WHITEN(R_c), whitened
    over the batch (over all processes with ``distributed=True``). Other positions are 0. beta is 0.01
    for 7B/13B and 0.005 for 34B/70B in the paper.

    Truncated responses (no EOS within max_new_tokens, flagged by ``is_truncated``): with
    ``truncated_penalty`` set, their sequence-level reward is replaced by that value on the whitened scale
    (after whitening, whose statistics still include them). The default, None, leaves them unchanged: the
    paper states no such rule, and a penalty is an extra hyper-parameter that changes the objective; it is
    useful for short generation budgets where unfinished answers would otherwise be scored as finished.
    A row with no response token gets no reward.
    """
    # Rewards are constants for the optimiser: no gradient flows into the reward or reference models.
    kl, combined_score = kl.detach(), combined_score.detach()
    mask = response_mask.to(dtype=torch.bool, device=kl.device)
    sequence_reward = whiten(combined_score, distributed=distributed) if whiten_score else combined_score
    if truncated_penalty is not None:
        if is_truncated is None:
            raise ValueError("truncated_penalty is set but is_truncated was not given")
        truncated = torch.as_tensor(is_truncated, dtype=torch.bool, device=sequence_reward.device)
        sequence_reward = torch.where(truncated, torch.full_like(sequence_reward, truncated_penalty), sequence_reward)

    rewards = torch.where(mask, -beta * kl, torch.zeros((), dtype=kl.dtype, device=kl.device))
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = torch.where(mask, positions, -1).max(dim=1).values
    has_response = last >= 0
    rows = torch.arange(mask.shape[0], device=mask.device)[has_response]
    rewards[rows, last[has_response]] += sequence_reward[has_response].to(rewards.dtype)
    return rewards
