"""The iteration diagnostics on a hand-made run: answer kinds, R_h pair accuracy by kind, best-of-K picks."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.world import prompt_by_id  # noqa: E402
from alignment.world.scorers import world_judge  # noqa: E402
from benchmarks import iteration_diagnostics  # noqa: E402
from benchmarks.iteration_diagnostics import (  # noqa: E402
    answer_kind,
    iteration_figures,
    pair_group,
    rm_test_figures,
)

PLUS = prompt_by_id("plus/3-4/0")  # "what is 3 plus 4?"


def write_run(tmp_path: Path, samples: list[tuple[str, float, float]]) -> Path:
    (tmp_path / "data").mkdir()
    row = {**PLUS, "id": "rs1-0", "world_id": PLUS["id"]}
    (tmp_path / "data" / "rs_v1.jsonl").write_text(json.dumps(row) + "\n")
    folder = tmp_path / "RLHF-V1" / "rejection_sampling"
    folder.mkdir(parents=True)
    messages = [{"role": "user", "content": PLUS["prompt"]}]
    rows = [
        {"prompt_id": "rs1-0", "messages": messages, "response": text, "r_h": r_h, "r_c": r_c}
        for text, r_h, r_c in samples
    ]
    (folder / "samples.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def test_answer_kinds():
    assert answer_kind(PLUS, "3 plus 4 is 7.") == "correct"
    assert answer_kind(PLUS, "3 plus 4 is 8.") == "wrong_value"
    assert answer_kind(PLUS, "5 plus 1 is 6.") == "off_subject"
    assert answer_kind(PLUS, "i can't help with that.") == "refusal"


def test_pair_accuracy_and_picks_by_hand(tmp_path):
    run = write_run(
        tmp_path,
        [
            ("3 plus 4 is 7.", 0.0, 0.0),  # gold 1.0, correct
            ("3 plus 4 is 7. i hope that helps.", 1.0, 1.0),  # gold 0.5, correct: R_c picks it
            ("5 plus 1 is 6.", 2.0, -1.0),  # gold 0.0, off subject
        ],
    )
    figures = iteration_figures(run, 1)
    assert figures["prompts"] == 1
    assert figures["kinds"] == pytest.approx({"correct": 2 / 3, "off_subject": 1 / 3, "wrong_value": 0, "refusal": 0})
    # format pair (1.0 vs 0.5): R_h 0.0 < 1.0, wrong; both correct-vs-off-subject pairs: R_h 2.0 above both, wrong
    assert figures["pairs"] == {"format": (0, 1), "correct vs off_subject": (0, 2)}
    assert figures["picks"]["random"] == pytest.approx((2 / 3, 0.5))
    assert figures["picks"]["R_c"] == (1.0, 0.5)
    assert figures["picks"]["oracle"] == (1.0, 1.0)
    assert iteration_figures(run, 2) is None
    # A judge in place of the logged R_h: gold itself orders every pair right; the picks still follow R_c.
    judged = iteration_figures(run, 1, world_judge("builtin:world-helpfulness"))
    assert judged["pairs"] == {"format": (1, 1), "correct vs off_subject": (2, 2)}
    assert judged["picks"] == figures["picks"]


class FakeScorer:
    """R_h stand-in: scores an answer by the number of words it shares with its prompt."""

    def __init__(self, *args, **kwargs):
        pass

    def score(self, prompts, answers):
        scores = [float(len(set(p[-1]["content"].split()) & set(a.split()))) for p, a in zip(prompts, answers)]
        return SimpleNamespace(scores=torch.tensor(scores))


def test_pair_groups_and_test_set_accuracy_by_hand(tmp_path, monkeypatch):
    assert pair_group(PLUS, "3 plus 4 is 7.", "3 plus 4 is 7. i hope that helps.") == "format"
    assert pair_group(PLUS, "3 plus 4 is 8. hope this helps.", "i can't help with that.") == "format"  # both wrong
    assert pair_group(PLUS, "3 plus 4 is 7.", "5 plus 1 is 6.") == "correct vs off_subject"
    assert pair_group(PLUS, "3 plus 4 is 7.", "3 plus 4 is 8.") == "correct vs wrong_value"
    monkeypatch.setattr(iteration_diagnostics, "RewardScorer", FakeScorer)
    prompt = [{"role": "user", "content": PLUS["prompt"]}]
    pairs = [
        ("3 plus 4 is 7.", "5 plus 1 is 6."),  # right: 3 words shared with the prompt against 2
        ("5 plus 1 is 6.", "3 plus 4 is 7."),  # noise flipped it: gold still says the second is better; right
        ("3 plus 4 is 7.", "3 plus 4 is 8."),  # equal overlap: wrong (not strictly above)
        ("3 plus 4 is 7.", "3 plus 4 is 7."),  # equal gold: left out
    ]
    rows = [{"prompt": prompt, "prompt_id": PLUS["id"], "chosen": a, "rejected": b} for a, b in pairs]
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "rm_test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert rm_test_figures(tmp_path, 1) is None  # no R_h of iteration 1
    (tmp_path / "RLHF-V1" / "reward_helpfulness").mkdir(parents=True)
    (tmp_path / "RLHF-V1" / "reward_helpfulness" / "config.json").write_text("{}")
    assert rm_test_figures(tmp_path, 1) == {"correct vs off_subject": (2, 2), "correct vs wrong_value": (0, 1)}
