"""Reward-model evaluation maths beyond per-rating accuracy (which is `reward.loss.accuracy_by_rating`).

- `unsafe_detection`: PPO treats a response as unsafe when sigmoid(R_s) < 0.15 (sec. 3.3, the safety gate);
  the paper reports precision 0.89 / recall 0.55 of that rule on its safety test set.
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
        "tp": tp, "fp": fp, "fn": fn, "tn": tn,
        "precision": tp / (tp + fp) if tp + fp else None,
        "recall": tp / (tp + fn) if tp + fn else None,
    }


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
