"""bench.stats: the median and interquartile range every benchmark reports."""

import pytest

from bench.stats import iqr, median_iqr


def test_iqr_uses_inclusive_quartiles_and_is_zero_for_one_value():
    assert iqr([1.0, 2.0, 3.0, 4.0, 5.0]) == pytest.approx(2.0)  # quartiles 2 and 4
    assert iqr([5.0, 1.0, 3.0]) == pytest.approx(2.0)  # order does not matter: quartiles 2 and 4
    assert iqr([7.0]) == 0.0 and iqr([]) == 0.0


def test_median_iqr():
    assert median_iqr([3.0, 1.0, 2.0, 10.0]) == {"median": 2.5, "iqr": pytest.approx(3.0)}  # quartiles 1.75 and 4.75
