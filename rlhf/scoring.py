"""Scoring samples with both reward models: r_h, r_s, p_s = sigmoid(r_s), the gate and R_c (sec. 3.2.3, eq. 3).

The combined reward itself is `rlhf.rewards.combined_reward` (the project's one definition); this module only
runs the two scorers over (prompt, response) pairs and returns plain tensors, so rejection sampling, PPO and
the reports read the same numbers. A scorer is anything with
`score(prompts: list[list[dict]], responses: list[str]) -> ScoreBatch(scores, probs)`, e.g.
`reward.scoring.RewardScorer`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch

from rlhf.rewards import SAFETY_THRESHOLD, combined_reward


class Scorer(Protocol):
    def score(self, prompts: list[list[dict]], responses: list[str]): ...


@dataclass
class SampleScores:
    """Per-sample rewards, all shape (N,), on the raw-score (logit) scale except `safety_prob`."""

    helpfulness: torch.Tensor  # r_h, raw Helpfulness RM score
    safety: torch.Tensor  # r_s, raw Safety RM score
    safety_prob: torch.Tensor  # p_s = sigmoid(r_s), what the 0.15 threshold is compared with
    combined: torch.Tensor  # R_c: r_s where the gate holds, r_h elsewhere
    use_safety: torch.Tensor  # bool: IS_SAFETY(p) or p_s < threshold

    def __len__(self) -> int:
        return int(self.combined.shape[0])

    def rows(self) -> list[dict]:
        """One JSON-friendly dict per sample (the fields rejection sampling stores with each sample)."""
        return [
            {"r_h": float(h), "r_s": float(s), "p_s": float(p), "r_c": float(c), "use_safety": bool(u)}
            for h, s, p, c, u in zip(
                self.helpfulness.tolist(),
                self.safety.tolist(),
                self.safety_prob.tolist(),
                self.combined.tolist(),
                self.use_safety.tolist(),
            )
        ]


def combine_scores(
    helpfulness: torch.Tensor,
    safety: torch.Tensor,
    is_safety_prompt: torch.Tensor | Sequence[bool] | bool,
    threshold: float = SAFETY_THRESHOLD,
    flagged_reward: str = "safety",
) -> SampleScores:
    """Raw r_h and r_s into `SampleScores` through `combined_reward` (the gate lives there, not here)."""
    helpfulness = torch.as_tensor(helpfulness, dtype=torch.float32).detach().cpu()
    safety = torch.as_tensor(safety, dtype=torch.float32).detach().cpu()
    flags = torch.as_tensor(is_safety_prompt, dtype=torch.bool)
    reward = combined_reward(helpfulness, safety, flags, threshold, flagged_reward)
    return SampleScores(helpfulness, safety, torch.sigmoid(safety), reward.score, reward.use_safety)


def score_samples(
    helpfulness_scorer: Scorer,
    safety_scorer: Scorer,
    prompts: list[list[dict]],
    responses: list[str],
    is_safety_prompt: Sequence[bool] | torch.Tensor,
    threshold: float = SAFETY_THRESHOLD,
    flagged_reward: str = "safety",
) -> SampleScores:
    """Score each (prompt messages, response text) with R_h and R_s and combine them into R_c."""
    if not (len(prompts) == len(responses) == len(is_safety_prompt)):
        raise ValueError("prompts, responses and is_safety_prompt must have the same length")
    if not prompts:
        empty = torch.zeros(0)
        return combine_scores(empty, empty, torch.zeros(0, dtype=torch.bool), threshold, flagged_reward)
    helpfulness = helpfulness_scorer.score(prompts, responses).scores
    safety = safety_scorer.score(prompts, responses).scores
    return combine_scores(helpfulness, safety, is_safety_prompt, threshold, flagged_reward)
