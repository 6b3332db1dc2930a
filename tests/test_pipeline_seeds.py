"""The over-seeds summary of the main job: mean, seed-to-seed spread and mean within-run standard error."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.pipeline_seeds import summarise  # noqa: E402


def report(helpfulness: float, stderr: float) -> dict:
    version = {
        "name": "SFT",
        "gold_helpfulness": helpfulness,
        "gold_helpfulness_stderr": stderr,
        "gold_violation_rate": 0.0,
        "gold_combined": (helpfulness + 1.0) / 2,
    }
    return {"versions": [version]}


def test_mean_spread_and_within_run_error_by_hand():
    (row,) = summarise([report(0.3, 0.02), report(0.5, 0.04)])
    # mean 0.4; sample standard deviation sqrt(((0.1)^2 + (0.1)^2) / 1) = 0.1414; mean s.e. 0.03
    assert row[0] == "SFT"
    assert row[1] == "0.400 (sd 0.141, s.e. 0.030)"
    assert row[3] == "0.700 (sd 0.071)"
    assert row[4] == "0.300, 0.500"
