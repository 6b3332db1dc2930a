"""The scoring API later stages call: right/left padding, batching, last-token read-out, checkpoint round trip."""

import json

import pytest
import torch

from alignment.chat import encode_prompt_response, user_prompt
from alignment.config import RecipeError
from reward.scoring import RewardScorer, ScoreBatch, load_reward_model, reward_pad_token_id

PROMPTS = [
    user_prompt("What is the capital of France?"),
    user_prompt("Name a colour.", system="Answer briefly."),
    [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Count to three."},
    ],
    user_prompt("Tell me a long story about a dragon who learned to count very large numbers."),
    user_prompt("?"),
]
RESPONSES = ["Paris.", "Blue", "1 2 3", "Once upon a time there was a dragon. " * 3, "I am not sure."]


@pytest.fixture(scope="module")
def tiny_rm():
    torch.manual_seed(0)
    model = load_reward_model("builtin:tiny-llama")
    # A fresh head is initialised with std 0.02; a larger one makes score differences visible above float noise.
    with torch.no_grad():
        model.score.weight.normal_(0.0, 1.0)
    return model


@pytest.fixture(scope="module")
def scorer(tiny_rm):
    return RewardScorer("builtin:tiny-llama", batch_size=2, model=tiny_rm)


def reference_scores(scorer, prompts, responses):
    """One unpadded row at a time, head applied by hand at the last position."""
    out = []
    for messages, response in zip(prompts, responses):
        ids, _ = encode_prompt_response(scorer.tokenizer, messages, response, "llama2")
        hidden = scorer.model.model(input_ids=torch.tensor([ids])).last_hidden_state
        out.append(scorer.model.score(hidden[0, -1]).item())
    return torch.tensor(out)


def test_causal_lm_gets_scalar_head_and_a_pad_that_is_not_eos(tiny_rm):
    assert type(tiny_rm).__name__ == "LlamaForSequenceClassification"
    assert tiny_rm.config.num_labels == 1
    assert tuple(tiny_rm.score.weight.shape) == (1, tiny_rm.config.hidden_size)
    assert tiny_rm.config.pad_token_id == 0  # tiny Llama's <pad>; EOS is 3
    assert tiny_rm.config.pad_token_id != tiny_rm.config.eos_token_id


def test_score_batch_shape_dtype_and_probs(scorer):
    batch = scorer.score(PROMPTS, RESPONSES)
    assert isinstance(batch, ScoreBatch)
    assert batch.scores.shape == (5,) and batch.probs.shape == (5,)
    assert batch.scores.dtype == torch.float32 and batch.scores.device.type == "cpu"
    torch.testing.assert_close(batch.probs, torch.sigmoid(batch.scores))
    assert not batch.scores.requires_grad


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_batched_scores_equal_unpadded_last_token_scores(scorer, padding_side):
    scorer.padding_side = padding_side
    try:
        batch = scorer.score(PROMPTS, RESPONSES)
    finally:
        scorer.padding_side = "right"
    expected = reference_scores(scorer, PROMPTS, RESPONSES)
    torch.testing.assert_close(batch.scores, expected, atol=1e-5, rtol=1e-5)
    assert batch.scores.unique().numel() == 5  # the rows really differ, so order mix-ups would show


def test_score_is_read_at_the_final_eos(scorer):
    """The Llama 2 answer ends with EOS; the score must be read there, not at the token before it."""
    ids, _ = encode_prompt_response(scorer.tokenizer, PROMPTS[0], RESPONSES[0], "llama2")
    assert ids[-1] == scorer.tokenizer.eos_token_id
    hidden = scorer.model.model(input_ids=torch.tensor([ids])).last_hidden_state
    at_eos, before_eos = scorer.model.score(hidden[0, -1]).item(), scorer.model.score(hidden[0, -2]).item()
    got = scorer.score(PROMPTS[:1], RESPONSES[:1]).scores.item()
    assert got == pytest.approx(at_eos, abs=1e-5)
    assert abs(got - before_eos) > 1e-3


def test_batch_size_does_not_change_scores(tiny_rm, scorer):
    one = RewardScorer("builtin:tiny-llama", batch_size=1, model=tiny_rm).score(PROMPTS, RESPONSES)
    torch.testing.assert_close(one.scores, scorer.score(PROMPTS, RESPONSES).scores, atol=1e-5, rtol=1e-5)


def test_saved_checkpoint_reloads_with_the_same_scores(tmp_path, scorer):
    scorer.model.save_pretrained(tmp_path, safe_serialization=True)
    scorer.tokenizer.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    reloaded = RewardScorer(str(tmp_path), batch_size=4)
    assert reloaded.model.config.pad_token_id == scorer.model.config.pad_token_id
    torch.testing.assert_close(reloaded.score(PROMPTS, RESPONSES).scores, scorer.score(PROMPTS, RESPONSES).scores)


def test_empty_and_mismatched_inputs(scorer):
    assert scorer.score([], []).scores.shape == (0,)
    with pytest.raises(ValueError, match="2 prompts and 1 responses"):
        scorer.score(PROMPTS[:2], RESPONSES[:1])


class _StubTokenizer:
    """pad == eos, as SmolLM2-Instruct ships (<|im_end|>), with a distinct unk and bos."""

    def __init__(self, pad, eos, unk, bos):
        self.pad_token_id, self.eos_token_id, self.unk_token_id, self.bos_token_id = pad, eos, unk, bos

    def convert_tokens_to_ids(self, token):
        return self.unk_token_id


def test_reward_pad_token_avoids_end_tokens():
    assert reward_pad_token_id(_StubTokenizer(pad=0, eos=3, unk=1, bos=2)) == 0
    assert reward_pad_token_id(_StubTokenizer(pad=2, eos=2, unk=0, bos=1)) == 0
    assert reward_pad_token_id(_StubTokenizer(pad=2, eos=2, unk=None, bos=1)) == 1
    with pytest.raises(RecipeError, match="last real token"):
        reward_pad_token_id(_StubTokenizer(pad=2, eos=2, unk=None, bos=None))


def test_score_offset_in_the_config_shifts_scores_and_survives_a_reload(tmp_path, tiny_rm, scorer):
    base = scorer.score(PROMPTS, RESPONSES).scores
    tiny_rm.config.score_offset = 1.5
    try:
        shifted = scorer.score(PROMPTS, RESPONSES)
        torch.testing.assert_close(shifted.scores, base + 1.5)
        torch.testing.assert_close(shifted.probs, torch.sigmoid(base + 1.5))
        tiny_rm.save_pretrained(tmp_path, safe_serialization=True)
        scorer.tokenizer.save_pretrained(tmp_path)
        torch.testing.assert_close(RewardScorer(str(tmp_path)).score(PROMPTS, RESPONSES).scores, base + 1.5)
    finally:
        tiny_rm.config.score_offset = 0.0


def test_max_length_scores_the_last_tokens_only(tiny_rm, scorer):
    short = RewardScorer("builtin:tiny-llama", batch_size=2, model=tiny_rm, max_length=6)
    got = short.score(PROMPTS, RESPONSES).scores
    expected = []
    for messages, response in zip(PROMPTS, RESPONSES):
        ids, _ = encode_prompt_response(scorer.tokenizer, messages, response, "llama2")
        hidden = tiny_rm.model(input_ids=torch.tensor([ids[-6:]])).last_hidden_state
        expected.append(tiny_rm.score(hidden[0, -1]).item())
    torch.testing.assert_close(got, torch.tensor(expected))
    assert not torch.allclose(got, scorer.score(PROMPTS, RESPONSES).scores)


def test_a_saved_training_window_applies_to_every_scorer_that_loads_the_model(tiny_rm, tmp_path):
    """PPO, rejection sampling and evaluation build scorers without max_length: the RM's own window applies."""
    windowed = RewardScorer("builtin:tiny-llama", batch_size=2, model=tiny_rm, max_length=6)
    expected = windowed.score(PROMPTS, RESPONSES).scores
    tiny_rm.save_pretrained(tmp_path)
    windowed.tokenizer.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "training_max_length": 6}))
    reloaded = RewardScorer(str(tmp_path), batch_size=2)
    assert reloaded.max_length == 6
    torch.testing.assert_close(reloaded.score(PROMPTS, RESPONSES).scores, expected)
    assert RewardScorer(str(tmp_path), batch_size=2, max_length=9).max_length == 9  # an explicit window wins
