"""benchmarks/ppo_over_rs.py: the combination of paired differences over runs, by hand."""

from pathlib import Path

import pytest

from benchmarks import ppo_over_rs
from benchmarks.ppo_over_rs import (
    change_counts,
    combine,
    gold_helpfulness_judge,
    judge_accuracy,
    prompt_set,
    set_differences,
)


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


def test_prompt_set_puts_held_out_first_then_ppo_prompts():
    assert prompt_set("a", ppo_texts={"a"}, heldout_texts={"a"}) == "held-out prompts"
    assert prompt_set("a", ppo_texts={"a"}, heldout_texts=set()) == "PPO's prompts"
    assert prompt_set("b", ppo_texts={"a"}, heldout_texts=set()) == "other training prompts"


def test_set_differences_pairs_within_each_set_and_family_group():
    before = {"p1": 0.25, "p2": 1.0, "o1": 0.5, "h1": 0.0, "h2": 0.5}
    after = {"p1": 1.0, "p2": 1.0, "o1": 0.25, "h1": 0.25, "h2": 0.5}
    set_of = {"p1": "PPO's prompts", "p2": "PPO's prompts", "o1": "other training prompts"}
    set_of |= {"h1": "held-out prompts", "h2": "held-out prompts"}
    family_of = {"p1": "arithmetic", "p2": "word", "o1": "arithmetic", "h1": "capital", "h2": "arithmetic"}
    out = set_differences(before, after, set_of, family_of)
    assert out[("PPO's prompts", "all")]["mean"] == pytest.approx(0.375)  # (+0.75 + 0) / 2
    assert out[("PPO's prompts", "all")]["n"] == 2
    assert out[("PPO's prompts", "arithmetic")]["mean"] == pytest.approx(0.75)
    assert out[("PPO's prompts", "other families")]["mean"] == pytest.approx(0.0)
    assert out[("other training prompts", "arithmetic")]["mean"] == pytest.approx(-0.25)
    assert ("other training prompts", "other families") not in out  # no such prompt: no row
    assert out[("held-out prompts", "all")]["mean"] == pytest.approx(0.125)
    assert out[("held-out prompts", "other families")]["n"] == 1


def test_judge_names_and_pair_accuracy_summed_over_runs(monkeypatch):
    assert gold_helpfulness_judge("oracle") == "builtin:world-helpfulness"
    assert gold_helpfulness_judge("noise=2") == "builtin:world-helpfulness+noise=2"
    per_run = {
        "a": {"pairs": {"format": (3, 4), "correct vs wrong_value": (1, 2)}},
        "b": {"pairs": {"correct vs wrong_value": (2, 2)}},
    }
    judges = []
    monkeypatch.setattr(ppo_over_rs, "iteration_figures", lambda run, it, judge: judges.append(judge) or per_run[run])
    assert judge_accuracy(["a", "b"], "trained") == {
        "format": (3, 4),
        "correct vs wrong_value": (3, 4),
        "all": (6, 8),
    }
    assert judges == [None, None]  # the trained judge is the R_h logged with the samples
    judge_accuracy(["a"], "noise=1")
    assert judges[-1].noise == 1.0
    # other-seed: each run is scored by its own other-seed R_h, not by a builtin judge.
    monkeypatch.setattr(ppo_over_rs, "other_seed_reward_model", lambda run, runs, threads: f"rm-of-{run}")
    monkeypatch.setattr(ppo_over_rs, "RewardScorer", lambda path: path)
    assert judge_accuracy(["a", "b"], ppo_over_rs.OTHER_SEED)["all"] == (6, 8)
    assert judges[-2:] == ["rm-of-a", "rm-of-b"]


def test_gate_rows_sum_answers_and_flags_and_average_the_scores(monkeypatch, tmp_path):
    runs = [tmp_path / "s0", tmp_path / "s1"]
    figures = {
        ("s0", "evaluate_rs"): {"answers": 10, "flagged": 1, "R_h": -5.0, "R_c": -4.0},
        ("s1", "evaluate_rs"): {"answers": 10, "flagged": 0, "R_h": -6.0, "R_c": -6.0},
        ("s0", "ppo"): {"answers": 10, "flagged": 4, "R_h": -7.0, "R_c": -3.0},
        ("s1", "ppo"): {"answers": 10, "flagged": 2, "R_h": -6.0, "R_c": -4.0},
    }
    monkeypatch.setattr(ppo_over_rs, "RewardScorer", lambda path: Path(path).parents[1].name)
    monkeypatch.setattr(ppo_over_rs, "gate_figures", lambda scorers, ev: figures[(scorers[0], ev.name)])
    source = ppo_over_rs.Source("PPO", {run: run / "ppo" for run in runs}, {}, {}, "x")
    rows, summary = ppo_over_rs.gate_rows(runs, [source])
    assert rows == [
        ["V5 without PPO", 20, "1 (0.050)", "-5.50", "-5.00"],
        ["PPO", 20, "6 (0.300)", "-6.50", "-3.50"],
    ]
    assert summary["PPO: gate"] == {"answers": 20, "flagged": 6, "R_h": -6.5, "R_c": -3.5}


def test_each_judge_names_its_gate_rule_and_reward_models(monkeypatch, tmp_path):
    commands = []
    monkeypatch.setattr(ppo_over_rs.subprocess, "run", lambda command, **kwargs: commands.append(command))
    monkeypatch.setattr(ppo_over_rs, "evaluate_model", lambda run, model, evaluation, threads: evaluation)
    run, prompts, other = tmp_path / "s0", tmp_path / "p.jsonl", tmp_path / "s0" / "members" / "sft-of-s1"
    own = run / "RLHF-V5" / "reward_helpfulness"
    for judge in ("trained", "lower", "oracle"):
        ppo_over_rs.run_judge(run, judge, 1, judge, prompts)
    ppo_over_rs.run_judge(run, ppo_over_rs.OTHER_SEED, 1, "o", prompts, other)
    options = [{arg for arg in command if arg.startswith("--") and "=" in arg} for command in commands]
    assert "--flagged_reward=safety" in options[0] and not any("_model" in o for o in options[0])
    assert "--flagged_reward=lower" in options[1] and not any("_model" in o for o in options[1])
    assert {"--flagged_reward=safety", "--helpfulness_model=builtin:world-helpfulness"} <= options[2]
    expected = {"--flagged_reward=lower", f"--helpfulness_model={other}", f"--value_model_name_or_path={own}"}
    assert expected <= options[3]
    assert not any(o.startswith("--safety_model") for o in options[3])  # the run's own R_s
