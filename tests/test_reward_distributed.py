"""Stage 2 on 2 processes (gloo, CPU) equals 1 process: an uneven number of pairs, padding that weighs nothing.

The end-to-end test trains the tiny reward recipe on 37 pairs (global batch 8: the last batch holds 5 real
pairs and 3 padding pairs from `pad_dataset_to_multiple`) for 2 epochs, once on one process and once under
torchrun, and compares every logged step (loss, accuracy, margin, rewards, tokens), the held-out evaluation
(13 + 12 pairs scored on 2 processes, 25 on one) and the saved score head.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from test_distributed import _logged, _run_stage

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory):
    from datasets import Dataset

    from alignment.models import load_tokenizer
    from reward.config import Llama2RewardConfig
    from reward.scoring import load_reward_model, prepare_reward_tokenizer
    from reward.trainer import Llama2RewardTrainer

    tokenizer = prepare_reward_tokenizer(load_tokenizer("builtin:tiny-llama"))
    rows = [{"chosen_ids": [2, 5, 6, 3], "rejected_ids": [2, 5, 3], "margin": 1.0, "length": 4, "weight": 1.0}] * 4
    config = Llama2RewardConfig(
        output_dir=str(tmp_path_factory.mktemp("rm")),
        per_device_train_batch_size=4,
        global_batch_size=4,
        bf16=False,
        use_cpu=True,
        report_to="none",
    )
    return Llama2RewardTrainer(
        model=load_reward_model("builtin:tiny-llama"),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def test_padding_pairs_weigh_nothing_in_loss_and_metrics(tiny_trainer):
    """Pair 3 is padding: its (terrible) scores change neither the loss nor the logged metrics."""
    from reward.loss import ranking_loss

    chosen, rejected = torch.tensor([2.0, 0.5, -1.0, -9.0]), torch.tensor([1.0, 0.5, 0.0, 9.0])
    logits = torch.cat([chosen, rejected]).unsqueeze(-1)
    stub = lambda **inputs: SimpleNamespace(logits=logits)  # noqa: E731
    inputs = {
        "input_ids": torch.zeros(8, 3, dtype=torch.long),
        "attention_mask": torch.ones(8, 3, dtype=torch.long),
        "margin": torch.tensor([1.0, 0.0, 0.0, 0.0]),
        "weight": torch.tensor([1.0, 1.0, 1.0, 0.0]),
    }
    tiny_trainer.model.train()
    tiny_trainer._metrics["train"].clear()
    expected = ranking_loss(chosen[:3], rejected[:3], torch.tensor([1.0, 0.0, 0.0]))
    assert tiny_trainer.compute_loss(stub, dict(inputs)).item() == pytest.approx(expected.item(), abs=1e-6)
    # In a run the divisor is the real pairs of the whole global batch (here 6, over several micro-batches).
    loss = tiny_trainer.compute_loss(stub, dict(inputs), num_items_in_batch=torch.tensor(6.0))
    assert loss.item() == pytest.approx(expected.item() * 3 / 6, abs=1e-6)
    metrics = tiny_trainer._metrics["train"]
    assert metrics["accuracy"] == [1.0, 0.0, 0.0] * 2
    assert metrics["min_reward"] == [-1.0] and metrics["max_reward"] == [2.0]
    assert metrics["num_tokens"] == [2 * 3 * 6]  # 6 real sequences of 3 tokens, twice
    tiny_trainer._metrics["train"].clear()


def test_reward_rows_are_padded_with_zero_weight_pairs(tiny_trainer):
    from alignment.distributed import pad_dataset_to_multiple

    data = tiny_trainer.train_dataset.select(range(3))
    padded = pad_dataset_to_multiple(data, 4, pad_token_id=0)
    assert len(padded) == 4 and padded[:3] == data[:3]
    assert padded[3] == {"chosen_ids": [0], "rejected_ids": [0], "margin": 0.0, "length": 1, "weight": 0.0}
    with pytest.raises(ValueError, match="no 'labels' or 'weight'"):
        pad_dataset_to_multiple(data.remove_columns("weight"), 4, pad_token_id=0)


def test_reward_two_processes_match_one_process_with_an_uneven_number_of_pairs(tmp_path):
    from safetensors.torch import load_file

    common = [
        "--config",
        "recipes/tiny/reward.yaml",
        "--max_train_pairs",
        "37",
        "--max_eval_pairs",
        "25",
        "--global_batch_size",
        "8",
        "--per_device_train_batch_size",
        "4",
        "--num_train_epochs",
        "2",
        "--warmup_steps",
        "0",
        "--min_warmup_steps",
        "0",
        "--max_length",
        "48",
        "--logging_steps",
        "1",
        "--save_steps",
        "10",
        "--disable_tqdm",
        "true",
        "--use_cpu",
        "true",
    ]
    _run_stage("recipes/reward.py", [*common, "--output_dir", str(tmp_path / "one")], nproc=1)
    _run_stage("recipes/reward.py", [*common, "--output_dir", str(tmp_path / "two")], nproc=2)

    one, two = _logged(tmp_path / "one"), _logged(tmp_path / "two")
    assert [h["step"] for h in one] == [h["step"] for h in two] == list(range(1, 11))  # 2 x ceil(37 / 8)
    assert one[-1]["num_tokens"] == two[-1]["num_tokens"]
    keys = ("loss", "accuracy", "margin", "min_reward", "mean_reward", "max_reward", "num_tokens", "grad_norm")
    for a, b in zip(one, two):
        for key in keys:
            assert b[key] == pytest.approx(a[key], abs=1e-4), (a["step"], key)
    assert one[-1]["loss"] < one[0]["loss"] - 0.05  # it trained: the comparison is not of two untouched models

    eval_one, eval_two = (json.loads((tmp_path / run / "eval.json").read_text()) for run in ("one", "two"))
    assert eval_one["pairs"] == eval_two["pairs"] == 25
    assert eval_two["accuracy"] == eval_one["accuracy"]
    for side in ("chosen", "rejected"):
        assert eval_two["scores"][side]["mean"] == pytest.approx(eval_one["scores"][side]["mean"], abs=1e-4)
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys() and "score.weight" in weights_one
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-4, rtol=1e-3)
