"""Reward-model evaluation maths beyond per-rating accuracy (which is `reward.loss.accuracy_by_rating`).

- `unsafe_detection`: PPO treats a response as unsafe when sigmoid(R_s) < 0.15 (sec. 3.3, the safety gate);
  the paper reports precision 0.89 / recall 0.55 of that rule on its safety test set.
- `unsafe_calibration_offset`: a ranking loss fixes score differences, not their level, so "sigmoid(R_s) <
  0.15" means nothing until the scores are placed; the offset puts the threshold where flagged responses are
  unsafe with a chosen precision (the paper's 0.89), as the paper chose 0.15 for its precision and recall.
- `score_distribution`: margins push scores toward a bimodal distribution (sec. 3.2.2, Fig. 27); a histogram
  of sigmoid(score) shows it.
"""

from __future__ import annotations

import torch

SAFETY_THRESHOLD = 0.15


def unsafe_detection(probs: torch.Tensor, unsafe: torch.Tensor, threshold: float = SAFETY_THRESHOLD) -> dict:
    """Precision and recall of "unsafe" predicted as probs < threshold, against labels `unsafe` (bool).

    Precision is None when nothing is flagged, recall None when nothing is unsafe (undefined, not 0).
    """
    flagged = probs.reshape(-1) < threshold
    unsafe = unsafe.reshape(-1).bool()
    if flagged.numel() != unsafe.numel():
        raise ValueError(f"got {flagged.numel()} probabilities and {unsafe.numel()} labels")
    tp = int((flagged & unsafe).sum())
    fp = int((flagged & ~unsafe).sum())
    fn = int((~flagged & unsafe).sum())
    tn = int((~flagged & ~unsafe).sum())
    return {
        "threshold": threshold,
        "responses": int(unsafe.numel()),
        "unsafe": tp + fn,
        "flagged": tp + fp,
        "tp": tp,
        "fp": fp,
        "fn": fn,
        "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
    }


def unsafe_calibration_offset(
    scores: torch.Tensor, unsafe: torch.Tensor, target_precision: float, threshold: float = SAFETY_THRESHOLD
) -> tuple[float, dict]:
    """Offset b such that "sigmoid(score + b) < threshold" flags the most responses whose precision for
    unsafe is still at least target_precision, on labelled responses (`unsafe` bool).

    The cut sits halfway between the last flagged score and the next one. With no such cut (no unsafe
    response, or none flagged precisely enough) the cut goes below every score: nothing is flagged by score
    and only IS_SAFETY routes to R_s. Returns b and the precision/recall of the calibrated rule on these
    responses.
    """
    if not 0.0 < target_precision <= 1.0:
        raise ValueError(f"target precision must lie in (0, 1], got {target_precision}")
    scores = scores.reshape(-1).double()
    unsafe = unsafe.reshape(-1).bool()
    if scores.numel() != unsafe.numel() or scores.numel() == 0:
        raise ValueError(f"need as many labels as scores, and at least one: got {scores.numel()} and {unsafe.numel()}")
    order = torch.argsort(scores, stable=True)
    sorted_scores, sorted_unsafe = scores[order], unsafe[order].double()
    precision = sorted_unsafe.cumsum(0) / torch.arange(1, len(order) + 1, dtype=torch.double)
    # A cut can only fall between two different scores: flagging k responses must not split a tie.
    distinct = torch.cat([sorted_scores[1:] > sorted_scores[:-1], torch.tensor([True])])
    good = ((precision >= target_precision) & distinct).nonzero().flatten()
    if len(good):
        k = int(good[-1])
        nxt = sorted_scores[k + 1] if k + 1 < len(order) else sorted_scores[k] + 1.0
        cut = float((sorted_scores[k] + nxt) / 2)
    else:
        cut = float(sorted_scores[0]) - 1.0
    offset = float(torch.logit(torch.tensor(threshold, dtype=torch.double))) - cut
    detection = unsafe_detection(torch.sigmoid(scores + offset), unsafe, threshold)
    return offset, detection


def score_distribution(scores: torch.Tensor, bins: int = 10) -> dict:
    """Summary of raw scores and a histogram of sigmoid(score) over [0, 1] in `bins` equal bins."""
    scores = scores.detach().reshape(-1).float()
    if scores.numel() == 0:
        return {"count": 0}
    probs = torch.sigmoid(scores)
    quantiles = torch.quantile(scores, torch.tensor([0.05, 0.25, 0.5, 0.75, 0.95]))
    # Bin i holds [i/bins, (i+1)/bins); the last bin also holds 1.0.
    index = (probs * bins).long().clamp(max=bins - 1)
    return {
        "count": int(scores.numel()),
        "mean": scores.mean().item(),
        "std": scores.std(unbiased=False).item(),
        "min": scores.min().item(),
        "max": scores.max().item(),
        "quantiles": {q: v for q, v in zip(("p05", "p25", "p50", "p75", "p95"), quantiles.tolist())},
        "sigmoid_histogram": torch.bincount(index, minlength=bins).tolist(),
    }
