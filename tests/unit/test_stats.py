"""The report's statistics against known answers: Student-t quantiles, confidence intervals of a
mean, paired differences, the Pareto frontier and reading it as a step function."""

from __future__ import annotations

import math

import pytest

from lohp_cli.stats import (
    best_within,
    mean_ci,
    normal_mean_ci,
    paired_difference,
    pareto_front,
    t_central,
    t_quantile,
)

# t_{0.975, df} and t_{0.995, df} from standard tables (scipy.stats.t.ppf, 10 digits)
T975 = {
    1: 12.7062047362,
    2: 4.3026527297,
    3: 3.1824463053,
    4: 2.7764451052,
    5: 2.5705818356,
    10: 2.2281388520,
    30: 2.0422724563,
    100: 1.9839715185,
    1000: 1.9623390808,
}
T995 = {1: 63.6567411629, 2: 9.9248432009, 9: 3.2498355416, 60: 2.6602830288}


@pytest.mark.parametrize(("df", "want"), T975.items())
def test_t_quantile_975_matches_the_table(df: int, want: float) -> None:
    assert t_quantile(0.975, df) == pytest.approx(want, abs=1e-9)


@pytest.mark.parametrize(("df", "want"), T995.items())
def test_t_quantile_995_matches_the_table(df: int, want: float) -> None:
    assert t_quantile(0.995, df) == pytest.approx(want, abs=1e-8)


def test_t_distribution_closed_forms() -> None:
    # df = 1 is Cauchy: P(|T| ≤ 1) = 1/2; df = 2: P(|T| ≤ t) = t / √(2 + t²)
    assert t_central(1.0, 1) == pytest.approx(0.5)
    assert t_central(3.0, 2) == pytest.approx(3 / math.sqrt(11))
    assert t_central(0.0, 7) == 0.0
    assert t_quantile(0.5, 4) == pytest.approx(0.0, abs=1e-12)
    # many degrees of freedom: toward the normal's 1.959964
    assert t_quantile(0.975, 20000) == pytest.approx(1.9600826052, abs=1e-8)
    with pytest.raises(ValueError):
        t_quantile(1.0, 3)
    with pytest.raises(ValueError):
        t_central(1.0, 0)


def test_mean_ci_of_one_two_three() -> None:
    """Differences [1, 2, 3]: mean 2, s = 1, CI 2 ± t_{0.975,2} · 1/√3 = 2 ± 2.48414."""
    ci = mean_ci([1.0, 2.0, 3.0])
    assert (ci.n, ci.mean) == (3, 2.0)
    assert ci.low == pytest.approx(2 - 2.4841377118, abs=1e-9)
    assert ci.high == pytest.approx(2 + 2.4841377118, abs=1e-9)
    assert ci.side == "tie"


def test_normal_interval_is_the_few_shot_literatures() -> None:
    """[0, 1, 0, 1]: mean 0.5, s = √(1/3), 0.5 ± 1.96 · 0.57735 / 2 = 0.5 ± 0.565803."""
    ci = normal_mean_ci([0.0, 1.0, 0.0, 1.0])
    assert (ci.n, ci.mean) == (4, 0.5)
    assert ci.high - 0.5 == pytest.approx(1.96 * math.sqrt(1 / 3) / 2, abs=1e-12)
    assert ci.low == pytest.approx(0.5 - 0.5658032638, abs=1e-9)
    # 600 episodes: the normal quantile, within 0.2 % of Student's t at 599 degrees of freedom
    values = [float(i % 7) / 7 for i in range(600)]
    n, t = normal_mean_ci(values), mean_ci(values)
    assert (n.high - n.mean) / (t.high - t.mean) == pytest.approx(1.96 / t_quantile(0.975, 599))
    assert normal_mean_ci([0.4]).low is None
    with pytest.raises(ValueError):
        normal_mean_ci([])


def test_constant_values_give_a_zero_width_interval() -> None:
    ci = mean_ci([0.25] * 5)
    assert ci.low == ci.high == ci.mean == 0.25 and ci.side == "above"
    assert mean_ci([-0.1] * 3).side == "below"
    assert mean_ci([0.0, 0.0]).side == "tie"


def test_one_value_has_no_interval() -> None:
    ci = mean_ci([0.3])
    assert (ci.n, ci.mean, ci.low, ci.high, ci.side) == (1, 0.3, None, None, None)
    with pytest.raises(ValueError):
        mean_ci([])


def test_paired_difference_is_the_mean_ci_of_the_differences() -> None:
    a, b = [0.9, 0.8, 0.95, 0.7], [0.85, 0.8, 0.9, 0.6]
    d = paired_difference(a, b)
    want = mean_ci([x - y for x, y in zip(a, b, strict=True)])
    assert d == want and d.side == "tie"
    assert d.mean == pytest.approx(sum(a) / 4 - sum(b) / 4)
    # better on every task by 0.01 to 0.02 (mean 0.015 ± 0.006): above; the other way, below
    b = [0.5, 0.6, 0.7, 0.8, 0.9]
    a = [0.51, 0.62, 0.715, 0.82, 0.91]
    assert paired_difference(a, b).side == "above" and paired_difference(b, a).side == "below"
    with pytest.raises(ValueError, match="length"):
        paired_difference([1.0], [1.0, 2.0])


# (latency ms, accuracy)
POINTS = [
    (1.0, 0.50),  # 0: fastest, on the frontier
    (2.0, 0.70),  # 1: on
    (3.0, 0.65),  # 2: dominated by 1 (slower and less accurate)
    (4.0, 0.70),  # 3: dominated by 1 (slower, as accurate)
    (8.0, 0.90),  # 4: on
    (8.0, 0.85),  # 5: dominated by 4 (as fast, less accurate)
]


def test_pareto_front_keeps_the_undominated_points_fastest_first() -> None:
    assert pareto_front(POINTS) == [0, 1, 4]
    assert pareto_front([]) == []
    assert pareto_front(list(reversed(POINTS))) == [5, 4, 1]


def test_best_within_reads_the_frontier_as_a_step_function() -> None:
    assert best_within(POINTS, 0.5) is None  # faster than every point
    assert best_within(POINTS, 1.0) == 0
    assert best_within(POINTS, 3.5) == 1  # 0.70 holds until the next frontier point
    assert best_within(POINTS, 7.9) == 1
    assert best_within(POINTS, 100.0) == 4
    # a policy at 3 ms with 0.68 is below the frontier (0.70), one with 0.70 on it
    assert POINTS[best_within(POINTS, 3.0)][1] == 0.70
