"""Gold judges of the embedded world with the reward-model interface, for offline demos, tests and oracle runs.

`builtin:world-helpfulness` and `builtin:world-safety` stand in for R_h and R_s when no reward model is trained yet
(the tiny preset), or as a perfect judge in place of the trained ones (the pipeline's `oracle_judges`, an upper bound
on what better reward models could give): they score with the world's exact judges (`alignment.world`) and return raw
scores, as a reward model does, so the gate of eq. (3) and the logit/whitening of R~_c apply unchanged. Only prompts of
the builtin world can be judged; a PPO run on other prompts needs real reward models.

`builtin:world-helpfulness+noise=S` is gold helpfulness with a fixed error per answer: S times a standard normal drawn
from the (prompt, answer) text, added to the score. The same answer always gets the same error, as a trained reward
model's mistakes are a property of the answer, not of the call, so a policy can learn to seek them out. Sweeping S
asks how accurate a reward model must be for PPO to gain (`benchmarks/ppo_over_rs.py --judge_noise`).
"""

from __future__ import annotations

import math
import random
import re

import torch

from alignment.config import RecipeError
from alignment.data import PromptRecord
from alignment.world import gold_helpfulness, gold_is_safe, is_safety_prompt, prompt_pool, prompts_by_text
from reward.scoring import ScoreBatch

WORLD_JUDGES = ("builtin:world-helpfulness", "builtin:world-safety")
_JUDGE_NAME = re.compile(r"builtin:world-(helpfulness)\+noise=(\d+(?:\.\d*)?)|builtin:world-(helpfulness|safety)")
# Gold helpfulness is in [0, 1]; the clamp keeps its logit finite (+-3.9).
_PROB_FLOOR = 0.02
# A violation sits well under the 0.15 gate, a safe answer well over it.
_SAFE_PROB, _UNSAFE_PROB = 0.95, 0.05


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


class WorldJudgeScorer:
    """`score(prompts, responses) -> ScoreBatch` from `gold_helpfulness` or `gold_is_safe`."""

    def __init__(self, kind: str, noise: float = 0.0):
        if kind not in ("helpfulness", "safety"):
            raise ValueError(f"kind must be helpfulness or safety, got {kind!r}")
        if noise < 0 or (noise and kind != "helpfulness"):
            raise ValueError(f"noise must be >= 0, and only the helpfulness judge has it; got {noise} for {kind}")
        self.kind, self.noise = kind, noise
        self.by_text = prompts_by_text()

    def _world_prompt(self, messages: list[dict]) -> dict:
        text = messages[-1]["content"]
        if text not in self.by_text:
            raise RecipeError(f"builtin:world-{self.kind} judges only prompts of the builtin world, not {text[:60]!r}")
        return self.by_text[text]

    def score(self, prompts: list[list[dict]], responses: list[str]) -> ScoreBatch:
        probs = []
        for messages, response in zip(prompts, responses, strict=True):
            prompt = self._world_prompt(messages)
            if self.kind == "helpfulness":
                probs.append(min(max(gold_helpfulness(prompt, response), _PROB_FLOOR), 1.0 - _PROB_FLOOR))
            else:
                probs.append(_SAFE_PROB if gold_is_safe(prompt, response) else _UNSAFE_PROB)
        scores = [_logit(p) for p in probs]
        if self.noise:
            texts = [f"{messages[-1]['content']}\n{response}" for messages, response in zip(prompts, responses)]
            scores = [score + self.noise * random.Random(text).gauss(0.0, 1.0) for score, text in zip(scores, texts)]
        scores = torch.tensor(scores, dtype=torch.float32)
        return ScoreBatch(scores=scores, probs=torch.sigmoid(scores))


def world_judge(name: str) -> WorldJudgeScorer | None:
    """The gold judge a `builtin:world-*` reward-model name stands for; None for a reward-model checkpoint."""
    if not name.startswith("builtin:world"):
        return None
    match = _JUDGE_NAME.fullmatch(name)
    if match is None:
        known = ", ".join(WORLD_JUDGES)
        raise RecipeError(f"unknown builtin judge '{name}' (known: {known}, builtin:world-helpfulness+noise=S)")
    if match[3]:
        return WorldJudgeScorer(match[3])
    return WorldJudgeScorer("helpfulness", float(match[2]))


def world_prompt_records(split: str):
    """The builtin world's prompts of a split as `PromptRecord`s (IS_SAFETY from the prompt's kind)."""
    return [
        PromptRecord(p["id"], [{"role": "user", "content": p["prompt"]}], is_safety_prompt(p), {"family": p["family"]})
        for p in prompt_pool(split)
    ]
