"""benchmarks/ppo_over_rs.py: the combination of paired differences over runs, by hand."""

import pytest

from benchmarks.ppo_over_rs import combine


def test_combine_takes_the_larger_of_the_within_and_the_between_run_error():
    mean, stderr, means = combine([{"mean": 0.1, "stderr": 0.03}, {"mean": 0.0, "stderr": 0.04}])
    assert mean == pytest.approx(0.05)
    # within: sqrt(0.03^2 + 0.04^2) / 2 = 0.025; between: sd(0.1, 0.0) / sqrt(2) = 0.05
    assert stderr == pytest.approx(0.05)
    assert means == [0.1, 0.0]
    _, stderr, _ = combine([{"mean": 0.1, "stderr": 0.3}, {"mean": 0.0, "stderr": 0.4}])
    assert stderr == pytest.approx(0.25)
