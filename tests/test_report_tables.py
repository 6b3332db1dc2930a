"""The pipeline report shows the reward models' held-out accuracies as tables in the layout of the paper's
Table 8: rating levels as columns, one row per iteration, model and test set, each cell with its n."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

from alignment.pipeline.manifest import Stage
from alignment.pipeline.report import accuracy_cell, reward_accuracy, reward_accuracy_table, write_report


def level(accuracy, count):
    return {"accuracy": accuracy, "count": count}


# Held-out accuracies of two reward stages, as reward/trainer.py writes them to eval.json.
HELPFULNESS = {
    "accuracy": {
        "significantly_better": level(0.75, 4),
        "better": level(0.5, 10),
        "slightly_better": level(1.0, 2),
        "negligibly_better": level(None, 0),
        "overall": level(0.625, 16),
    },
    "test_sets": {
        "helpfulness": {
            "significantly_better": level(1.0, 3),
            "better": level(0.5, 10),
            "slightly_better": level(1.0, 2),
            "negligibly_better": level(None, 0),
            "overall": level(0.6, 15),
        }
    },
    "pairs": 16,
}
SAFETY = {
    "accuracy": {
        "significantly_better": level(0.8, 5),
        "better": level(0.25, 4),
        "slightly_better": level(0.5, 2),
        "negligibly_better": level(0.5, 6),
        "overall": level(0.5294117647058824, 17),
    },
    "pairs": 17,
}


def fixture_run(tmp_path: Path) -> tuple[Path, list[Stage]]:
    stages = [
        Stage("RLHF-V1/reward_helpfulness", "reward.py", {}, []),
        Stage("RLHF-V2/reward_safety", "reward.py", {}, []),
        Stage("RLHF-V2/reward_helpfulness", "reward.py", {}, []),
    ]  # not finished: no eval.json
    for stage, result in zip(stages, (HELPFULNESS, SAFETY)):
        (tmp_path / stage.name).mkdir(parents=True)
        (tmp_path / stage.name / "eval.json").write_text(json.dumps(result))
    return tmp_path, stages


def test_accuracy_cell_gives_percent_standard_error_and_count():
    assert accuracy_cell(level(0.75, 4)) == "75.0 ± 21.7 (n=4)"  # sqrt(0.75 * 0.25 / 4) = 0.2165
    assert accuracy_cell(level(0.5, 10)) == "50.0 ± 15.8 (n=10)"  # sqrt(0.25 / 10) = 0.1581
    assert accuracy_cell(level(1.0, 2)) == "100.0 ± 0.0 (n=2)"
    assert accuracy_cell(level(None, 0)) == "- (n=0)"  # no pairs: not a measured 0%
    assert accuracy_cell(None) == "- (n=0)"
    assert math.isclose(math.sqrt(0.625 * 0.375 / 16), 0.1210, abs_tol=5e-5)


def test_table_has_the_rating_levels_as_columns_and_a_row_per_iteration_model_and_test_set(tmp_path):
    run_dir, stages = fixture_run(tmp_path)
    lines = reward_accuracy_table(reward_accuracy(run_dir, stages))
    assert lines == [
        "| iteration | model | test set | significantly better | better | slightly better | "
        "negligibly better / unsure | avg |",
        "|---|---|---|---|---|---|---|---|",
        "| RLHF-V1 | Helpfulness RM | all | 75.0 ± 21.7 (n=4) | 50.0 ± 15.8 (n=10) | 100.0 ± 0.0 (n=2) | - (n=0) "
        "| 62.5 ± 12.1 (n=16) |",
        "| RLHF-V1 | Helpfulness RM | helpfulness | 100.0 ± 0.0 (n=3) | 50.0 ± 15.8 (n=10) | 100.0 ± 0.0 (n=2) "
        "| - (n=0) | 60.0 ± 12.6 (n=15) |",
        # sqrt(.8*.2/5) = .1789; sqrt(.25*.75/4) = .2165; sqrt(.25/2) = .3536; sqrt(.25/6) = .2041;
        # 9/17 = .5294, sqrt(.5294*.4706/17) = .1211
        "| RLHF-V2 | Safety RM | all | 80.0 ± 17.9 (n=5) | 25.0 ± 21.7 (n=4) | 50.0 ± 35.4 (n=2) "
        "| 50.0 ± 20.4 (n=6) | 52.9 ± 12.1 (n=17) |",
    ]


def test_report_md_shows_the_table_instead_of_raw_json(tmp_path):
    run_dir, stages = fixture_run(tmp_path)
    report = write_report(SimpleNamespace(chat_format="llama2"), run_dir, stages, {"eval": ""})
    text = (run_dir / "report.md").read_text()
    assert "```json" not in text and '"accuracy"' not in text
    assert "## Reward models: held-out accuracy per rating level (Table 8 layout)" in text
    assert (
        "| RLHF-V2 | Safety RM | all | 80.0 ± 17.9 (n=5) | 25.0 ± 21.7 (n=4) | 50.0 ± 35.4 (n=2) "
        "| 50.0 ± 20.4 (n=6) | 52.9 ± 12.1 (n=17) |"
    ) in text.splitlines()
    # report.json keeps the raw numbers, test sets included
    assert report["reward_models"][0]["test_sets"] == HELPFULNESS["test_sets"]
    assert json.loads((run_dir / "report.json").read_text())["reward_models"][1]["accuracy"] == SAFETY["accuracy"]
