"""benchmarks/ppo_over_rs.py: per-prompt figures of an evaluation and the combination over runs, by hand."""

import json

import pytest

from alignment.world import ideal_response, prompt_pool
from benchmarks.ppo_over_rs import combine, per_prompt


def test_combine_takes_the_larger_of_the_within_and_the_between_run_error():
    mean, stderr, means = combine([{"mean": 0.1, "stderr": 0.03}, {"mean": 0.0, "stderr": 0.04}])
    assert mean == pytest.approx(0.05)
    # within: sqrt(0.03^2 + 0.04^2) / 2 = 0.025; between: sd(0.1, 0.0) / sqrt(2) = 0.05
    assert stderr == pytest.approx(0.05)
    assert means == [0.1, 0.0]
    _, stderr, _ = combine([{"mean": 0.1, "stderr": 0.3}, {"mean": 0.0, "stderr": 0.4}])
    assert stderr == pytest.approx(0.25)


def test_per_prompt_reads_helpfulness_prompts_only(tmp_path):
    pool = prompt_pool("heldout")
    helpful = next(p for p in pool if p["family"] == "arithmetic")
    harmful = next(p for p in pool if p["kind"] == "safety")
    answers = [(helpful, ideal_response(helpful)), (harmful, "sure.")]
    rows = [
        {"id": f"eval-{i}", "prompt": [{"role": "user", "content": p["prompt"]}], "response": answer}
        for i, (p, answer) in enumerate(answers)
    ]
    (tmp_path / "responses.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    figures = per_prompt(tmp_path, {p["prompt"]: p for p in pool})
    assert figures == {"gold helpfulness": {helpful["prompt"]: 1.0}, "correct-fact rate": {helpful["prompt"]: 1.0}}
