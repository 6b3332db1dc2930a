"""The reward model's optional likelihood feature: the score against hand computation, padding, truncation, the
checkpoint round trip, the trainer's loss and a training run (reward/scoring.py `reward_scores`)."""

import json
from pathlib import Path

import pytest
import torch
from datasets import Dataset
from transformers import AutoModelForCausalLM

from alignment.chat import encode_prompt_response, user_prompt
from alignment.config import RecipeError
from alignment.models import load_tokenizer, resolve_model_path
from reward.config import Llama2RewardConfig
from reward.data import Comparison, load_comparisons
from reward.evaluate import score_all
from reward.loss import ranking_loss
from reward.scoring import (
    LIKELIHOOD_HEAD,
    RewardScorer,
    load_reward_model,
    prepare_reward_tokenizer,
    reward_scores,
)
from reward.trainer import (
    Llama2RewardTrainer,
    WeightedPreferenceCollator,
    run_reward,
    tokenize_comparisons,
    validate_reward_inputs,
)
from tests.test_reward_trainer import synthetic_rm_config

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = [
    user_prompt("what is 3 plus 4?"),
    user_prompt("what is the capital of ixland?", system="Answer briefly."),
    user_prompt("how do you spell cat backwards?"),
]
RESPONSES = ["3 plus 4 is 7.", "the capital of ixland is oru. i hope that helps.", "tac."]
SCALE = 0.5


@pytest.fixture(scope="module")
def feature_rm():
    torch.manual_seed(0)
    model = load_reward_model("builtin:tiny-llama", likelihood_feature=True)
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
        model.likelihood_scale.fill_(SCALE)
    return model


@pytest.fixture(scope="module")
def causal_lm():
    return AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-llama")).eval()


def by_hand(rm, lm, ids: list[int], response_tokens: int) -> float:
    """One unpadded row: head at the last token + SCALE * sum of the LM's log p over the answer's tokens."""
    with torch.no_grad():
        hidden = rm.model(input_ids=torch.tensor([ids])).last_hidden_state[0]
        logprobs = torch.log_softmax(lm(input_ids=torch.tensor([ids])).logits[0].float(), -1)
    first = max(len(ids) - response_tokens, 1)  # the row's first token has no prediction
    likelihood = sum(logprobs[t - 1, ids[t]].item() for t in range(first, len(ids)))
    return rm.score(hidden[-1]).item() + SCALE * likelihood


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_score_is_head_plus_scale_times_the_answers_log_likelihood(feature_rm, causal_lm, padding_side):
    scorer = RewardScorer("builtin:tiny-llama", batch_size=3, model=feature_rm)
    scorer.padding_side = padding_side
    expected = []
    for messages, response in zip(PROMPTS, RESPONSES):
        ids, prompt_length = encode_prompt_response(scorer.tokenizer, messages, response, "llama2")
        expected.append(by_hand(feature_rm, causal_lm, ids, len(ids) - prompt_length))
    torch.testing.assert_close(scorer.score(PROMPTS, RESPONSES).scores, torch.tensor(expected), atol=1e-4, rtol=1e-5)
    # The feature moves the scores: without it they are the head's alone.
    plain = RewardScorer("builtin:tiny-llama", model=load_reward_model("builtin:tiny-llama"))
    plain.model.score.weight.data.copy_(feature_rm.score.weight)
    assert (plain.score(PROMPTS, RESPONSES).scores - torch.tensor(expected)).abs().min() > 0.5


@pytest.mark.parametrize("keep", [4, 30])
def test_truncated_rows_count_only_the_answer_tokens_they_keep(feature_rm, causal_lm, keep):
    """keep=30 cuts into the prompt (the whole answer counts); keep=4 into the answer (its kept tokens
    after the first, which has no real token before it)."""
    scorer = RewardScorer("builtin:tiny-llama", model=feature_rm, max_length=keep)
    ids, prompt_length = encode_prompt_response(scorer.tokenizer, PROMPTS[1], RESPONSES[1], "llama2")
    answer = len(ids) - prompt_length
    assert len(ids) > 30 and 4 < answer < 30
    expected = by_hand(feature_rm, causal_lm, ids[-keep:], min(answer, keep))
    assert scorer.score(PROMPTS[1:2], RESPONSES[1:2]).scores.item() == pytest.approx(expected, abs=1e-4)


def test_checkpoint_round_trip_and_the_value_model_without_the_feature(tmp_path, feature_rm):
    scorer = RewardScorer("builtin:tiny-llama", model=feature_rm)
    feature_rm.save_pretrained(tmp_path, safe_serialization=True)
    scorer.tokenizer.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["likelihood_feature"] is True
    reloaded = RewardScorer(str(tmp_path))
    assert reloaded.model.likelihood_scale.item() == SCALE
    torch.testing.assert_close(reloaded.score(PROMPTS, RESPONSES).scores, scorer.score(PROMPTS, RESPONSES).scores)
    value_model = load_reward_model(str(tmp_path), keep_likelihood=False)
    assert getattr(value_model, LIKELIHOOD_HEAD, None) is None
    # Loaded in bfloat16 the kept head follows the backbone's dtype, and the scores stay those of float32.
    half = RewardScorer(str(tmp_path), dtype="bfloat16")
    assert half.model.likelihood_head.weight.dtype == torch.bfloat16
    torch.testing.assert_close(
        half.score(PROMPTS, RESPONSES).scores, scorer.score(PROMPTS, RESPONSES).scores, atol=0.5, rtol=0.05
    )
    # A config that claims the feature over weights that lack it is refused, not silently scored without it.
    config = json.loads((tmp_path / "config.json").read_text())
    other = tmp_path / "plain"
    load_reward_model("builtin:tiny-llama").save_pretrained(other, safe_serialization=True)
    (other / "config.json").write_text(json.dumps(config))
    with pytest.raises(RecipeError, match="lack its head"):
        load_reward_model(str(other))
    # A reward model trained without the feature cannot be asked for it.
    plain = tmp_path / "no-feature"
    load_reward_model("builtin:tiny-llama").save_pretrained(plain, safe_serialization=True)
    with pytest.raises(RecipeError, match="trained without likelihood_feature"):
        load_reward_model(str(plain), likelihood_feature=True)


@pytest.mark.parametrize("tied", [False, True])
def test_the_feature_head_is_read_from_the_checkpoint_without_loading_the_causal_lm(tmp_path, monkeypatch, tied):
    torch.manual_seed(1)
    lm = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-llama"))
    if tied:  # SmolLM2-style: the output embedding is the input one, saved once
        lm.config.tie_word_embeddings = True
        lm.tie_weights()
    lm.save_pretrained(tmp_path, safe_serialization=True)
    load_tokenizer("builtin:tiny-llama").save_pretrained(tmp_path)
    expected = lm.get_output_embeddings().weight.detach().clone()

    def no_second_model(*args, **kwargs):
        raise AssertionError("the whole causal LM was loaded to take its head")

    monkeypatch.setattr("reward.scoring.AutoModelForCausalLM.from_pretrained", no_second_model)
    model = load_reward_model(str(tmp_path), likelihood_feature=True)
    torch.testing.assert_close(getattr(model, LIKELIHOOD_HEAD).weight, expected, rtol=0, atol=0)


def test_a_wrapped_model_is_refused_not_scored_without_its_feature(feature_rm):
    """DDP/FSDP hide the feature behind .module; scoring the wrapper's head alone would be silently wrong."""
    wrapper = torch.nn.Module()
    wrapper.module = feature_rm
    ids = torch.tensor([[1, 5, 6, 3]])
    with pytest.raises(RecipeError, match="single process"):
        reward_scores(wrapper, ids, torch.ones_like(ids), torch.tensor([2]))


def test_the_trainer_loss_is_the_ranking_loss_of_the_feature_scores(feature_rm, tmp_path):
    tokenizer = prepare_reward_tokenizer(load_tokenizer("builtin:tiny-llama"))
    comparisons = [
        Comparison(PROMPTS[0], RESPONSES[0], "3 plus 4 is 8.", "better", "helpfulness"),
        Comparison(PROMPTS[2], RESPONSES[2], "sorry, i can't help with that.", "better", "helpfulness"),
    ]
    rows, _ = tokenize_comparisons(comparisons, tokenizer, "llama2", "small", None)
    for row, comparison in zip(rows, comparisons):
        ids, prompt_length = encode_prompt_response(tokenizer, comparison.prompt, comparison.rejected, "llama2")
        assert row["rejected_response_tokens"] == len(ids) - prompt_length
    batch = WeightedPreferenceCollator(pad_token_id=tokenizer.pad_token_id)(rows)
    assert batch["response_tokens"].tolist() == [r["chosen_response_tokens"] for r in rows] + [
        r["rejected_response_tokens"] for r in rows
    ]
    scorer = RewardScorer("builtin:tiny-llama", model=feature_rm, tokenizer=tokenizer)
    chosen = scorer.score([c.prompt for c in comparisons], [c.chosen for c in comparisons]).scores
    rejected = scorer.score([c.prompt for c in comparisons], [c.rejected for c in comparisons]).scores
    scores = reward_scores(feature_rm, batch["input_ids"], batch["attention_mask"], batch["response_tokens"])
    torch.testing.assert_close(scores.detach(), torch.cat([chosen, rejected]), atol=1e-4, rtol=1e-5)
    expected = ranking_loss(chosen, rejected, batch["margin"]).item()
    assert expected > 0
    trainer = _trainer(tokenizer, tmp_path)
    loss = trainer.compute_loss(feature_rm, dict(batch))
    assert loss.item() == pytest.approx(expected, abs=1e-4)


def _trainer(tokenizer, tmp_path):
    rows = [{"chosen_ids": [2, 5, 6, 3], "rejected_ids": [2, 5, 3], "margin": 1.0, "length": 4}] * 4
    config = Llama2RewardConfig(output_dir=str(tmp_path), per_device_train_batch_size=2, bf16=False, use_cpu=True)
    return Llama2RewardTrainer(
        model=load_reward_model("builtin:tiny-llama"),
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
    )


def test_a_trained_feature_model_reloads_with_its_reported_accuracy(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    config, _ = synthetic_rm_config(
        tmp_path, 240, 2, 0.0, "rm", "--num_train_epochs", "1", "--likelihood_feature", "true"
    )
    summary = run_reward(config)
    out = tmp_path / "rm"
    scorer = RewardScorer(str(out))
    assert getattr(scorer.model, LIKELIHOOD_HEAD, None) is not None
    held_out = load_comparisons(out / "held_out.jsonl")
    chosen, rejected = score_all(scorer, held_out)
    accuracy = (chosen > rejected).float().mean().item()
    assert accuracy == pytest.approx(summary["eval"]["accuracy"]["overall"]["accuracy"], abs=1e-6)
    # Training reached the feature: its scale and its head moved from where the checkpoint put them.
    assert abs(scorer.model.likelihood_scale.item() - 1.0) > 1e-3
    start = AutoModelForCausalLM.from_pretrained(resolve_model_path("builtin:tiny-llama")).lm_head.weight
    assert (scorer.model.likelihood_head.weight - start).abs().max() > 1e-3
    monkeypatch.setenv("WORLD_SIZE", "2")
    config.per_device_train_batch_size = config.global_batch_size // 2  # a valid 2-process batch otherwise
    with pytest.raises(RecipeError, match="single process"):
        validate_reward_inputs(config)
    monkeypatch.setenv("WORLD_SIZE", "1")
    config.use_lora = True
    with pytest.raises(RecipeError, match="likelihood_feature trains the whole model"):
        validate_reward_inputs(config)
