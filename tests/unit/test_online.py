"""The two-proportion test behind `recsql models report`."""

from __future__ import annotations

import math

import pytest

from recsql.evaluation.online import two_proportions


def test_known_values():
    diff, low, high, p = two_proportions(60, 100, 40, 100)
    assert diff == pytest.approx(0.2)
    assert p == pytest.approx(0.004678, rel=1e-3)  # z = 2.828 with the pooled standard error
    se = math.sqrt(0.6 * 0.4 / 100 + 0.4 * 0.6 / 100)
    assert (low, high) == pytest.approx((0.2 - 1.96 * se, 0.2 + 1.96 * se), rel=1e-3)


def test_equal_rates_are_not_significant_and_empty_groups_are_nan():
    assert two_proportions(10, 100, 10, 100)[3] == pytest.approx(1.0)
    assert all(math.isnan(v) for v in two_proportions(0, 0, 5, 10))
