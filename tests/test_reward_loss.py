"""Reward-model loss, margins and per-rating accuracy (Llama 2, sec. 3.2.2, Tables 8 and 27)."""

import math

import pytest
import torch

from alignment.ratings import RATINGS, normalize_rating
from reward.loss import MARGIN_LARGE, MARGIN_SMALL, accuracy_by_rating, margin_for, ranking_loss


def neg_log_sigmoid(z: float) -> float:
    return -math.log(1.0 / (1.0 + math.exp(-z)))


@pytest.mark.parametrize(
    "label, expected",
    [
        ("significantly_better", "significantly_better"),
        ("significantly better", "significantly_better"),
        ("Significantly Better", "significantly_better"),
        ("  better ", "better"),
        ("slightly-better", "slightly_better"),
        ("negligibly better / unsure", "negligibly_better"),
        ("Negligibly Better or Unsure", "negligibly_better"),
        ("negligibly_better_or_unsure", "negligibly_better"),
        ("unsure", "negligibly_better"),
        (0, "significantly_better"),
        (1, "better"),
        (2, "slightly_better"),
        (3, "negligibly_better"),
    ],
)
def test_normalize_rating_accepts_common_spellings(label, expected):
    assert normalize_rating(label) == expected


@pytest.mark.parametrize("label", ["much better", "", 4, -1, True, None, 1.0])
def test_normalize_rating_rejects_unknown_labels_and_lists_the_accepted_ones(label):
    with pytest.raises(ValueError) as err:
        normalize_rating(label)
    for name in RATINGS:
        assert name in str(err.value)


def test_margin_tables_match_table_27():
    assert RATINGS == ("significantly_better", "better", "slightly_better", "negligibly_better")
    assert [MARGIN_SMALL[r] for r in RATINGS] == [1.0, 2.0 / 3.0, 1.0 / 3.0, 0.0]
    assert [MARGIN_LARGE[r] for r in RATINGS] == [3.0, 2.0, 1.0, 0.0]


def test_margin_for_each_table():
    ratings = ["negligibly better / unsure", "Significantly Better", "better", 2]
    torch.testing.assert_close(margin_for(ratings, "small"), torch.tensor([0.0, 1.0, 2.0 / 3.0, 1.0 / 3.0]))
    torch.testing.assert_close(margin_for(ratings, "large"), torch.tensor([0.0, 3.0, 2.0, 1.0]))
    torch.testing.assert_close(margin_for(ratings, "none"), torch.zeros(4))
    assert margin_for([], "small").shape == (0,)
    with pytest.raises(ValueError, match="margin table"):
        margin_for(ratings, "medium")


def test_ranking_loss_single_pair_with_small_margin():
    # r_c = 2, r_r = 1, "better" under the small table: m = 2/3, so the logit is 1 - 2/3 = 1/3.
    loss = ranking_loss(torch.tensor([2.0]), torch.tensor([1.0]), torch.tensor([2.0 / 3.0]))
    assert loss.item() == pytest.approx(-math.log(1.0 / (1.0 + math.exp(-1.0 / 3.0))), rel=1e-6)


def test_ranking_loss_is_the_mean_over_pairs_and_margin_none_is_zero_margin():
    chosen = torch.tensor([2.0, 0.5, -1.0])
    rejected = torch.tensor([1.0, 1.5, -1.0])
    margins = torch.tensor([3.0, 0.0, 1.0])
    # Logits: 2 - 1 - 3 = -2; 0.5 - 1.5 - 0 = -1; -1 + 1 - 1 = -1.
    expected = (neg_log_sigmoid(-2.0) + neg_log_sigmoid(-1.0) + neg_log_sigmoid(-1.0)) / 3
    assert ranking_loss(chosen, rejected, margins).item() == pytest.approx(expected, rel=1e-6)
    # No margin: logits 1, -1, 0.
    expected_plain = (neg_log_sigmoid(1.0) + neg_log_sigmoid(-1.0) + math.log(2.0)) / 3
    assert ranking_loss(chosen, rejected).item() == pytest.approx(expected_plain, rel=1e-6)


def test_ranking_loss_gradient():
    # dL/dr_c = -(1 - sigmoid(z)) / B with z = r_c - r_r - m; dL/dr_r is its negative.
    chosen = torch.tensor([2.0, 0.0], requires_grad=True)
    rejected = torch.tensor([1.0, 0.0], requires_grad=True)
    ranking_loss(chosen, rejected, torch.tensor([1.0 / 3.0, 0.0])).backward()
    g0 = -(1.0 - 1.0 / (1.0 + math.exp(-2.0 / 3.0))) / 2
    g1 = -(1.0 - 0.5) / 2
    torch.testing.assert_close(chosen.grad, torch.tensor([g0, g1]))
    torch.testing.assert_close(rejected.grad, torch.tensor([-g0, -g1]))


def test_ranking_loss_is_finite_for_badly_wrong_pairs():
    # -log(sigmoid(-200)) = 200 + log(1 + e^-200) = 200; a naive log(sigmoid(.)) gives inf.
    loss = ranking_loss(torch.tensor([-100.0]), torch.tensor([100.0]), torch.tensor([0.0]))
    assert loss.item() == pytest.approx(200.0, rel=1e-6)


def test_ranking_loss_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match="shape"):
        ranking_loss(torch.zeros(3), torch.zeros(3, 1))


def test_accuracy_by_rating_counts_ties_as_wrong_and_reports_empty_levels():
    chosen = torch.tensor([2.0, 1.0, 0.0, 3.0, 0.5, 1.0])
    rejected = torch.tensor([1.0, 2.0, 0.0, 1.0, 0.4, 1.0])
    ratings = ["significantly better", 0, "better", "better", "unsure", "negligibly_better"]
    # Correct: yes, no, tie (wrong), yes, yes, tie (wrong).
    report = accuracy_by_rating(chosen, rejected, ratings)
    assert report["overall"] == {"count": 6, "accuracy": 3 / 6}
    assert report["significantly_better"] == {"count": 2, "accuracy": 1 / 2}
    assert report["better"] == {"count": 2, "accuracy": 1 / 2}
    assert report["slightly_better"] == {"count": 0, "accuracy": None}
    assert report["negligibly_better"] == {"count": 2, "accuracy": 1 / 2}
    assert list(report) == ["overall", *RATINGS]


def test_accuracy_by_rating_rejects_length_mismatch():
    with pytest.raises(ValueError):
        accuracy_by_rating(torch.zeros(2), torch.zeros(2), ["better"])
