"""Stage 2 training: TRL's loss against hand values, the schedule, tokenization, the recipe, a tiny RM that learns."""

import json
import math
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from alignment.config import RecipeError, parse_recipe
from alignment.data import append_jsonl
from reward.config import Llama2RewardConfig
from reward.data import Comparison
from reward.loss import margin_for, ranking_loss
from reward.synthetic import synthetic_comparisons
from reward.trainer import (
    Llama2RewardTrainer,
    load_reward_data,
    run_reward,
    tokenize_comparisons,
    validate_reward_inputs,
)

ROOT = Path(__file__).resolve().parents[1]
RATINGS4 = ["significantly_better", "better", "slightly_better", "negligibly_better"]
CHOSEN = torch.tensor([2.0, 0.5, -1.0, 0.0])
REJECTED = torch.tensor([1.0, 0.5, 0.0, 0.0])


def softplus(x):  # -log sigmoid(d) = log(1 + exp(-d))
    return math.log1p(math.exp(x))


# d = r_c - r_r = [1, 0, -1, 0]; loss = mean(softplus(-(d - m)))
HAND = {
    "none": (softplus(-1) + softplus(0) + softplus(1) + softplus(0)) / 4,  # 0.753204
    "small": (softplus(0) + softplus(2 / 3) + softplus(4 / 3) + softplus(0)) / 4,  # m = 1, 2/3, 1/3, 0
    "large": (softplus(2) + softplus(2) + softplus(2) + softplus(0)) / 4,  # m = 3, 2, 1, 0
}


@pytest.fixture(scope="module")
def tiny_trainer(tmp_path_factory):
    from datasets import Dataset

    from alignment.models import load_tokenizer
    from reward.scoring import load_reward_model, prepare_reward_tokenizer

    tokenizer = prepare_reward_tokenizer(load_tokenizer("builtin:tiny-llama"))
    rows = [{"chosen_ids": [2, 5, 6, 3], "rejected_ids": [2, 5, 3], "margin": 1.0, "length": 4}] * 8
    config = Llama2RewardConfig(
        output_dir=str(tmp_path_factory.mktemp("rm")),
        per_device_train_batch_size=4,
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


@pytest.mark.parametrize("table", ["none", "small", "large"])
def test_trl_reward_loss_is_minus_log_sigmoid_of_difference_minus_margin(tiny_trainer, table):
    """TRL puts chosen rows first, rejected second, and subtracts the `margin` column."""
    logits = torch.cat([CHOSEN, REJECTED]).unsqueeze(-1)
    stub = lambda **inputs: SimpleNamespace(logits=logits)  # noqa: E731
    inputs = {"input_ids": torch.zeros(8, 3, dtype=torch.long), "attention_mask": torch.ones(8, 3, dtype=torch.long)}
    if table != "none":
        inputs["margin"] = margin_for(RATINGS4, table)
    loss = tiny_trainer.compute_loss(stub, inputs)
    assert loss.item() == pytest.approx(HAND[table], abs=1e-6)
    assert ranking_loss(CHOSEN, REJECTED, margin_for(RATINGS4, table)).item() == pytest.approx(HAND[table], abs=1e-6)


def test_hand_values_are_what_we_think():
    assert HAND["none"] == pytest.approx(0.7532044, abs=1e-6)
    assert HAND["large"] == pytest.approx((3 * 2.1269280 + 0.6931472) / 4, abs=1e-6)


def test_schedule_warmup_3_percent_at_least_5_and_cosine_to_10_percent(tiny_trainer):
    config = tiny_trainer.args
    assert config.get_warmup_steps(100) == 5 and config.get_warmup_steps(1000) == 30
    tiny_trainer.create_optimizer_and_scheduler(num_training_steps=100)
    scheduler, optimizer = tiny_trainer.lr_scheduler, tiny_trainer.optimizer
    lrs = []
    for _ in range(101):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(1e-5)
    assert lrs[100] == pytest.approx(1e-6, rel=1e-6)  # cosine decays to 10% of max (sec. 3.2.2)
    # step 24: 19 of 95 decay steps done -> 1e-6 + 9e-6 * (1 + cos(0.2 pi)) / 2
    assert lrs[24] == pytest.approx(9.1405765e-06, rel=1e-6)
    group = optimizer.param_groups[0]
    assert group["betas"] == (0.9, 0.95) and group["eps"] == 1e-5
    assert {g["weight_decay"] for g in optimizer.param_groups} == {0.1, 0.0}  # no decay on norms


def test_tokenize_comparisons_margins_truncation_and_length():
    from alignment.chat import encode_prompt_response
    from alignment.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny-llama")
    prompt = [{"role": "user", "content": "Tell me about cats, part 1."}]
    comparisons = [Comparison(prompt, "clear kind answer", "rude", r, "helpfulness") for r in RATINGS4]
    rows, truncated = tokenize_comparisons(comparisons, tokenizer, "llama2", "large", None)
    assert [r["margin"] for r in rows] == [3.0, 2.0, 1.0, 0.0] and truncated == 0
    full, _ = encode_prompt_response(tokenizer, prompt, "clear kind answer", "llama2")
    assert rows[0]["chosen_ids"] == full and rows[0]["length"] == len(full)
    cut, truncated = tokenize_comparisons(comparisons[:1], tokenizer, "llama2", "none", 6)
    assert cut[0]["chosen_ids"] == full[-6:] and cut[0]["chosen_ids"][-1] == tokenizer.eos_token_id
    assert "margin" not in cut[0] and truncated == 2  # both sequences (the prompt alone is longer than 6)


def test_recipes_parse_and_bad_recipes_fail_fast(tmp_path):
    for preset in ("tiny", "smollm2", "llama2-7b"):
        (config,) = parse_recipe((Llama2RewardConfig,), ["--config", str(ROOT / f"recipes/{preset}/reward.yaml")])
        assert config.num_train_epochs >= 1 and config.lr_scheduler_kwargs == {"min_lr_rate": 0.1}
    (paper,) = parse_recipe((Llama2RewardConfig,), ["--config", str(ROOT / "recipes/llama2-7b/reward.yaml")])
    assert (paper.learning_rate, paper.global_batch_size, paper.num_train_epochs) == (1e-5, 512, 1.0)
    (config,) = parse_recipe((Llama2RewardConfig,), ["--config", str(ROOT / "recipes/tiny/reward.yaml")])
    with pytest.raises(RecipeError, match="unknown key 'margins'.*did you mean 'margin'"):
        parse_recipe((Llama2RewardConfig,), [], recipe={"margins": "small"})
    cases = [
        ({"margin": "huge"}, "margin must be one of none, small, large"),
        ({"reward_model": "honesty"}, "reward_model must be one of helpfulness, safety"),
        ({"comparison_files": ["missing.jsonl"]}, "points to a missing file: missing.jsonl"),
        (
            {"sources": [{"path": "data/reward/synthetic.jsonl", "fromat": "hh-rlhf"}]},
            r"unknown key\(s\) \['fromat'\]",
        ),
        ({"mixture_ratios": {"safety": 1.0}}, "mixture_anchor 'helpfulness' is not a key"),
        ({"global_batch_size": 33}, "global batch 33 is not a multiple"),
        ({"comparison_files": [], "sources": []}, "no training data"),
    ]
    for change, message in cases:
        bad = Llama2RewardConfig(
            **{
                **{
                    k: getattr(config, k)
                    for k in ("comparison_files", "global_batch_size", "per_device_train_batch_size")
                },
                "output_dir": str(tmp_path),
                **change,
            }
        )
        with pytest.raises(RecipeError, match=message):
            validate_reward_inputs(bad)


def synthetic_rm_config(tmp_path, pairs: int, seed: int, safety_share: float, output: str, *overrides: str):
    """The tiny RM recipe on a fresh synthetic pair file, fast settings, plus `--key value` overrides."""
    data = tmp_path / "pairs.jsonl"
    append_jsonl(data, synthetic_comparisons(pairs, seed=seed, safety_share=safety_share))
    (config,) = parse_recipe(
        (Llama2RewardConfig,),
        [
            "--config",
            "recipes/tiny/reward.yaml",
            "--output_dir",
            str(tmp_path / output),
            "--learning_rate",
            "5e-3",
            "--global_batch_size",
            "32",
            "--max_length",
            "48",
            "--save_steps",
            "1000",
            "--logging_steps",
            "1000",
            "--disable_tqdm",
            "true",
            "--eval_fraction",
            "0.25",
            *overrides,
        ],
        recipe={"comparison_files": [str(data)]},
    )
    return config, data


def test_tiny_rm_learns_a_learnable_preference_set(tmp_path, monkeypatch):
    """>= 85% held-out accuracy on synthetic pairs; a finished run is not redone, a changed one is refused."""
    monkeypatch.chdir(ROOT)
    config, data = synthetic_rm_config(tmp_path, 600, 1, 0.3, "rm", "--num_train_epochs", "2")
    summary = run_reward(config)
    accuracy = summary["eval"]["accuracy"]
    assert summary["eval"]["pairs"] >= 100
    # 0.897 on 156 held-out pairs (standard error 0.024) since held-out prompts are chosen by hash (0.88-0.90
    # across splits; chance is 0.5): the bar sits two standard errors below, so a real regression fails it.
    assert accuracy["overall"]["accuracy"] >= 0.85
    assert (
        summary["data"]["mixture"]["taken"]["helpfulness"]
        == summary["data"]["sources"][str(data)]["train"] - summary["data"]["mixture"]["taken"]["safety+open_source"]
    )
    out = tmp_path / "rm"
    saved = json.loads((out / "eval.json").read_text())
    assert saved["accuracy"]["overall"] == accuracy["overall"]
    assert "| helpfulness |" in (out / "eval.md").read_text()
    assert (out / "model.safetensors").exists() and (out / "held_out.jsonl").exists()
    assert json.loads((out / "config.json").read_text())["architectures"] == ["LlamaForSequenceClassification"]
    assert run_reward(config)["train_seconds"] == summary["train_seconds"]  # finished: nothing redone
    config.margin = "large"
    with pytest.raises(RecipeError, match="different recipe"):
        run_reward(config)


def test_safety_rm_calibration_is_saved_and_used_by_the_scorer(tmp_path, monkeypatch):
    """calibrate_unsafe_precision: the offset lands in config.json and a reloaded scorer flags as calibrated."""
    from reward.evaluate import labelled_responses, score_all
    from reward.metrics import unsafe_detection
    from reward.scoring import RewardScorer

    monkeypatch.chdir(ROOT)
    config, _ = synthetic_rm_config(
        tmp_path,
        240,
        3,
        0.6,
        "rs",
        "--num_train_epochs",
        "1",
        "--reward_model",
        "safety",
        "--calibrate_unsafe_precision",
        "0.9",
    )
    summary = run_reward(config)
    calibration = summary["calibration"]
    saved_config = json.loads((tmp_path / "rs" / "config.json").read_text())
    offset = saved_config["score_offset"]
    assert saved_config["training_max_length"] == 48  # the recipe's window, read back by every scorer
    assert offset == pytest.approx(calibration["score_offset"])
    assert calibration["on_training_responses"]["precision"] >= 0.9
    assert summary["eval"]["unsafe_detection"] is not None
    # The saved model, reloaded, flags the training responses exactly as the calibration reported.
    train, _, _ = load_reward_data(config)
    scorer = RewardScorer(str(tmp_path / "rs"))
    scores, unsafe = labelled_responses(*score_all(scorer, train), train, helpfulness_as_safe=True)
    assert unsafe_detection(torch.sigmoid(scores), unsafe) == pytest.approx(calibration["on_training_responses"])
    config.reward_model = "helpfulness"
    with pytest.raises(RecipeError, match="safety RM only"):
        validate_reward_inputs(config)


def test_train_top_layers_freezes_all_but_the_top_and_zero_trains_the_head_alone():
    from reward.scoring import load_reward_model
    from reward.trainer import freeze_lower_layers

    model = load_reward_model("builtin:tiny-llama")
    hidden = model.config.hidden_size
    assert freeze_lower_layers(model, 0) == hidden  # score head: Linear(hidden, 1), no bias
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["score.weight"]
    top = sum(p.numel() for p in model.model.layers[-1].parameters()) + model.model.norm.weight.numel()
    assert freeze_lower_layers(model, 1) == hidden + top
    with pytest.raises(RecipeError, match="train_top_layers must be in 0.."):
        freeze_lower_layers(model, len(model.model.layers) + 1)
