"""Canonical preference-strength ratings (Llama 2, sec. 3.2.1).

Annotators rate how much the chosen response beats the rejected one on a four-point scale:
significantly better, better, slightly better, negligibly better / unsure. Every stage (data loading,
reward-model margins, per-rating accuracy) uses the labels in ``RATINGS``; ``normalize_rating`` maps the
spellings found in data files onto them.
"""

from __future__ import annotations

import numbers
import re

# Ordered from the strongest preference to the weakest, as in the paper's tables (Table 7 / Table 28).
RATINGS: tuple[str, ...] = ("significantly_better", "better", "slightly_better", "negligibly_better")

# The paper's fourth level is "negligibly better / unsure"; all its spellings map to one label.
_ALIASES: dict[str, str] = {
    **{label: label for label in RATINGS},
    "negligibly_better_unsure": "negligibly_better",
    "negligibly_better_or_unsure": "negligibly_better",
    "unsure": "negligibly_better",
}


def normalize_rating(label: str | int) -> str:
    """Return the canonical label in ``RATINGS`` for ``label``.

    Accepts any case and any separators ("Significantly Better", "slightly-better",
    "negligibly better / unsure", "unsure") and integers 0..3, where 0 is "significantly_better" and 3 is
    "negligibly_better" (the order of ``RATINGS``).
    """
    if isinstance(label, numbers.Integral) and not isinstance(label, bool):
        index = int(label)
        if 0 <= index < len(RATINGS):
            return RATINGS[index]
    elif isinstance(label, str):
        key = "_".join(re.findall(r"[a-z]+", label.lower()))
        if key in _ALIASES:
            return _ALIASES[key]
    accepted = ", ".join(f"{i}={name!r}" for i, name in enumerate(RATINGS))
    raise ValueError(
        f"unknown preference rating {label!r}; expected one of {accepted} "
        "(any case or separator; 'unsure' and 'negligibly better / unsure' mean 'negligibly_better')"
    )
