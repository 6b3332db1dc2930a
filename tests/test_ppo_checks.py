"""PPO data, validation, best-policy and reward-window checks (issue 11): each failed on the code before its fix."""

import json
import random
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import rlhf.ppo
from alignment.config import RecipeError
from alignment.models import load_tokenizer
from reward.scoring import ScoreBatch, load_reward_model
from rlhf.ppo import BEST_POLICY, latest_checkpoint, load_ppo_prompts, prompt_indices, run_ppo
from rlhf.ppo_config import PPOConfig
from tests.test_ppo import PROMPTS, ConstantScorer, small_config


def _write_prompts(path: Path, texts: list[str]) -> str:
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": t}) + "\n" for i, t in enumerate(texts)))
    return str(path)


def _text(record) -> str:
    return record.messages[-1]["content"]


def test_heldout_prompts_are_split_by_prompt_text_and_never_trained_on(tmp_path):
    # The pipeline's PPO file repeats prompts (drawn with replacement): each of 40 texts appears 3 times.
    texts = [f"question number {i}?" for i in range(40)] * 3
    random.Random(1).shuffle(texts)
    config = PPOConfig(
        prompts_name=_write_prompts(tmp_path / "p.jsonl", texts),
        heldout_fraction=0.25,
        max_heldout_prompts=1000,
        seed=3,
    )
    train, heldout = load_ppo_prompts(config)
    held = {_text(p) for p in heldout}
    assert held and not held & {_text(p) for p in train}  # no held-out prompt is a training prompt
    assert len(heldout) == len(held)  # one evaluation per held-out prompt, not one per repeat
    assert len(train) + 3 * len(heldout) == 120
    # Stable: more rows and another order keep every old prompt on its side (the key is (seed, text) alone).
    more = texts[::-1] + [f"another question {i}?" for i in range(30)]
    config.prompts_name = _write_prompts(tmp_path / "more.jsonl", more)
    _, heldout_more = load_ppo_prompts(config)
    assert {_text(p) for p in heldout_more if _text(p) in set(texts)} == held
    config.seed = 4
    assert {_text(p) for p in load_ppo_prompts(config)[1]} != {_text(p) for p in heldout_more}


def test_vllm_sampling_is_rejected_until_weights_sync():
    with pytest.raises(RecipeError, match=r"^sampling_backend 'vllm' is not supported by PPO"):
        PPOConfig(sampling_backend="vllm").validate()


def test_prompt_order_shuffles_once_per_epoch(monkeypatch):
    shuffles = []
    real = random.Random.shuffle
    monkeypatch.setattr(random.Random, "shuffle", lambda self, x: (shuffles.append(len(x)), real(self, x))[1])
    rlhf.ppo.epoch_order.cache_clear()
    order = [prompt_indices(10, it, 4, seed=5) for it in range(5)]  # 20 positions: epochs 0 and 1
    assert shuffles == [10, 10]  # one shuffle per epoch, not one per rollout
    flat = sum(order, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))
    rlhf.ppo.epoch_order.cache_clear()
    assert prompt_indices(10, 3, 4, seed=5) == order[3]  # a resumed run, cache empty, reads the same prompts
    # The same order as the earlier per-rollout shuffles: a resumed old run continues on the same prompts.
    expected = list(range(10))
    random.Random(5 * 1_000_003 + 1).shuffle(expected)
    assert flat[10:20] == expected


class Killed(Exception):
    pass


class RisingScorer:
    """Every call scores higher than the last: each held-out evaluation is a new best."""

    def __init__(self):
        self.calls = 0

    def score(self, prompts, responses):
        self.calls += 1
        scores = torch.full((len(responses),), float(self.calls))
        return ScoreBatch(scores, torch.sigmoid(scores))


def test_a_kill_after_a_new_best_never_splits_the_best_policy_from_its_iteration(tmp_path, monkeypatch):
    config = small_config(tmp_path, num_iterations=4, eval_every=1, early_stopping_patience=0, keep_checkpoints=10)
    real = rlhf.ppo.save_checkpoint
    killed = []

    def save_then_maybe_die(accelerator, output_dir, state, keep, **kwargs):
        improved = state["best_iteration"] == state["iteration"] and state["iteration"] >= 2
        if improved and not killed:
            killed.append(state["iteration"])
            raise Killed  # after the new best policy was written, before this iteration's checkpoint
        return real(accelerator, output_dir, state, keep, **kwargs)

    monkeypatch.setattr(rlhf.ppo, "save_checkpoint", save_then_maybe_die)
    with pytest.raises(Killed):
        run_ppo(
            config,
            helpfulness_scorer=RisingScorer(),
            safety_scorer=ConstantScorer(3.0),
            prompts=PROMPTS,
            heldout_prompts=PROMPTS[:2],
        )
    out = Path(config.output_dir)
    last = latest_checkpoint(out)
    state = json.loads((last / "trainer_state.json").read_text())
    assert state["iteration"] == 1 and state["best_iteration"] == 1
    # The best policy that a resume reads is the policy of the checkpoint's own best_iteration.
    best = load_file(str(last / BEST_POLICY))
    if state["best_iteration"] == 0:
        from alignment.models import load_causal_lm

        expected = load_causal_lm("builtin:tiny-llama").state_dict()
    else:
        checkpoint = out / "checkpoints" / f"iteration-{state['best_iteration']:06d}"
        expected = load_file(str(checkpoint / "model.safetensors"))
    assert set(best) <= set(expected) | {"lm_head.weight"}
    for name, value in best.items():
        tied = expected.get("model.embed_tokens.weight")
        torch.testing.assert_close(value, expected.get(name, tied), rtol=0, atol=0)
    monkeypatch.setattr(rlhf.ppo, "save_checkpoint", real)
    summary = run_ppo(
        config,
        helpfulness_scorer=RisingScorer(),
        safety_scorer=ConstantScorer(3.0),
        prompts=PROMPTS,
        heldout_prompts=PROMPTS[:2],
    )
    assert killed == [2] and summary["iterations"] == 4 and summary["best_iteration"] == 4


def test_reward_models_score_only_their_training_window(tmp_path):
    """PPO's scorers apply the window the RM stored at training (`training_max_length`), as every scorer does."""
    rm = tmp_path / "rm"
    model = load_reward_model("builtin:tiny-llama")
    model.config.training_max_length = 6
    model.save_pretrained(rm)
    load_tokenizer("builtin:tiny-llama").save_pretrained(rm)
    assert rlhf.ppo.build_scorer(str(rm), "helpfulness", PPOConfig()).max_length == 6
    plain = load_reward_model("builtin:tiny-llama")
    plain.save_pretrained(tmp_path / "plain")
    load_tokenizer("builtin:tiny-llama").save_pretrained(tmp_path / "plain")
    scorer = rlhf.ppo.build_scorer(str(tmp_path / "plain"), "safety", PPOConfig())
    assert scorer.max_length == plain.config.max_position_embeddings  # no stored window: the context
