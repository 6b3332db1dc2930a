"""The PPO speed-ups (issue 18) keep the maths: each exact one gives the same losses as the plain run."""

import pytest
import torch

import rlhf.ppo
from alignment.chat import encode_prompt
from alignment.logprobs import target_logprobs
from alignment.models import causal_attention_mask, load_causal_lm, load_tokenizer
from rlhf.ppo import (
    LogprobSamplingEngine,
    collate_rollouts,
    generate_and_score,
    run_ppo,
    sample_tokens,
    token_logprobs,
)
from rlhf.ppo_config import PPOConfig
from rlhf.sampling import Sample, SamplingParams
from tests.test_ppo import PROMPTS, ConstantScorer, DigitScorer, small_config


def test_logprobs_from_the_sampling_pass_equal_a_second_forward():
    model = load_causal_lm("builtin:tiny-llama").eval()
    tokenizer = load_tokenizer("builtin:tiny-llama")
    prompt_ids = [encode_prompt(tokenizer, p.messages, "llama2") for p in PROMPTS]
    engine = LogprobSamplingEngine(model, tokenizer, batch_size=3)  # two chunks, left-padded differently
    samples = engine.generate(prompt_ids, SamplingParams(temperature=0.7, top_p=1.0, max_new_tokens=8, seed=1))
    input_ids, attention_mask, response_mask = collate_rollouts(samples, tokenizer.pad_token_id)
    with torch.no_grad():
        expected = token_logprobs(model, input_ids, attention_mask, temperature=0.7)
    for row, sample in enumerate(samples):
        got = engine.logprobs[sample.prompt_index]
        assert got.shape == (len(sample.response_ids),)
        # Cached decoding vs one full forward: the same weights, so only kernel noise apart.
        torch.testing.assert_close(got, expected[row][response_mask[row]], rtol=0, atol=1e-5)


def _rollout_rows():
    """Three right-padded prompt + response rows of different lengths, and their response positions."""
    samples = [
        Sample(0, 0, [2, 40, 41, 42], [50, 51, 3], "", True),
        Sample(1, 0, [2, 60], [70, 71, 72, 73], "", False),
        Sample(2, 0, [2, 80, 81, 82, 83], [90], "", True),
    ]
    return collate_rollouts(samples, pad_id=0)


@pytest.mark.parametrize("use_lora", [False, True])
def test_the_lm_head_on_response_positions_only_equals_the_whole_model_call(monkeypatch, use_lora):
    torch.manual_seed(0)
    model = load_causal_lm("builtin:tiny-llama").eval()
    if use_lora:
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(model, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    input_ids, attention_mask, positions = _rollout_rows()

    def run():
        model.zero_grad(set_to_none=True)
        logprobs, entropy = token_logprobs(
            model, input_ids, attention_mask, 0.7, with_entropy=True, positions=positions
        )
        (logprobs * torch.arange(logprobs.numel()).view_as(logprobs)).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logprobs.detach(), entropy, grads

    assert rlhf.ppo._decoder_and_head(model) is not None
    split = run()
    monkeypatch.setattr(rlhf.ppo, "_decoder_and_head", lambda model: None)  # the whole-model call
    whole = run()
    torch.testing.assert_close(split[0], whole[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(split[1], whole[1], rtol=0, atol=1e-6)
    assert split[2].keys() == whole[2].keys() and split[2]
    for name in split[2]:
        torch.testing.assert_close(split[2][name], whole[2][name], rtol=1e-5, atol=1e-6)
    assert (split[0][~positions] == 0).all() and (split[0][positions] < 0).all()


def test_target_logprobs_and_their_gradient_against_log_softmax():
    generator = torch.Generator().manual_seed(0)
    logits = (torch.randn(6, 9, generator=generator, dtype=torch.float64) * 4).requires_grad_()
    targets = torch.tensor([0, 8, 3, 3, 5, 1])
    weights = torch.randn(6, generator=generator, dtype=torch.float64)
    logprobs, entropy = target_logprobs(logits, targets, with_entropy=True)
    (logprobs * weights).sum().backward()
    reference = logits.detach().clone().requires_grad_()
    log_softmax = torch.log_softmax(reference, dim=-1)
    (log_softmax.gather(1, targets[:, None]).squeeze(1) * weights).sum().backward()
    torch.testing.assert_close(logprobs.detach(), log_softmax.gather(1, targets[:, None]).squeeze(1).detach())
    torch.testing.assert_close(entropy, -(log_softmax.exp() * log_softmax).sum(-1).detach())
    torch.testing.assert_close(logits.grad, reference.grad)
    assert not entropy.requires_grad
    assert target_logprobs(logits, targets)[1] is None
    assert torch.autograd.gradcheck(lambda z: target_logprobs(z, targets)[0], (logits.detach().requires_grad_(),))


def test_right_padded_rows_run_without_a_padding_mask_and_give_the_same_outputs():
    model = load_causal_lm("builtin:tiny-llama").eval()
    input_ids, attention_mask, _ = _rollout_rows()
    assert causal_attention_mask(attention_mask) is None
    left = attention_mask.flip(-1)
    assert causal_attention_mask(left) is left  # left padding needs its mask
    with torch.no_grad():
        masked = model(input_ids=input_ids, attention_mask=attention_mask).logits
        causal = model(input_ids=input_ids).logits
    real = attention_mask.bool()
    torch.testing.assert_close(masked[real], causal[real], rtol=0, atol=1e-6)


def _losses(tmp_path, name, **overrides):
    rows = []
    config = small_config(tmp_path / name, num_iterations=3, **overrides)
    run_ppo(
        config,
        helpfulness_scorer=DigitScorer(),
        safety_scorer=ConstantScorer(3.0),
        prompts=PROMPTS,
        heldout_prompts=[],
        on_iteration_end=lambda it, m: rows.append(m),
    )
    return [r[key] for r in rows for key in ("policy_loss", "value_loss", "approx_kl", "kl", "reward/combined")]


def test_a_seeded_run_gives_the_same_losses_with_each_optimisation(tmp_path, monkeypatch):
    plain = _losses(tmp_path, "plain")
    # A checkpoint every 2 iterations instead of every one: nothing in the maths reads the checkpoint.
    assert _losses(tmp_path, "every2", save_every=2) == plain
    # Short-sequence attention by batched matmuls against SDPA's kernels everywhere.
    assert plain == pytest.approx(_losses(tmp_path, "sdpa", short_causal_attention=False), abs=1e-5)
    # RMSNorm's written-out backward against autograd's.
    assert plain == pytest.approx(_losses(tmp_path, "norm", fast_rms_norm=False), abs=1e-5)
    # pi_old from the sampling pass, against the same samples with pi_old from a second forward pass.
    sampled = _losses(tmp_path, "sampled", logprobs_from_sampling=True)
    real = rlhf.ppo.forward_rollouts

    def second_forward(models, batch, config, clock=None):
        batch.logprobs = None
        return real(models, batch, config, clock)

    monkeypatch.setattr(rlhf.ppo, "forward_rollouts", second_forward)
    assert sampled == pytest.approx(_losses(tmp_path, "recomputed", logprobs_from_sampling=True), abs=1e-5)


def test_sampled_tokens_follow_the_distribution():
    p = torch.tensor([0.1, 0.0, 0.2, 0.3, 0.4])
    torch.manual_seed(0)
    draws = sample_tokens((p * 7.0).expand(200_000, 5))  # unnormalised weights
    share = torch.bincount(draws, minlength=5).double() / draws.numel()
    assert share[1] == 0.0  # probability 0 is never drawn
    # Standard error of each share is at most sqrt(0.25 / 200000) = 0.0011; 5 of them allowed.
    torch.testing.assert_close(share, p.double(), rtol=0, atol=0.0056)


def test_sampled_tokens_follow_the_distribution_across_blocks():
    # 70 tokens: three blocks of 32 (the last one padded), a whole block of zeros, zeros at the block edges.
    generator = torch.Generator().manual_seed(3)
    weights = torch.rand(70, generator=generator)
    weights[32:64] = 0.0
    weights[[0, 31, 64, 69]] = 0.0
    weights[5] = 3.0  # one heavy token
    p = (weights / weights.sum()).double()
    torch.manual_seed(0)
    draws = sample_tokens(weights.expand(400_000, 70))
    share = torch.bincount(draws, minlength=70).double() / draws.numel()
    assert share[p == 0].sum() == 0.0
    # Each share's standard error is at most sqrt(p (1 - p) / 400000) <= 0.0008; 5 of them allowed.
    torch.testing.assert_close(share, p, rtol=0, atol=5 * float((p * (1 - p) / 400_000).sqrt().max()))


def test_one_checkpoint_for_both_reward_models_is_scored_once():
    model = load_causal_lm("builtin:tiny-llama").eval()
    tokenizer = load_tokenizer("builtin:tiny-llama")
    engine = LogprobSamplingEngine(model, tokenizer)
    prompt_ids = [encode_prompt(tokenizer, p.messages, "llama2") for p in PROMPTS]
    config = PPOConfig(max_new_tokens=6, temperature=1.0)
    shared = DigitScorer()  # counts its calls
    once = generate_and_score(engine, tokenizer, PROMPTS, prompt_ids, (shared, shared), config, seed=2)
    twice = generate_and_score(engine, tokenizer, PROMPTS, prompt_ids, (DigitScorer(), DigitScorer()), config, seed=2)
    assert shared.calls == 1
    for name in ("helpfulness", "safety", "combined", "use_safety"):
        assert torch.equal(getattr(once, name), getattr(twice, name)), name


def test_logprobs_from_sampling_refuses_bf16():
    from alignment.config import RecipeError

    with pytest.raises(RecipeError, match="logprobs_from_sampling needs bf16: false"):
        PPOConfig(logprobs_from_sampling=True, bf16=True).validate()


# Losses of `_losses(..., "plain")` on the code before the speed-ups (PPOTrainer commit, every row padded to the
# batch width, log-softmax and entropy over every position): the speed-ups that claim to be exact must keep them.
# Re-recorded when the world's tokenizer texts gained the safety preprompts (issue 15): commit 92d63a6^ run in a
# worktree with LLAMA2_ALIGN_CACHE holding the new builtin:tiny-llama build as its `tiny-llama`.
BEFORE_SPEEDUPS = [
    (0.0012473613023757935, 0.49754611402750015, 0.0003587366081774235, 0.0, 0.75),
    (0.0018224269151687622, 0.20643330458551645, 0.00037529924884438515, 0.2506530284881592, 0.7833333350718021),
    (-0.0026115477085113525, 0.08852796233259141, 0.00029379531770246103, -0.04056626558303833, 0.7794117648154497),
]


def test_a_seeded_run_keeps_the_losses_from_before_the_speedups(tmp_path):
    assert _losses(tmp_path, "now") == pytest.approx([x for row in BEFORE_SPEEDUPS for x in row], abs=1e-5)


class Killed(Exception):
    pass


def test_a_checkpoint_every_two_iterations_keeps_the_resume_guarantee(tmp_path):
    from safetensors.torch import load_file

    from rlhf.ppo import latest_checkpoint

    whole = small_config(tmp_path / "whole", num_iterations=4, save_every=2)
    run_ppo(
        whole, helpfulness_scorer=DigitScorer(), safety_scorer=ConstantScorer(3.0), prompts=PROMPTS, heldout_prompts=[]
    )
    config = small_config(tmp_path / "killed", num_iterations=4, save_every=2)

    def kill(iteration, metrics):
        if iteration == 3:
            raise Killed  # after iteration 3, which wrote no checkpoint

    with pytest.raises(Killed):
        run_ppo(
            config,
            helpfulness_scorer=DigitScorer(),
            safety_scorer=ConstantScorer(3.0),
            prompts=PROMPTS,
            heldout_prompts=[],
            on_iteration_end=kill,
        )
    assert latest_checkpoint(tmp_path / "killed" / "ppo").name == "iteration-000002"
    seen = []
    run_ppo(
        config,
        helpfulness_scorer=DigitScorer(),
        safety_scorer=ConstantScorer(3.0),
        prompts=PROMPTS,
        heldout_prompts=[],
        on_iteration_end=lambda it, m: seen.append(it),
    )
    assert seen == [3, 4]  # iteration 3 is redone from the iteration-2 checkpoint
    a = load_file(str(tmp_path / "whole" / "ppo" / "model.safetensors"))
    b = load_file(str(tmp_path / "killed" / "ppo" / "model.safetensors"))
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=1e-6)
