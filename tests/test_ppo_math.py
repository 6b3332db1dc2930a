"""PPO maths: masked statistics, KL, GAE, clipped losses (Llama 2, sec. 3.2.3; Schulman et al. 2016/2017)."""

import math
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from rlhf.ppo_math import (
    entropy_from_logits,
    explained_variance,
    gae,
    kl_per_token,
    masked_mean,
    masked_moments,
    masked_var,
    masked_whiten,
    policy_loss,
    value_loss,
)


def test_masked_mean_and_var_ignore_masked_positions_even_when_not_finite():
    x = torch.tensor([[1.0, float("nan"), 3.0], [float("-inf"), 6.0, 2.0]])
    mask = torch.tensor([[True, False, True], [False, True, True]])
    # Values 1, 3, 6, 2: mean 3, biased variance (4 + 0 + 9 + 1) / 4 = 3.5, unbiased 14 / 3.
    assert masked_mean(x, mask).item() == pytest.approx(3.0)
    assert masked_var(x, mask).item() == pytest.approx(3.5)
    assert masked_var(x, mask, unbiased=True).item() == pytest.approx(14.0 / 3.0)
    assert masked_mean(x, mask, global_token_count=8).item() == pytest.approx(12.0 / 8.0)
    assert masked_mean(x, torch.zeros_like(mask)).item() == 0.0
    with pytest.raises(ValueError):
        masked_moments(x, torch.zeros_like(mask))


def test_masked_whiten_on_a_masked_tensor():
    x = torch.tensor([[0.0, 2.0, 4.0], [9.0, 6.0, 8.0]])
    mask = torch.tensor([[False, True, True], [False, True, True]])
    # Values 2, 4, 6, 8: mean 5, variance (9 + 1 + 1 + 9) / 4 = 5.
    s = 1.0 / math.sqrt(5.0 + 1e-8)
    torch.testing.assert_close(masked_whiten(x, mask), torch.tensor([[0.0, -3 * s, -1 * s], [0.0, 1 * s, 3 * s]]))


def test_kl_per_token_k1_and_k3_only_on_response_tokens():
    logprobs = torch.tensor([[-5.0, -1.0, -2.0, -0.5], [-7.0, -0.2, -3.0, float("-inf")]])
    ref = torch.tensor([[-1.0, -2.0, -1.0, -0.5], [-1.0, -0.2, -1.0, -3.0]])
    mask = torch.tensor([[False, True, True, True], [False, True, True, False]])  # prompt | response | pad
    e = math.e
    torch.testing.assert_close(
        kl_per_token(logprobs, ref, "k1", mask), torch.tensor([[0.0, 1.0, -1.0, 0.0], [0.0, 0.0, -2.0, 0.0]])
    )
    # k3 with r = exp(ref - lp): lp - ref = 1 -> e^-1 - 1 + 1 = e^-1; lp - ref = -1 -> e - 1 - 1 = e - 2;
    # lp - ref = -2 -> e^2 - 1 - 2.
    torch.testing.assert_close(
        kl_per_token(logprobs, ref, "k3", mask),
        torch.tensor([[0.0, 1.0 / e, e - 2.0, 0.0], [0.0, 0.0, e**2 - 3.0, 0.0]]),
    )
    with pytest.raises(ValueError):
        kl_per_token(logprobs, ref, "k9", mask)


def test_gae_by_hand_with_prompt_padding_and_rows_of_different_lengths():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    # Row 0: prompt at t=0, response t=1..3, padding t=4. Row 1: left-aligned response t=0..1, padding after.
    mask = torch.tensor([[False, True, True, True, False], [True, True, False, False, False]])
    rewards = torch.tensor([[9.0, 0.0, 0.0, 1.0, 9.0], [0.0, 2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    values = torch.tensor([[5.0, 0.5, 0.4, 0.3, 5.0], [1.0, 1.5, 7.0, 7.0, 7.0]], dtype=torch.float64)
    # Row 0, no bootstrap after t=3:
    #   t=3: delta = 1 + 0.9*0 - 0.3 = 0.7;              A = 0.7
    #   t=2: delta = 0 + 0.9*0.3 - 0.4 = -0.13;          A = -0.13 + 0.72*0.7 = 0.374
    #   t=1: delta = 0 + 0.9*0.4 - 0.5 = -0.14;          A = -0.14 + 0.72*0.374 = 0.12928
    # Row 1:
    #   t=1: delta = 2 + 0 - 1.5 = 0.5;                  A = 0.5
    #   t=0: delta = 0 + 0.9*1.5 - 1 = 0.35;             A = 0.35 + 0.72*0.5 = 0.71
    advantages, returns = gae(rewards, values, mask, gamma, lam)
    expected_adv = torch.tensor([[0.0, 0.12928, 0.374, 0.7, 0.0], [0.71, 0.5, 0.0, 0.0, 0.0]], dtype=torch.float64)
    expected_ret = torch.tensor([[0.0, 0.62928, 0.774, 1.0, 0.0], [1.71, 2.0, 0.0, 0.0, 0.0]], dtype=torch.float64)
    torch.testing.assert_close(advantages, expected_adv)
    torch.testing.assert_close(returns, expected_ret)


def test_gae_with_gamma_and_lambda_one_is_reward_to_go_minus_value():
    mask = torch.tensor([[True, True, True]])
    rewards = torch.tensor([[0.1, 0.2, 1.0]])
    values = torch.tensor([[0.3, 0.6, 0.9]])
    advantages, returns = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[1.3, 1.2, 1.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[1.0, 0.6, 0.1]]))


def _policy_case():
    # Ratios 1.1 (inside), 1.5 (outside, A>0: clipped), 0.5 (outside, A<0: clipped), 1.5 (A<0: unclipped
    # term is the larger, pessimistic). Last position is padding with garbage values.
    ratios = torch.tensor([1.1, 1.5, 0.5, 1.5, 1.0])
    old = torch.tensor([[-1.0, -2.0, -0.5, -1.5, float("-inf")]])
    logprobs = (old + torch.log(ratios)).clone()
    logprobs[0, 4] = 50.0
    advantages = torch.tensor([[1.0, 1.0, -1.0, -2.0, 1e9]])
    mask = torch.tensor([[True, True, True, True, False]])
    return logprobs, old, advantages, mask


def test_policy_loss_clipping_by_hand():
    logprobs, old, advantages, mask = _policy_case()
    logprobs.requires_grad_(True)
    out = policy_loss(logprobs, old, advantages, mask, clip=0.2)
    # Per token max(-A r, -A clip(r)): -1.1, max(-1.5, -1.2) = -1.2, max(0.5, 0.8) = 0.8, max(3.0, 2.4) = 3.0.
    assert out.loss.item() == pytest.approx((-1.1 - 1.2 + 0.8 + 3.0) / 4, rel=1e-5)
    assert out.clip_fraction.item() == pytest.approx(2 / 4)
    k3 = lambda r: (r - 1) - math.log(r)  # noqa: E731
    assert out.approx_kl.item() == pytest.approx((k3(1.1) + k3(1.5) + k3(0.5) + k3(1.5)) / 4, rel=1e-4)
    out.loss.backward()
    # d/dlp of -A r is -A r where unclipped, 0 where the clipped term is active or the token is masked.
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.1 / 4, 0.0, 0.0, 3.0 / 4, 0.0]]))


def test_value_loss_clipping_by_hand():
    old_values = torch.tensor([[0.0, 0.0, 0.0, 0.0]])
    values = torch.tensor([[0.1, 0.5, 0.5, 100.0]])
    returns = torch.tensor([[1.0, 1.0, 0.0, -100.0]])
    mask = torch.tensor([[True, True, True, False]])
    out = value_loss(values, old_values, returns, mask, clip=0.2)
    # Errors: (0.1-1)^2 = 0.81 both; (0.5-1)^2 = 0.25 vs clipped (0.2-1)^2 = 0.64; (0.5)^2 = 0.25 vs 0.04.
    assert out.loss.item() == pytest.approx(0.5 * (0.81 + 0.64 + 0.25) / 3, rel=1e-5)
    assert out.clip_fraction.item() == pytest.approx(1 / 3)


def test_losses_split_in_two_halves_with_global_token_count_sum_to_the_whole_batch():
    g = torch.Generator().manual_seed(0)
    b, t = 4, 6
    lengths = torch.tensor([6, 2, 4, 1])
    mask = torch.arange(t)[None, :] < lengths[:, None]  # uneven: halves hold 8 and 5 tokens
    logprobs = (-torch.rand(b, t, generator=g)).requires_grad_(True)
    old = logprobs.detach() + 0.3 * torch.randn(b, t, generator=g)
    advantages = torch.randn(b, t, generator=g)
    values = torch.randn(b, t, generator=g).requires_grad_(True)
    old_values = values.detach() + 0.3 * torch.randn(b, t, generator=g)
    returns = torch.randn(b, t, generator=g)
    total = int(mask.sum())

    whole_pl = policy_loss(logprobs, old, advantages, mask)
    whole_vl = value_loss(values, old_values, returns, mask)
    (whole_pl.loss + whole_vl.loss).backward()
    whole_grads = logprobs.grad.clone(), values.grad.clone()
    logprobs.grad, values.grad = None, None

    summed = {"pl": 0.0, "vl": 0.0, "clip": 0.0, "kl": 0.0}
    for rows in (slice(0, 2), slice(2, 4)):
        pl = policy_loss(logprobs[rows], old[rows], advantages[rows], mask[rows], global_token_count=total)
        vl = value_loss(values[rows], old_values[rows], returns[rows], mask[rows], global_token_count=total)
        (pl.loss + vl.loss).backward()
        summed["pl"] += pl.loss.item()
        summed["vl"] += vl.loss.item()
        summed["clip"] += pl.clip_fraction.item()
        summed["kl"] += pl.approx_kl.item()

    assert summed["pl"] == pytest.approx(whole_pl.loss.item(), abs=1e-6)
    assert summed["vl"] == pytest.approx(whole_vl.loss.item(), abs=1e-6)
    assert summed["clip"] == pytest.approx(whole_pl.clip_fraction.item(), abs=1e-6)
    assert summed["kl"] == pytest.approx(whole_pl.approx_kl.item(), abs=1e-6)
    torch.testing.assert_close(logprobs.grad, whole_grads[0])
    torch.testing.assert_close(values.grad, whole_grads[1])
    # Without the global count the halves' means do not add up to the whole (8 vs 5 tokens).
    halves = (slice(0, 2), slice(2, 4))
    local = sum(policy_loss(logprobs[r], old[r], advantages[r], mask[r]).loss.item() for r in halves)
    assert local != pytest.approx(whole_pl.loss.item(), abs=1e-6)


def test_entropy_from_logits():
    logits = torch.tensor([[0.0, 0.0, 0.0, 0.0], [1.0, 1.0, float("-inf"), float("-inf")]], requires_grad=True)
    entropy = entropy_from_logits(logits)
    torch.testing.assert_close(entropy, torch.tensor([math.log(4.0), math.log(2.0)]))
    entropy.sum().backward()
    assert torch.isfinite(logits.grad).all()
    # p = (e/(e+1), 1/(e+1)): H = log(1 + e) - e/(1 + e).
    e = math.e
    assert entropy_from_logits(torch.tensor([1.0, 0.0])).item() == pytest.approx(math.log(1 + e) - e / (1 + e))


def test_explained_variance():
    returns = torch.tensor([[1.0, 2.0, 3.0, 99.0]])
    mask = torch.tensor([[True, True, True, False]])
    assert explained_variance(returns, returns, mask).item() == pytest.approx(1.0)
    assert explained_variance(torch.full_like(returns, 2.0), returns, mask).item() == pytest.approx(0.0)
    # Residuals 1 - 1, 2 - 1, 3 - 1 = 0, 1, 2: variance 2/3; returns variance 2/3 -> 0. Residuals 0.5, 0, -0.5:
    # variance 1/6, so 1 - (1/6)/(2/3) = 0.75.
    values = torch.tensor([[0.5, 2.0, 3.5, 0.0]])
    assert explained_variance(values, returns, mask).item() == pytest.approx(0.75)
    assert math.isnan(explained_variance(returns, torch.ones_like(returns), mask).item())


# ---- masked moments across processes -------------------------------------------------------------------------


def _full_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = 3.0 + 2.0 * torch.randn(5, 7, generator=g)
    lengths = torch.tensor([7, 1, 4, 6, 2])
    return x, torch.arange(7)[None, :] < lengths[:, None]


def _moments_worker(rank: int, world_size: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        x, mask = _full_batch()
        rows = slice(0, 2) if rank == 0 else slice(2, 5)  # uneven split: 8 tokens vs 12
        mean, var, count = masked_moments(x[rows], mask[rows], distributed=True)
        whitened = masked_whiten(x[rows], mask[rows], distributed=True)
        result = {"mean": mean, "var": var, "count": count, "whitened": whitened}
        torch.save(result, os.path.join(out_dir, f"{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_masked_moments_distributed_match_single_process(tmp_path):
    mp.spawn(_moments_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    x, mask = _full_batch()
    mean, var, count = masked_moments(x, mask)
    whitened = masked_whiten(x, mask)
    parts = [torch.load(tmp_path / f"{rank}.pt") for rank in range(2)]
    for part in parts:
        assert part["count"].item() == count.item() == 20
        torch.testing.assert_close(part["mean"], mean, rtol=0, atol=1e-6)
        torch.testing.assert_close(part["var"], var, rtol=0, atol=1e-6)
    torch.testing.assert_close(torch.cat([parts[0]["whitened"], parts[1]["whitened"]]), whitened, rtol=0, atol=1e-6)
    # A local (non-distributed) statistic on one shard differs: the test would catch a missing all-reduce.
    assert abs(masked_moments(x[:2], mask[:2])[0].item() - mean.item()) > 1e-3
