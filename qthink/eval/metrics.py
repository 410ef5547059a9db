"""avg@k, unbiased pass@k, majority vote maj@k and 95% confidence intervals over items."""

import math
import random
from collections.abc import Callable, Hashable

Z95 = 1.959964


def pass_at_k(n: int, c: int, k: int) -> float:
    """Chance that at least one of k samples drawn from n (c of them correct) is correct:
    1 - C(n-c, k) / C(n, k), the unbiased estimator of Chen et al. (2021)."""
    if n - c < k:
        return 1.0
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def majority(answers: list[Hashable | None], same: Callable[[object, object], bool] | None = None):
    """The most frequent non-empty answer (first seen wins ties); `same` groups equal answers."""
    groups: list[list] = []
    for answer in answers:
        if answer is None:
            continue
        home = next((g for g in groups if (same or (lambda a, b: a == b))(g[0], answer)), None)
        if home is None:
            groups.append([answer])
        else:
            home.append(answer)
    return max(groups, key=len)[0] if groups else None


def wilson(successes: float, n: int) -> tuple[float, float]:
    """Wilson score interval: honest near 0 and 1, where the normal interval is not."""
    if n == 0:
        return 0.0, 0.0
    p = successes / n
    centre = (p + Z95**2 / (2 * n)) / (1 + Z95**2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / (1 + Z95**2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap(values: list[float], resamples: int = 2000, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap of the mean over items, for scores that are not simply 0 or 1."""
    if not values:
        return 0.0, 0.0
    rng = random.Random(seed)
    means = sorted(sum(rng.choices(values, k=len(values))) / len(values) for _ in range(resamples))
    return means[int(0.025 * resamples)], means[int(0.975 * resamples) - 1]


def interval(values: list[float]) -> tuple[float, float]:
    """95% interval of the mean of per-item scores: Wilson for 0/1 scores, else bootstrap."""
    if all(v in (0.0, 1.0) for v in values):
        return wilson(sum(values), len(values))
    return bootstrap(values)
