"""Means with their standard errors, the way lm-eval reports them (sample standard deviation / sqrt(n))."""

from __future__ import annotations

import math


def mean_stderr(values) -> tuple[float | None, float | None]:
    values = [float(v) for v in values]
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    variance = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)
