"""Confidence intervals for accuracies: Wilson for one sample per prompt, bootstrap over prompts otherwise.

One resampling routine serves both the single-model interval and the paired intervals of ratios between models
scored on the same prompts (rank-k recovery): the same resampled prompt indices for every model.
"""

from __future__ import annotations

import math

import torch

RESAMPLES = 2000


def wilson(successes: float, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval for a proportion."""
    if n == 0:
        return 0.0, 1.0
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def resampled_means(values: torch.Tensor, seed: int = 0, resamples: int = RESAMPLES) -> torch.Tensor:
    """Means of `values` (k models x n prompts) over `resamples` bootstrap draws of the prompts: (k, resamples).

    The same prompt indices for every row, so the intervals of differences and ratios between rows are paired."""
    values = torch.as_tensor(values, dtype=torch.float64)
    idx = torch.randint(values.shape[1], (resamples, values.shape[1]), generator=torch.Generator().manual_seed(seed))
    return values[:, idx].mean(-1)


def percentile_interval(draws: torch.Tensor) -> tuple[float, float]:
    """95 % percentile interval of bootstrap draws, ignoring non-finite ones (nan, nan when none is finite)."""
    draws = draws[torch.isfinite(draws)]
    if len(draws) == 0:
        return math.nan, math.nan
    return float(draws.quantile(0.025)), float(draws.quantile(0.975))


def bootstrap(values: list[float], seed: int = 0, resamples: int = RESAMPLES) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-prompt values."""
    return percentile_interval(resampled_means(torch.tensor([values], dtype=torch.float64), seed, resamples)[0])
