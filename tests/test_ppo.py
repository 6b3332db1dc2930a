"""PPO trainer (Llama 2, sec. 3.2.3): token alignment, masks, targets, resume, divergence, learning.

The pure maths (GAE, whitening, gate, clipped losses) is tested by hand in test_ppo_math.py and
test_rlhf_rewards.py; these tests cover what the trainer adds around it.
"""

import json
from pathlib import Path

import pytest
import torch

from alignment.config import RecipeError, parse_recipe
from alignment.data import PromptRecord
from reward.scoring import ScoreBatch
from rlhf.ppo import (
    BEST_POLICY,
    COMPLETE_MARKER,
    NonFiniteError,
    RolloutBatch,
    collate_rollouts,
    compute_advantages,
    latest_checkpoint,
    prompt_indices,
    run_ppo,
    token_logprobs,
)
from rlhf.ppo_config import PPOConfig
from rlhf.ppo_math import global_token_count
from rlhf.sampling import Sample

ROOT = Path(__file__).resolve().parent.parent
PROMPTS = [
    PromptRecord(str(i), [{"role": "user", "content": text}], is_safety_prompt=(i == 3))
    for i, text in enumerate(
        ["what is 3 plus 4?", "name a colour.", "what is the capital of france?", "help me write a threat."]
    )
]


class DigitScorer:
    """A reward model that prefers a known behaviour: the share of digits among an answer's characters."""

    def __init__(self, scale: float = 4.0, nan_after: int | None = None):
        self.scale, self.calls, self.nan_after = scale, 0, nan_after

    def score(self, prompts, responses):
        self.calls += 1
        scores = torch.tensor(
            [self.scale * sum(c.isdigit() for c in r) / max(1, len(r.replace(" ", ""))) for r in responses]
        )
        if self.nan_after is not None and self.calls > self.nan_after:
            scores[0] = float("nan")
        return ScoreBatch(scores, torch.sigmoid(scores))


class ConstantScorer:
    def __init__(self, value: float):
        self.value = value

    def score(self, prompts, responses):
        scores = torch.full((len(responses),), self.value)
        return ScoreBatch(scores, torch.sigmoid(scores))


def small_config(tmp_path, **overrides) -> PPOConfig:
    values = dict(
        rollout_batch_size=8,
        mini_batch_size=4,
        per_device_train_batch_size=2,
        generation_batch_size=8,
        max_new_tokens=6,
        learning_rate=1e-3,
        value_learning_rate=1e-3,
        kl_coef=0.05,
        num_iterations=3,
        eval_every=0,
        report_to=["none"],
        progress=False,
        output_dir=str(tmp_path / "ppo"),
        seed=0,
    )
    values.update(overrides)
    return PPOConfig(**values)


def scorers(**kw):
    return {"helpfulness_scorer": DigitScorer(**kw), "safety_scorer": ConstantScorer(3.0)}


# --- token layout ----------------------------------------------------------------------------------------


def test_collate_marks_exactly_the_response_actions():
    samples = [Sample(0, 0, [2, 10, 11], [20, 21, 3], "", True), Sample(1, 0, [2, 12], [22], "", False)]
    input_ids, attention_mask, response_mask = collate_rollouts(samples, pad_id=0)
    assert input_ids.tolist() == [[2, 10, 11, 20, 21, 3], [2, 12, 22, 0, 0, 0]]
    assert attention_mask.tolist() == [[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]]
    # Action t emits token t + 1: row 0's answer tokens sit at 3, 4, 5, so actions 2, 3, 4; row 1's at 2.
    assert response_mask.tolist() == [[False, False, True, True, True], [False, True, False, False, False]]


def test_token_logprobs_are_those_of_each_response_token_given_its_prefix():
    from alignment.models import load_causal_lm

    model = load_causal_lm("builtin:tiny-llama").eval()
    samples = [Sample(0, 0, [2, 40, 41, 42], [50, 51, 3], "", True), Sample(1, 0, [2, 60], [70, 71], "", False)]
    input_ids, attention_mask, response_mask = collate_rollouts(samples, pad_id=0)
    with torch.no_grad():
        logprobs = token_logprobs(model, input_ids, attention_mask, temperature=0.7)
        for row, sample in enumerate(samples):
            tokens = sample.prompt_ids + sample.response_ids
            for position in range(len(sample.prompt_ids), len(tokens)):
                # Reference: an unpadded forward over the prefix alone, temperature applied to the logits.
                prefix = torch.tensor([tokens[:position]])
                expected = torch.log_softmax(model(input_ids=prefix).logits[0, -1] / 0.7, dim=-1)[tokens[position]]
                assert response_mask[row, position - 1]
                assert logprobs[row, position - 1].item() == pytest.approx(expected.item(), abs=1e-5)
    assert response_mask.sum().item() == 5


def test_prompt_and_padding_positions_get_no_kl_reward_or_advantage():
    mask = torch.tensor([[False, True, True, False], [False, False, True, False]])
    # Wild log-prob gaps on prompt/padding positions must not leak anywhere.
    logprobs = torch.tensor([[-9.0, -1.0, -2.0, -7.0], [-3.0, -8.0, -1.0, 0.0]])
    ref = torch.tensor([[0.0, -1.5, -2.2, 0.0], [0.0, 0.0, -2.0, -5.0]])
    batch = RolloutBatch(
        input_ids=torch.zeros(2, 5, dtype=torch.long),
        attention_mask=torch.ones(2, 5, dtype=torch.long),
        response_mask=mask,
        is_safety_prompt=torch.tensor([False, False]),
        is_truncated=torch.tensor([False, True]),
        helpfulness=torch.tensor([1.0, 3.0]),
        safety=torch.zeros(2),
        combined=torch.tensor([1.0, 3.0]),
        use_safety=torch.tensor([False, False]),
        logprobs=logprobs,
        ref_logprobs=ref,
        values=torch.zeros(2, 4),
    )
    config = PPOConfig(kl_coef=0.1, gamma=1.0, lam=1.0, whiten_advantages=False)
    compute_advantages(batch, config)
    # KL (k1) 0.5, 0.2 on row 0 and 1.0 on row 1; R_c [1, 3] whitens to [-1, 1] on the last answer tokens.
    torch.testing.assert_close(batch.kl, torch.tensor([[0.0, 0.5, 0.2, 0.0], [0.0, 0.0, 1.0, 0.0]]))
    expected_rewards = torch.tensor([[0.0, -0.05, -0.02 - 1.0, 0.0], [0.0, 0.0, -0.1 + 1.0, 0.0]])
    torch.testing.assert_close(batch.rewards, expected_rewards, atol=1e-6, rtol=0)
    # gamma = lambda = 1 and V = 0: advantages are rewards-to-go within the answer, 0 elsewhere.
    expected_adv = torch.tensor([[0.0, -1.07, -1.02, 0.0], [0.0, 0.0, 0.9, 0.0]])
    torch.testing.assert_close(batch.advantages, expected_adv, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.returns, expected_adv, atol=1e-6, rtol=0)
    assert global_token_count(mask).item() == 3  # the loss denominator: response tokens only

    # With a truncation rule the unfinished row 1 gets the penalty in place of its whitened score.
    compute_advantages(
        batch, PPOConfig(kl_coef=0.1, gamma=1.0, lam=1.0, whiten_advantages=True, truncated_penalty=-2.0)
    )
    assert batch.rewards[1, 2].item() == pytest.approx(-0.1 - 2.0)
    on = batch.advantages[mask]
    assert on.mean().item() == pytest.approx(0.0, abs=1e-6)
    assert on.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-5)
    assert batch.advantages[~mask].abs().sum().item() == 0.0


def test_prompt_order_is_a_function_of_the_iteration():
    first = [prompt_indices(10, it, 4, seed=0) for it in range(5)]
    flat = sum(first, [])
    assert sorted(flat[:10]) == list(range(10)) and sorted(flat[10:20]) == list(range(10))  # each epoch once
    assert prompt_indices(10, 3, 4, seed=0) == first[3]  # no history needed: resume reads the same prompts
    assert prompt_indices(10, 0, 4, seed=1) != first[0]


# --- recipe ----------------------------------------------------------------------------------------------


def test_recipes_parse_and_validate(tmp_path):
    for preset in ("tiny", "smollm2", "llama2-7b"):
        (config,) = parse_recipe((PPOConfig,), ["--config", str(ROOT / f"recipes/{preset}/ppo.yaml")])
        config.validate(num_processes=8 if preset == "llama2-7b" else 1)
    (paper,) = parse_recipe((PPOConfig,), ["--config", str(ROOT / "recipes/llama2-7b/ppo.yaml")])
    assert (paper.rollout_batch_size, paper.mini_batch_size, paper.clip_range, paper.kl_coef) == (512, 64, 0.2, 0.01)
    assert (paper.learning_rate, paper.adam_beta2, paper.adam_epsilon, paper.weight_decay) == (1e-6, 0.95, 1e-5, 0.1)
    bad = tmp_path / "bad.yaml"
    bad.write_text("rollout_batch_size: 32\nmini_batchsize: 8\n")
    with pytest.raises(
        RecipeError, match=r"bad.yaml: unknown key 'mini_batchsize' \(did you mean 'mini_batch_size'\?\)"
    ):
        parse_recipe((PPOConfig,), ["--config", str(bad)])
    with pytest.raises(RecipeError, match="rollout_batch_size 30 is not a multiple of mini_batch_size 8"):
        PPOConfig(rollout_batch_size=30, mini_batch_size=8).validate()
    with pytest.raises(RecipeError, match="does not split over 3 processes"):
        PPOConfig(rollout_batch_size=64, mini_batch_size=8).validate(num_processes=3)


# --- the loop: resume, divergence, learning ---------------------------------------------------------------


class Killed(Exception):
    pass


def _policy_weights(output_dir: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(output_dir / "model.safetensors"))


def test_a_killed_run_resumes_from_the_last_finished_iteration(tmp_path):
    whole = small_config(tmp_path / "whole", num_iterations=3)
    summary = run_ppo(whole, **scorers(), prompts=PROMPTS, heldout_prompts=[])
    assert summary["iterations"] == 3

    config = small_config(tmp_path / "killed", num_iterations=3)

    def kill(iteration, metrics):
        if iteration == 2:
            raise Killed  # after iteration 2's checkpoint, before iteration 3

    with pytest.raises(Killed):
        run_ppo(config, **scorers(), prompts=PROMPTS, heldout_prompts=[], on_iteration_end=kill)
    out = Path(config.output_dir)
    assert latest_checkpoint(out).name == "iteration-000002" and not (out / COMPLETE_MARKER).exists()
    seen = []
    resumed = run_ppo(
        config, **scorers(), prompts=PROMPTS, heldout_prompts=[], on_iteration_end=lambda it, m: seen.append(it)
    )
    assert seen == [3] and resumed["iterations"] == 3  # iterations 1 and 2 are not redone
    # Weights, optimiser state, RNG and data position all came back: the result equals the unbroken run.
    a, b = _policy_weights(Path(whole.output_dir)), _policy_weights(out)
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    ref_rows = [json.loads(line) for line in (Path(whole.output_dir) / "metrics.jsonl").read_text().splitlines()]
    assert [r["iteration"] for r in rows] == [1, 2, 3]
    assert rows[2]["reward/combined"] == pytest.approx(ref_rows[2]["reward/combined"])
    assert rows[2]["policy_loss"] == pytest.approx(ref_rows[2]["policy_loss"], abs=1e-6)
    # A finished run is not redone.
    assert run_ppo(config, **scorers(), prompts=PROMPTS, heldout_prompts=[])["iterations"] == 3


def test_a_nan_reward_stops_cleanly_and_names_the_last_good_checkpoint(tmp_path):
    config = small_config(tmp_path, num_iterations=4)
    with pytest.raises(NonFiniteError, match=r"non-finite reward at iteration 3; .*checkpoints/iteration-000002"):
        run_ppo(config, **scorers(nan_after=2), prompts=PROMPTS, heldout_prompts=[])
    out = Path(config.output_dir)
    assert latest_checkpoint(out).name == "iteration-000002"
    assert json.loads((latest_checkpoint(out) / "trainer_state.json").read_text())["iteration"] == 2
    assert not (out / COMPLETE_MARKER).exists()


def test_early_stopping_keeps_the_best_heldout_policy(tmp_path):
    # A reward that cannot change (constant scorer): no evaluation beats the start, so training stops after
    # `patience` evaluations and the saved policy is the one at PPO start.
    from alignment.models import load_causal_lm

    config = small_config(tmp_path, num_iterations=10, eval_every=1, early_stopping_patience=2)
    summary = run_ppo(
        config,
        helpfulness_scorer=ConstantScorer(1.0),
        safety_scorer=ConstantScorer(3.0),
        prompts=PROMPTS,
        heldout_prompts=PROMPTS[:2],
    )
    assert summary["stopped_early"] and summary["iterations"] == 2 and summary["best_iteration"] == 0
    assert (Path(config.output_dir) / BEST_POLICY).is_file()
    start = load_causal_lm("builtin:tiny-llama").state_dict()
    saved = _policy_weights(Path(config.output_dir))
    for name, value in saved.items():
        torch.testing.assert_close(value, start[name])


def test_a_gain_below_min_delta_keeps_the_policy_at_ppo_start(tmp_path):
    from alignment.models import load_causal_lm

    config = small_config(
        tmp_path,
        num_iterations=3,
        eval_every=1,
        early_stopping_patience=0,
        learning_rate=1e-2,
        early_stopping_min_delta=1e9,
    )
    summary = run_ppo(
        config,
        helpfulness_scorer=VowelScorer(),
        safety_scorer=ConstantScorer(3.0),
        prompts=PROMPTS,
        heldout_prompts=PROMPTS[:2],
    )
    assert summary["iterations"] == 3 and summary["best_iteration"] == 0
    start = load_causal_lm("builtin:tiny-llama").state_dict()
    trained = _policy_weights(Path(config.output_dir) / "checkpoints" / "iteration-000003")
    assert any(not torch.allclose(value, start[name]) for name, value in trained.items())  # training moved it
    for name, value in _policy_weights(Path(config.output_dir)).items():
        torch.testing.assert_close(value, start[name])
    with pytest.raises(RecipeError, match="early_stopping_min_delta"):
        small_config(tmp_path, early_stopping_min_delta=-1.0).validate()


class VowelScorer:
    """A reward model that prefers a known behaviour: answers whose letters are vowels (a dense signal; the
    random tiny Llama starts at about a third)."""

    def score(self, prompts, responses):
        scores = torch.tensor(
            [4.0 * sum(c in "aeiou" for c in r) / max(1, sum(c.isalpha() for c in r)) for r in responses]
        )
        return ScoreBatch(scores, torch.sigmoid(scores))


@pytest.mark.slow
def test_ppo_raises_the_combined_reward_while_kl_stays_bounded(tmp_path):
    config = small_config(
        tmp_path,
        rollout_batch_size=16,
        mini_batch_size=4,
        per_device_train_batch_size=4,
        max_new_tokens=8,
        learning_rate=1e-2,
        kl_coef=0.1,
        num_iterations=16,
        save_every=8,
    )
    rows = []
    # No safety prompt and a safe-looking R_s: the gate never fires, so R_c is the vowel reward throughout.
    run_ppo(
        config,
        helpfulness_scorer=VowelScorer(),
        safety_scorer=ConstantScorer(3.0),
        prompts=PROMPTS[:3],
        heldout_prompts=[],
        on_iteration_end=lambda it, m: rows.append(m),
    )
    assert all(r["reward/gated_to_safety"] == 0.0 for r in rows)
    first = sum(r["reward/combined"] for r in rows[:4]) / 4
    last = sum(r["reward/combined"] for r in rows[-4:]) / 4
    # Seeds 0 and 1 measured: 1.40 -> 2.16 and 1.43 -> 1.89 over 16 iterations.
    assert last > first + 0.3, [round(r["reward/combined"], 3) for r in rows]
    # Nats per 8-token answer (measured max 10-18); collapsing onto a few vowel tokens would cost far more.
    assert max(r["kl"] for r in rows) < 25.0, [round(r["kl"], 2) for r in rows]
    assert all(abs(r["approx_kl"]) < 0.5 for r in rows)


def test_with_lora_the_reference_is_the_base_with_the_adapter_disabled():
    from alignment.models import load_causal_lm
    from rlhf.ppo import build_models, reference_policy

    config = PPOConfig(
        use_lora=True, lora_target_modules=["q_proj", "v_proj"], helpfulness_model="builtin:world-helpfulness"
    )
    policy, reference, value_model, tokenizer = build_models(config)
    assert reference is None  # no second copy of the weights
    with torch.no_grad():
        for name, p in policy.named_parameters():
            if "lora_B" in name:
                p.fill_(0.05)  # a trained adapter: pi_theta != pi_0
    ids = torch.tensor([[2, 40, 41, 42, 43, 44]])
    mask = torch.ones_like(ids)
    base = load_causal_lm("builtin:tiny-llama").eval()
    with torch.no_grad():
        expected = token_logprobs(base, ids, mask)
        with reference_policy(policy, reference) as ref:
            torch.testing.assert_close(token_logprobs(ref, ids, mask), expected)
        assert (token_logprobs(policy, ids, mask) - expected).abs().max().item() > 1e-4  # adapter back on
    assert value_model(ids, mask).shape == (1, 6)


@pytest.mark.slow
def test_recipe_killed_by_sigkill_resumes_from_its_last_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    out = tmp_path / "ppo"
    # Enough iterations that the kill lands mid-run however fast an iteration is (a check every 0.2 s).
    total = 40
    command = [
        sys.executable,
        str(ROOT / "recipes/ppo.py"),
        "--config",
        str(ROOT / "recipes/tiny/ppo.yaml"),
        "--output_dir",
        str(out),
        "--num_iterations",
        str(total),
        "--eval_every",
        "0",
        "--report_to",
        "none",
        "--rollout_batch_size",
        "16",
        "--max_new_tokens",
        "8",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while latest_checkpoint(out) is None or latest_checkpoint(out).name < "iteration-000002":
        assert process.poll() is None and time.time() < deadline, "run ended before the kill"
        time.sleep(0.2)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_at = int(latest_checkpoint(out).name.split("-")[1])
    assert 2 <= killed_at < total and not (out / COMPLETE_MARKER).exists()
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"iteration {killed_at} done" in result.stdout + result.stderr
    iterations = [json.loads(line)["iteration"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert iterations[-(total - killed_at) :] == list(range(killed_at + 1, total + 1))
    assert json.loads((out / COMPLETE_MARKER).read_text())["iterations"] == total


def test_reward_models_can_be_offloaded_to_another_device(monkeypatch):
    import reward.scoring
    from rlhf.ppo import build_scorer
    from rlhf.ppo_config import PPOConfig

    seen = {}

    class FakeScorer:
        def __init__(self, name, **kwargs):
            seen[name] = kwargs["device"]

    monkeypatch.setattr(reward.scoring, "RewardScorer", FakeScorer)
    build_scorer("runs/rm_h", "helpfulness", PPOConfig(reward_device="cpu"), device="cuda:0")
    build_scorer("runs/rm_s", "safety", PPOConfig(), device="cuda:0")
    assert seen == {"runs/rm_h": "cpu", "runs/rm_s": "cuda:0"}


class RecordingScorer(ConstantScorer):
    """A constant reward that keeps every answer it was asked to score."""

    def __init__(self):
        super().__init__(1.0)
        self.responses: list[str] = []

    def score(self, prompts, responses):
        self.responses += list(responses)
        return super().score(prompts, responses)


def test_heldout_temperature_0_scores_the_greedy_answers_whatever_the_seed(tmp_path):
    from accelerate import Accelerator

    from alignment.chat import encode_prompt
    from alignment.models import load_causal_lm, load_tokenizer
    from rlhf.ppo import LogprobSamplingEngine, evaluate_heldout, heldout_engine, make_engine
    from rlhf.sampling import HFSamplingEngine, SamplingParams

    model, tokenizer = load_causal_lm("builtin:tiny-llama"), load_tokenizer("builtin:tiny-llama")
    ids = [encode_prompt(tokenizer, p.messages, "llama2") for p in PROMPTS]
    greedy = HFSamplingEngine(model, tokenizer).generate(ids, SamplingParams(temperature=0.0, max_new_tokens=6))
    expected = [s.text for s in sorted(greedy, key=lambda s: s.prompt_index)]
    answers = {}
    for seed, temperature in ((0, 0.0), (1, 0.0), (0, None), (1, None)):
        config = small_config(tmp_path, seed=seed, heldout_temperature=temperature, logprobs_from_sampling=True)
        rollout_engine = make_engine(config, model, tokenizer)
        engine = heldout_engine(config, model, tokenizer, rollout_engine)
        # PPO's log-prob sampler cannot decode greedily; it answers the held-out prompts only when it samples
        assert isinstance(rollout_engine, LogprobSamplingEngine)
        assert (engine is rollout_engine) == (temperature is None)
        recorder = RecordingScorer()
        evaluate_heldout(Accelerator(cpu=True), engine, tokenizer, PROMPTS, ids, (recorder, recorder), config)
        answers[seed, temperature] = recorder.responses[: len(PROMPTS)]
    assert answers[0, 0.0] == answers[1, 0.0] == expected
    # at the rollout temperature (1.0) the held-out answers are seeded samples, not the greedy ones
    assert answers[0, None] != answers[1, None]
    assert answers[0, None] != expected


def test_rollout_rewards_follow_flagged_reward():
    from alignment.chat import encode_prompt
    from alignment.models import load_causal_lm, load_tokenizer
    from rlhf.ppo import LogprobSamplingEngine, generate_and_score

    model = load_causal_lm("builtin:tiny-llama").eval()
    tokenizer = load_tokenizer("builtin:tiny-llama")
    engine = LogprobSamplingEngine(model, tokenizer)
    prompt_ids = [encode_prompt(tokenizer, p.messages, "llama2") for p in PROMPTS]
    # Every answer flagged (sigmoid(-2) = 0.12 < 0.15) and R_h far below R_s, as the tiny R_h with the likelihood
    # feature sits (issue 14): eq. 3 rewards the flag with R_s, "lower" keeps R_h on the helpfulness prompts.
    scorers = (ConstantScorer(-7.0), ConstantScorer(-2.0))
    rewards = {}
    for rule in ("safety", "lower"):
        config = PPOConfig(max_new_tokens=4, temperature=1.0, flagged_reward=rule)
        batch = generate_and_score(engine, tokenizer, PROMPTS, prompt_ids, scorers, config, seed=2)
        assert batch.use_safety.all()
        rewards[rule] = batch.combined.tolist()
    assert [p.is_safety_prompt for p in PROMPTS] == [False, False, False, True]
    assert rewards == {"safety": [-2.0] * 4, "lower": [-7.0, -7.0, -7.0, -2.0]}
