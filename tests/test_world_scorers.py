"""The world's gold judges behind the reward-model interface, exact and with a fixed per-answer error."""

import math
import statistics

import pytest

from alignment.config import RecipeError
from alignment.world import prompt_by_id, prompt_pool
from alignment.world.scorers import WorldJudgeScorer, world_judge

PLUS = prompt_by_id("plus/3-4/0")  # "what is 3 plus 4?"
MESSAGES = [{"role": "user", "content": PLUS["prompt"]}]


def test_gold_scores_are_the_clamped_logit_of_gold_helpfulness():
    judge = world_judge("builtin:world-helpfulness")
    scores = judge.score([MESSAGES] * 3, ["3 plus 4 is 7.", "7.", "3 plus 4 is 8."]).scores.tolist()
    # gold 1.0 (clamped to 0.98), 0.5, 0.25
    assert scores == pytest.approx([math.log(0.98 / 0.02), 0.0, math.log(0.25 / 0.75)], abs=1e-6)


def test_noisy_judge_adds_the_same_error_to_the_same_answer_every_time():
    gold, noisy = world_judge("builtin:world-helpfulness"), world_judge("builtin:world-helpfulness+noise=2")
    assert noisy.noise == 2.0
    answers = ["3 plus 4 is 7.", "3 plus 4 is 8.", "7."]
    first = noisy.score([MESSAGES] * 3, answers).scores
    again = WorldJudgeScorer("helpfulness", 2.0).score([MESSAGES] * 3, list(reversed(answers))).scores
    assert first.tolist() == pytest.approx(list(reversed(again.tolist())))
    assert (first - gold.score([MESSAGES] * 3, answers).scores).abs().min() > 0


def test_noisy_judge_error_has_the_named_spread():
    prompts = [p for p in prompt_pool("train") if p["kind"] == "helpfulness"][:600]
    messages = [[{"role": "user", "content": p["prompt"]}] for p in prompts]
    answers = [p["gold"]["ideal"] for p in prompts]
    gold = world_judge("builtin:world-helpfulness").score(messages, answers).scores
    errors = (world_judge("builtin:world-helpfulness+noise=1.5").score(messages, answers).scores - gold).tolist()
    # A fixed draw (the error is seeded by the text), so these bounds cannot flake: 600 normal draws of s.d. 1.5.
    assert abs(statistics.mean(errors)) < 0.2
    assert statistics.stdev(errors) == pytest.approx(1.5, rel=0.1)


@pytest.mark.parametrize(
    "name",
    [
        "builtin:world-x",
        "builtin:world-safety+noise=1",
        "builtin:world-helpfulness+noise=",
        "builtin:world-helpfulness+",
    ],
)
def test_unknown_judge_names_are_one_clear_error(name):
    with pytest.raises(RecipeError, match="unknown builtin judge"):
        world_judge(name)


def test_a_checkpoint_path_is_not_a_judge():
    assert world_judge("runs/x/reward_helpfulness") is None
    with pytest.raises(ValueError, match="only the helpfulness judge"):
        WorldJudgeScorer("safety", 1.0)
