"""benchmarks/ppo_over_rs.py: the combination of paired differences over runs, by hand."""

import pytest

from benchmarks.ppo_over_rs import change_counts, combine


def test_combine_takes_the_larger_of_the_within_and_the_between_run_error():
    mean, stderr, means = combine([{"mean": 0.1, "stderr": 0.03}, {"mean": 0.0, "stderr": 0.04}])
    assert mean == pytest.approx(0.05)
    # within: sqrt(0.03^2 + 0.04^2) / 2 = 0.025; between: sd(0.1, 0.0) / sqrt(2) = 0.05
    assert stderr == pytest.approx(0.05)
    assert means == [0.1, 0.0]
    _, stderr, _ = combine([{"mean": 0.1, "stderr": 0.3}, {"mean": 0.0, "stderr": 0.4}])
    assert stderr == pytest.approx(0.25)


def test_change_counts_by_hand():
    # (gold before, gold after, R_h before, R_h after)
    changes = [
        (0.25, 1.0, 0.1, 0.9),  # gold up, R_h up: agrees
        (1.0, 0.25, 0.5, 0.7),  # gold down, R_h up: disagrees
        (0.0, 0.0, 0.2, 0.4),  # gold flat, R_h up: not in the agreement count
        (0.5, 0.25, 0.3, -0.1),  # gold down, R_h down: agrees
    ]
    assert change_counts(changes) == {
        "changed": 4,
        "gold up": 1,
        "gold down": 2,
        "R_h up": 3,
        "gold differs": 3,
        "R_h agrees with gold": 2,
    }
    assert change_counts([])["changed"] == 0
