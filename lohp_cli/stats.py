"""Small pure statistics of the report: Student-t confidence intervals of a mean (paired
differences over tasks), the normal-approximation interval of a mean accuracy over tasks (the
few-shot literature's 1.96 · s / √n over episodes) and the Pareto frontier of (latency,
accuracy) points.

No scipy: the Student-t distribution function of an integer number of degrees of freedom has a
finite closed form (Abramowitz & Stegun 26.7.3-4), and its quantile is found by bisection.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

Side = Literal["above", "below", "tie"]


def t_central(t: float, df: int) -> float:
    """P(|T| ≤ t) for Student's T with ``df`` ≥ 1 degrees of freedom (t ≥ 0).

    With θ = atan(t / √df) and c = cos θ: for odd df,
    (2/π)(θ + sin θ · c · Σ_{j<(df-1)/2} Π_{i≤j} (2i)/(2i+1) c²); for even df,
    sin θ · Σ_{j<df/2} Π_{i≤j} (2i-1)/(2i) c² (empty products are 1).
    """
    if df < 1:
        raise ValueError(f"degrees of freedom must be ≥ 1, got {df}")
    theta = math.atan2(t, math.sqrt(df))
    c2 = math.cos(theta) ** 2
    odd = df % 2 == 1
    terms = (df - 1) // 2 if odd else df // 2  # how many terms the series has
    term = total = 1.0
    for j in range(1, terms):
        term *= (2 * j if odd else 2 * j - 1) / (2 * j + 1 if odd else 2 * j) * c2
        total += term
        if term < 1e-17 * total:
            break
    if not odd:
        return math.sin(theta) * total
    series = math.sin(theta) * math.cos(theta) * total if df > 1 else 0.0
    return 2 / math.pi * (theta + series)


def t_quantile(q: float, df: int) -> float:
    """The ``q`` quantile (0.5 ≤ q < 1) of Student's T with ``df`` degrees of freedom:
    the t with P(T ≤ t) = q, by bisection on θ = atan(t / √df) to float precision."""
    if not 0.5 <= q < 1:
        raise ValueError(f"quantile must be in [0.5, 1), got {q}")
    want = 2 * q - 1  # P(|T| ≤ t)
    lo, hi = 0.0, math.pi / 2
    for _ in range(80):
        mid = (lo + hi) / 2
        if t_central(math.sqrt(df) * math.tan(mid), df) < want:
            lo = mid
        else:
            hi = mid
    return math.sqrt(df) * math.tan((lo + hi) / 2)


@dataclass(frozen=True)
class MeanCI:
    """A mean with its two-sided confidence interval; ``low``/``high`` are None with n < 2."""

    n: int
    mean: float
    low: float | None
    high: float | None

    @property
    def side(self) -> Side | None:
        """Where the interval lies against 0: above, below, or tie when it contains 0
        (None without an interval)."""
        if self.low is None or self.high is None:
            return None
        return "above" if self.low > 0 else "below" if self.high < 0 else "tie"


def _mean_half(values: Sequence[float], multiplier: Callable[[int], float]) -> MeanCI:
    """Mean of ``values`` ± multiplier(n) · s / √n (s: the sample standard deviation); no
    interval with fewer than two values."""
    n = len(values)
    if n == 0:
        raise ValueError("no values to average")
    mean = math.fsum(values) / n
    if n < 2:
        return MeanCI(n, mean, None, None)
    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = multiplier(n) * sd / math.sqrt(n)
    return MeanCI(n, mean, mean - half, mean + half)


def mean_ci(values: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """Mean of ``values`` ± t_{(1+confidence)/2, n-1} · s / √n (s: the sample standard
    deviation); no interval with fewer than two values."""
    return _mean_half(values, lambda n: t_quantile((1 + confidence) / 2, n - 1))


def normal_mean_ci(values: Sequence[float], z: float = 1.96) -> MeanCI:
    """Mean of ``values`` ± z · s / √n (s: the sample standard deviation): the few-shot
    literature's 95 % interval over episodes (z = 1.96); no interval with fewer than two values."""
    return _mean_half(values, lambda _n: z)


def paired_difference(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> MeanCI:
    """The mean of the differences a_i − b_i over the pairs i, with its confidence interval."""
    if len(a) != len(b):
        raise ValueError(f"paired values differ in length: {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b, strict=True)], confidence)


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the (latency, accuracy) points that no point at most as slow is as accurate
    as, fastest first: the most accurate point for each latency budget."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], -points[i][1]))
    front: list[int] = []
    for i in order:
        if not front or points[i][1] > points[front[-1]][1]:
            front.append(i)
    return front


def best_within(points: Sequence[tuple[float, float]], latency: float) -> int | None:
    """Index of the most accurate point with latency ≤ ``latency`` (the frontier read as a step
    function; ties go to the faster point), or None when every point is slower."""
    inside = [i for i, (lat, _) in enumerate(points) if lat <= latency]
    if not inside:
        return None
    return max(inside, key=lambda i: (points[i][1], -points[i][0]))
