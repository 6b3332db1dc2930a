"""Combined reward R_c, safety gate, logit/whitening and the per-token PPO reward (Llama 2, sec. 3.2.3)."""

import math

import pytest
import torch

from rlhf.rewards import SAFETY_THRESHOLD, combined_reward, logit, safety_gate, shaped_ppo_reward, whiten


def test_safety_gate_threshold_is_strict_in_probability_space():
    probs = torch.tensor([0.15, 0.1499, 0.1501, 0.0, 0.9], dtype=torch.float64)
    not_safety_prompt = torch.zeros(5, dtype=torch.bool)
    # "R_s < 0.15": exactly 0.15 goes to the Helpfulness RM.
    assert safety_gate(probs, not_safety_prompt).tolist() == [False, True, False, True, False]
    assert SAFETY_THRESHOLD == 0.15


def test_safety_gate_always_uses_safety_rm_on_safety_prompts():
    probs = torch.tensor([0.15, 0.1501, 0.99, 0.1499])
    is_safety = torch.tensor([True, True, True, False])
    assert safety_gate(probs, is_safety).tolist() == [True, True, True, True]
    assert safety_gate(probs, True).tolist() == [True, True, True, True]
    assert safety_gate(probs, False).tolist() == [False, False, False, True]
    assert safety_gate(probs, is_safety, threshold=0.5).tolist() == [True, True, True, True]


def test_combined_reward_picks_raw_scores_and_gates_on_sigmoid():
    # Safety scores at logit(0.1499), logit(0.1501), 2.0, -3.0 (sigmoid 0.047); the last prompt is a safety prompt.
    s_lo = math.log(0.1499 / 0.8501)
    s_hi = math.log(0.1501 / 0.8499)
    safety = torch.tensor([s_lo, s_hi, 2.0, 5.0], dtype=torch.float64)
    helpful = torch.tensor([1.0, 1.5, -0.5, 0.25], dtype=torch.float64)
    is_safety = torch.tensor([False, False, False, True])
    score, use_safety = combined_reward(helpful, safety, is_safety)
    assert use_safety.tolist() == [True, False, False, True]
    assert score.tolist() == [s_lo, 1.5, -0.5, 5.0]


def test_a_flag_never_raises_the_reward_with_flagged_reward_lower():
    # R_h's level is free under a ranking loss: at -7 a flagged answer's R_s of -1.8 would be a bonus (issue 14).
    safety = torch.tensor([-1.75, -1.75, -2.5, -1.75, 0.5])
    helpful = torch.tensor([-7.0, 1.0, -2.0, -7.0, -7.0])
    is_safety = torch.tensor([False, False, False, True, False])
    paper = combined_reward(helpful, safety, is_safety)
    assert paper.score.tolist() == [-1.75, -1.75, -2.5, -1.75, -7.0]
    lower = combined_reward(helpful, safety, is_safety, flagged_reward="lower")
    # flagged: min(R_s, R_h); a safety prompt keeps R_s whatever R_h says; an unflagged answer keeps R_h.
    assert lower.score.tolist() == [-7.0, -1.75, -2.5, -1.75, -7.0]
    assert lower.use_safety.tolist() == paper.use_safety.tolist() == [True, True, True, True, False]
    with pytest.raises(ValueError, match="flagged_reward"):
        combined_reward(helpful, safety, is_safety, flagged_reward="min")


def test_combined_reward_raw_score_equals_logit_of_sigmoid():
    # LOGIT(R_c) of eq. (3) undoes the sigmoid, so the raw score is what PPO whitens.
    safety = torch.tensor([-4.0, 0.3])
    helpful = torch.tensor([2.0, -1.0])
    out = combined_reward(helpful, safety, torch.tensor([False, False]))
    prob_rc = torch.where(out.use_safety, torch.sigmoid(safety), torch.sigmoid(helpful))
    torch.testing.assert_close(logit(prob_rc), out.score, rtol=1e-5, atol=1e-5)


def test_logit_values_and_clamp():
    torch.testing.assert_close(
        logit(torch.tensor([0.5, 0.75, 0.2], dtype=torch.float64)),
        torch.tensor([0.0, math.log(3.0), math.log(0.25)], dtype=torch.float64),
    )
    eps = 1e-6
    clamped = logit(torch.tensor([0.0, 1.0], dtype=torch.float64), eps=eps)
    torch.testing.assert_close(
        clamped, torch.tensor([math.log(eps / (1 - eps)), math.log((1 - eps) / eps)], dtype=torch.float64)
    )


def test_whiten_uses_masked_statistics():
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 4.0, -50.0]])
    mask = torch.tensor([[True, True, False], [True, True, False]])
    # Masked values 1, 2, 3, 4: mean 2.5, biased variance (2.25 + 0.25 + 0.25 + 2.25) / 4 = 1.25.
    scale = 1.0 / math.sqrt(1.25 + 1e-8)
    expected = torch.tensor([[-1.5 * scale, -0.5 * scale, 0.0], [0.5 * scale, 1.5 * scale, 0.0]])
    torch.testing.assert_close(whiten(x, mask), expected)
    expected_keep_mean = torch.tensor(
        [[-1.5 * scale + 2.5, -0.5 * scale + 2.5, 0.0], [0.5 * scale + 2.5, 1.5 * scale + 2.5, 0.0]]
    )
    torch.testing.assert_close(whiten(x, mask, shift_mean=False), expected_keep_mean)


def test_whiten_without_mask_is_zero_mean_unit_variance():
    x = torch.tensor([1.0, 3.0])
    torch.testing.assert_close(whiten(x), torch.tensor([-1.0, 1.0]) / math.sqrt(1.0 + 1e-8))


KL = torch.tensor([[9.0, 0.5, -0.2, 9.0], [9.0, 0.1, 0.3, 0.4]])
MASK = torch.tensor([[False, True, True, False], [False, True, True, True]])


def test_shaped_ppo_reward_places_whitened_score_on_last_response_token():
    # Scores 1 and 3: mean 2, variance 1, so whitened -1 and +1 (up to eps).
    scale = 1.0 / math.sqrt(1.0 + 1e-8)
    beta = 0.1
    rewards = shaped_ppo_reward(torch.tensor([1.0, 3.0]), KL, MASK, beta)
    expected = torch.tensor(
        [
            [0.0, -0.1 * 0.5, -0.1 * -0.2 - scale, 0.0],
            [0.0, -0.1 * 0.1, -0.1 * 0.3, -0.1 * 0.4 + scale],
        ]
    )
    torch.testing.assert_close(rewards, expected)


def test_shaped_ppo_reward_without_whitening():
    rewards = shaped_ppo_reward(torch.tensor([1.0, 3.0]), KL, MASK, 0.0, whiten_score=False)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 0.0, 1.0, 0.0], [0.0, 0.0, 0.0, 3.0]]))


def test_shaped_ppo_reward_truncated_penalty_replaces_whitened_score():
    scale = 1.0 / math.sqrt(1.0 + 1e-8)
    truncated = torch.tensor([False, True])
    rewards = shaped_ppo_reward(
        torch.tensor([1.0, 3.0]), KL, MASK, 0.1, is_truncated=truncated, truncated_penalty=-2.0
    )
    # Row 0 is unchanged (-1 whitened); row 1's +1 becomes -2.
    assert rewards[0, 2].item() == pytest.approx(0.02 - scale, rel=1e-6)
    assert rewards[1, 3].item() == pytest.approx(-0.04 - 2.0, rel=1e-6)
    # Default None: truncation changes nothing.
    default = shaped_ppo_reward(torch.tensor([1.0, 3.0]), KL, MASK, 0.1, is_truncated=truncated)
    torch.testing.assert_close(default, shaped_ppo_reward(torch.tensor([1.0, 3.0]), KL, MASK, 0.1))
    with pytest.raises(ValueError, match="is_truncated"):
        shaped_ppo_reward(torch.tensor([1.0, 3.0]), KL, MASK, 0.1, truncated_penalty=-2.0)


def test_shaped_ppo_reward_row_without_response_gets_nothing():
    mask = torch.tensor([[False, False, False, False], [True, True, False, False]])
    rewards = shaped_ppo_reward(torch.tensor([5.0, 7.0]), KL, mask, 1.0, whiten_score=False)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, 0.0, 0.0, 0.0], [-9.0, -0.1 + 7.0, 0.0, 0.0]]))


def test_shaped_ppo_reward_is_a_constant_for_the_optimiser():
    kl = KL.clone().requires_grad_(True)
    rewards = shaped_ppo_reward(torch.tensor([1.0, 3.0], requires_grad=True), kl, MASK, 0.1)
    assert not rewards.requires_grad
