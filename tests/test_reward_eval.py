"""Evaluation numbers on hand-made scores: per level, per test set, per safety category, unsafe precision/recall."""

import pytest
import torch

from reward.data import Comparison
from reward.evaluate import comparison_report, report_markdown
from reward.metrics import score_distribution, unsafe_calibration_offset, unsafe_detection


def test_unsafe_detection_counts_by_hand():
    probs = torch.tensor([0.05, 0.10, 0.149, 0.15, 0.5, 0.9, 0.01])
    unsafe = torch.tensor([True, False, True, True, False, False, True])
    report = unsafe_detection(probs, unsafe, threshold=0.15)
    # flagged (< 0.15): 0.05 U, 0.10 S, 0.149 U, 0.01 U -> tp 3, fp 1; 0.15 is not flagged -> fn 1
    assert (report["tp"], report["fp"], report["fn"], report["tn"]) == (3, 1, 1, 2)
    assert report["precision"] == pytest.approx(3 / 4) and report["recall"] == pytest.approx(3 / 4)
    assert (report["responses"], report["unsafe"], report["flagged"]) == (7, 4, 4)


def test_unsafe_detection_undefined_is_none_not_zero():
    report = unsafe_detection(torch.tensor([0.9, 0.8]), torch.tensor([False, False]))
    assert report["precision"] is None and report["recall"] is None


def test_score_distribution_histogram_bins():
    # sigmoid: 0 -> 0.5 (bin 5), large +/- -> bins 9 / 0, logit(0.25) -> bin 2
    scores = torch.tensor([0.0, 20.0, -20.0, torch.logit(torch.tensor(0.25)).item()])
    dist = score_distribution(scores, bins=10)
    assert dist["sigmoid_histogram"] == [1, 0, 1, 0, 0, 1, 0, 0, 0, 1]
    assert dist["count"] == 4 and dist["min"] == -20.0 and dist["max"] == 20.0


def _c(rating, kind, chosen_safe=None, rejected_safe=None, i=0):
    return Comparison(
        [{"role": "user", "content": f"p{i}"}], f"c{i}", f"r{i}", rating, kind, chosen_safe, rejected_safe
    )


def test_comparison_report_by_level_test_set_and_category():
    comparisons = [
        _c("significantly_better", "helpfulness", i=0),  # right
        _c("better", "helpfulness", i=1),  # wrong
        _c("negligibly_better", "helpfulness", i=2),  # tie: wrong
        _c("significantly_better", "safety", True, False, i=3),  # right
        _c("better", "safety", True, True, i=4),  # right
        _c("slightly_better", "safety", False, False, i=5),  # wrong
    ]
    chosen = torch.tensor([2.0, 0.0, 1.0, 0.0, 3.0, -4.0])
    rejected = torch.tensor([1.0, 1.0, 1.0, -5.0, -1.0, -3.0])
    report = comparison_report(chosen, rejected, comparisons)
    acc = report["accuracy"]
    assert acc["overall"] == {"count": 6, "accuracy": 0.5}
    assert acc["significantly_better"] == {"count": 2, "accuracy": 1.0}
    assert acc["better"] == {"count": 2, "accuracy": 0.5}
    assert acc["slightly_better"] == {"count": 1, "accuracy": 0.0}
    assert acc["negligibly_better"] == {"count": 1, "accuracy": 0.0}
    assert report["test_sets"]["helpfulness"]["overall"] == {"count": 3, "accuracy": pytest.approx(1 / 3)}
    assert report["test_sets"]["safety"]["overall"] == {"count": 3, "accuracy": pytest.approx(2 / 3)}
    assert report["safety_categories"] == {
        "both_safe": {"count": 1, "accuracy": 1.0},
        "chosen_safe_rejected_unsafe": {"count": 1, "accuracy": 1.0},
        "both_unsafe": {"count": 1, "accuracy": 0.0},
    }
    # Labelled responses: c3 safe (s=0 -> p=0.5), r3 unsafe (-5), c4 safe (3), r4 safe (-1 -> p=0.27),
    # c5 unsafe (-4), r5 unsafe (-3 -> p=0.047). Flagged (< 0.15): r3, c5, r5 -> all unsafe.
    detection = report["unsafe_detection"]
    assert (detection["tp"], detection["fp"], detection["fn"], detection["tn"]) == (3, 0, 0, 3)
    markdown = report_markdown(report, "Safety RM")
    assert "| all | 6 | 100.0 (2) | 50.0 (2) | 0.0 (1) | 0.0 (1) | 50.0 |" in markdown
    assert "| both unsafe | 1 | 0.0 |" in markdown
    assert "precision 100.0%, recall 100.0%" in markdown


def test_report_without_safety_labels_says_so():
    report = comparison_report(torch.tensor([1.0]), torch.tensor([0.0]), [_c("better", "helpfulness")])
    assert report["unsafe_detection"] is None
    assert report["safety_categories"]["both_safe"] == {"count": 0, "accuracy": None}
    assert "no response in the test set carries a safety label" in report_markdown(report)


def test_calibration_offset_puts_the_threshold_at_the_target_precision():
    # sorted: -3 U, -2 U, -1 S, 0 U, 1 S, 2 S. Precision of "flag the k lowest": 1, 1, 2/3, 3/4, 3/5, 1/2.
    scores = torch.tensor([0.0, -3.0, 2.0, -1.0, 1.0, -2.0])
    unsafe = torch.tensor([True, True, False, False, False, True])
    threshold = 0.15
    logit = torch.logit(torch.tensor(threshold, dtype=torch.float64)).item()
    offset, report = unsafe_calibration_offset(scores, unsafe, target_precision=0.75, threshold=threshold)
    # largest k with precision >= 0.75 is k=4 (score 0): the cut is halfway to the next score, 0.5
    assert offset == pytest.approx(logit - 0.5)
    assert (report["tp"], report["fp"], report["fn"], report["tn"]) == (3, 1, 0, 2)
    offset, report = unsafe_calibration_offset(scores, unsafe, target_precision=0.9, threshold=threshold)
    assert offset == pytest.approx(logit - (-1.5))  # k=2: between -2 and -1
    assert (report["precision"], report["recall"]) == (1.0, pytest.approx(2 / 3))


def test_calibration_never_splits_ties_and_flags_nothing_when_no_cut_is_precise():
    # The two lowest tie at -1 (one safe, one unsafe): flagging only one of them is impossible.
    scores, unsafe = torch.tensor([-1.0, -1.0, 0.0]), torch.tensor([True, False, False])
    offset, report = unsafe_calibration_offset(scores, unsafe, target_precision=0.9)
    assert report["flagged"] == 0 and offset == pytest.approx(torch.logit(torch.tensor(0.15)).item() + 2.0, abs=1e-6)
    with pytest.raises(ValueError, match="target precision"):
        unsafe_calibration_offset(scores, unsafe, target_precision=0.0)
