"""Reward-model ranking loss with a preference-strength margin, and per-rating accuracy.

Llama 2, sec. 3.2.2, eq. (1)-(2): L = -log(sigmoid(r(x, y_c) - r(x, y_r) - m(r))), where the margin m(r)
grows with the annotators' rating; Table 27 gives the two margin tables and Table 28 / sec. 3.2.2 the
small-vs-large ablation. Accuracy is reported per rating level (Table 8).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from alignment.ratings import RATINGS, normalize_rating

# Table 27, "Margin Small": a discrete function of the rating.
MARGIN_SMALL: dict[str, float] = {
    "significantly_better": 1.0,
    "better": 2.0 / 3.0,
    "slightly_better": 1.0 / 3.0,
    "negligibly_better": 0.0,
}

# Table 27, "Margin Large".
MARGIN_LARGE: dict[str, float] = {
    "significantly_better": 3.0,
    "better": 2.0,
    "slightly_better": 1.0,
    "negligibly_better": 0.0,
}

# "none" is the plain binary ranking loss of Ouyang et al. (2022), the paper's ablation baseline.
MARGIN_TABLES: dict[str, dict[str, float] | None] = {
    "none": None,
    "small": MARGIN_SMALL,
    "large": MARGIN_LARGE,
}


def margin_for(
    ratings: Sequence[str | int],
    table: str,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Margins m(r) for a batch of ratings, shape ``(len(ratings),)`` (sec. 3.2.2, Table 27).

    ``table`` is "none" (all zeros), "small" (1, 2/3, 1/3, 0) or "large" (3, 2, 1, 0). Ratings may use any
    spelling ``normalize_rating`` accepts.
    """
    if table not in MARGIN_TABLES:
        raise ValueError(f"unknown margin table {table!r}; expected one of {sorted(MARGIN_TABLES)}")
    labels = [normalize_rating(r) for r in ratings]
    values = MARGIN_TABLES[table]
    margins = [0.0 if values is None else values[label] for label in labels]
    return torch.tensor(margins, dtype=dtype, device=device)


def ranking_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margins: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
    num_pairs: torch.Tensor | float | None = None,
) -> torch.Tensor:
    """Mean over pairs of -log(sigmoid(r_c - r_r - m)) (sec. 3.2.2, eq. 2).

    ``chosen_rewards`` and ``rejected_rewards`` are the scalar-head outputs, same shape (usually ``(B,)``);
    ``margins`` broadcasts against them, ``None`` meaning no margin (eq. 1). ``logsigmoid`` keeps the loss
    finite for large negative differences, where ``log(sigmoid(.))`` would underflow to -inf.

    ``weights`` (1 for a real pair, 0 for a padding pair, see `alignment.distributed.pad_dataset_to_multiple`)
    drop pairs from the sum; ``num_pairs`` is the divisor, by default the number of real pairs here. A trainer
    that sees one micro-batch of one process passes the real pairs of the whole global batch, so that the sum
    over micro-batches and processes is the global mean, whatever the split.
    """
    if chosen_rewards.shape != rejected_rewards.shape:
        raise ValueError(
            f"chosen and rejected rewards differ in shape: {tuple(chosen_rewards.shape)} vs "
            f"{tuple(rejected_rewards.shape)}"
        )
    diff = chosen_rewards - rejected_rewards
    if margins is not None:
        diff = diff - margins.to(dtype=diff.dtype, device=diff.device)
    losses = -F.logsigmoid(diff)
    if weights is None and num_pairs is None:
        return losses.mean()
    if weights is None:
        weights = torch.ones_like(losses)
    weights = weights.to(dtype=losses.dtype, device=losses.device)
    if num_pairs is None:
        num_pairs = weights.sum().clamp(min=1)  # a batch of padding only: loss 0, not 0/0
    return (losses * weights).sum() / num_pairs


def accuracy_by_rating(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    ratings: Sequence[str | int],
) -> dict[str, dict[str, float | int | None]]:
    """Fraction of pairs where the chosen response scores strictly higher, overall and per rating (Table 8).

    Returns ``{"overall": {"count": n, "accuracy": a}, "significantly_better": {...}, ...}`` with every label of
    ``RATINGS`` present. A tie counts as wrong: the model has not ranked the pair. A level with no pairs has
    count 0 and accuracy ``None`` (not 0, which would read as a measured failure).
    """
    chosen = chosen_rewards.detach().reshape(-1)
    rejected = rejected_rewards.detach().reshape(-1)
    labels = [normalize_rating(r) for r in ratings]
    if not (chosen.numel() == rejected.numel() == len(labels)):
        raise ValueError(
            f"got {chosen.numel()} chosen rewards, {rejected.numel()} rejected rewards and {len(labels)} ratings"
        )
    correct = (chosen > rejected).tolist()

    def summary(hits: list[bool]) -> dict[str, float | int | None]:
        return {"count": len(hits), "accuracy": (sum(hits) / len(hits)) if hits else None}

    report = {"overall": summary(correct)}
    for level in RATINGS:
        report[level] = summary([c for c, label in zip(correct, labels) if label == level])
    return report
