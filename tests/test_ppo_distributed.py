"""A PPO step split over 2 processes (gloo, CPU) equals the step of one process on the same batch.

The batch is fixed (synthetic rollouts on the tiny Llama), so the comparison covers what the trainer adds to
the maths: whitening of R_c and of the advantages over all processes, the global token count of the loss,
the world-size factor against DDP's gradient averaging and gradient accumulation over micro-batches.
Run as a script (torchrun, or plain python for one process) it writes its results to a file.
"""

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def _synthetic_batch():
    from rlhf.ppo import RolloutBatch

    g = torch.Generator().manual_seed(3)
    lengths = [(4, 5), (6, 2), (3, 7), (5, 4)]  # (prompt, response) tokens: shards of 9 and 14 answer tokens
    width = max(p + r for p, r in lengths)
    input_ids = torch.zeros(4, width, dtype=torch.long)
    attention_mask = torch.zeros(4, width, dtype=torch.long)
    response_mask = torch.zeros(4, width - 1, dtype=torch.bool)
    for row, (p, r) in enumerate(lengths):
        input_ids[row, : p + r] = torch.randint(5, 500, (p + r,), generator=g)
        attention_mask[row, : p + r] = 1
        response_mask[row, p - 1 : p + r - 1] = True
    return RolloutBatch(
        input_ids=input_ids,
        attention_mask=attention_mask,
        response_mask=response_mask,
        is_safety_prompt=torch.tensor([False, True, False, False]),
        is_truncated=torch.tensor([False, False, True, False]),
        helpfulness=torch.tensor([0.5, -1.0, 2.0, 0.0]),
        safety=torch.tensor([1.0, -2.0, 1.0, 1.0]),
        combined=torch.tensor([0.5, -2.0, 2.0, 0.0]),
        use_safety=torch.tensor([False, True, False, False]),
    )


def worker(out_file: str) -> None:
    from accelerate import Accelerator

    from alignment.models import load_causal_lm
    from reward.scoring import load_reward_model
    from rlhf.ppo import PPOModels, TokenValueModel, compute_advantages, forward_rollouts, ppo_update
    from rlhf.ppo_config import PPOConfig

    torch.set_num_threads(1)
    accelerator = Accelerator(cpu=True)
    world, rank = accelerator.num_processes, accelerator.process_index
    config = PPOConfig(
        rollout_batch_size=4,
        mini_batch_size=4,
        per_device_train_batch_size=1,
        kl_coef=0.1,
        max_grad_norm=1e9,
        report_to=["none"],
    )
    torch.manual_seed(0)
    policy = load_causal_lm("builtin:tiny-llama")
    reference = load_causal_lm("builtin:tiny-llama").requires_grad_(False)
    with torch.no_grad():  # pi_0 != pi_theta, so the KL term is not zero
        for p in reference.parameters():
            p.add_(0.01 * torch.randn(p.shape, generator=torch.Generator().manual_seed(1)))
    value_model = TokenValueModel(load_reward_model("builtin:tiny-llama"))
    # SGD with lr 1: the parameter change is minus the gradient, so the test compares gradients exactly
    # (Adam's first step is about lr * sign(g) and would hide a wrong gradient scale).
    optimizer = torch.optim.SGD(list(policy.parameters()) + list(value_model.parameters()), lr=1.0)
    before = {n: p.detach().clone() for n, p in policy.named_parameters()}
    vbefore = {n: p.detach().clone() for n, p in value_model.named_parameters()}
    policy, value_model, optimizer = accelerator.prepare(policy, value_model, optimizer)
    policy.eval(), value_model.eval()

    batch = _synthetic_batch().select(range(rank * 4 // world, (rank + 1) * 4 // world))
    models = PPOModels(accelerator, policy, reference, value_model, optimizer)
    forward_rollouts(models, batch, config)
    compute_advantages(batch, config, distributed=world > 1)
    stats = ppo_update(models, batch, config, iteration=0)
    unwrapped, vunwrapped = accelerator.unwrap_model(policy), accelerator.unwrap_model(value_model)
    torch.save(
        {
            "rank": rank,
            "world": world,
            "stats": stats,
            "rewards": batch.rewards,
            "advantages": batch.advantages,
            "returns": batch.returns,
            "kl": batch.kl,
            "policy_delta": {n: p.detach() - before[n] for n, p in unwrapped.named_parameters()},
            "value_delta": {n: p.detach() - vbefore[n] for n, p in vunwrapped.named_parameters()},
        },
        out_file if world == 1 else f"{out_file}.{rank}",
    )


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run(args: list[str], tmp_path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        env.pop(key, None)
    result = subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]


def test_two_processes_compute_the_same_whitening_loss_and_step_as_one(tmp_path):
    single, split = tmp_path / "single.pt", tmp_path / "split.pt"
    threads = torch.get_num_threads()
    try:
        worker(str(single))  # one process: here, without torch.distributed
    finally:
        torch.set_num_threads(threads)
    _run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            str(_free_port()),
            str(HERE / "test_ppo_distributed.py"),
            str(split),
        ],
        tmp_path,
    )
    one = torch.load(single)
    parts = [torch.load(f"{split}.{rank}") for rank in range(2)]
    assert one["world"] == 1 and [p["world"] for p in parts] == [2, 2]

    def cat(key):  # per-token tensors: each shard is cut to its own width; pad to the full batch's
        width = one[key].shape[1]
        return torch.cat([torch.nn.functional.pad(p[key], (0, width - p[key].shape[1])) for p in parts])

    for key in ("kl", "rewards", "advantages", "returns"):
        torch.testing.assert_close(cat(key), one[key], rtol=1e-5, atol=1e-6)
    # The reward is whitened over the whole batch: the 4 R~_c on the last answer tokens have mean 0, var 1.
    mask = torch.zeros_like(one["rewards"], dtype=torch.bool)
    last = [(4 + 5 - 2), (6 + 2 - 2), (3 + 7 - 2), (5 + 4 - 2)]
    mask[torch.arange(4), torch.tensor(last)] = True
    r_c = one["rewards"][mask] + 0.1 * one["kl"][mask]
    assert r_c.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert r_c.var(unbiased=False).item() == pytest.approx(1.0, abs=1e-4)
    for key in ("policy_loss", "value_loss", "clip_fraction", "approx_kl", "entropy"):
        assert parts[0]["stats"][key] == pytest.approx(one["stats"][key], rel=1e-5, abs=1e-7), key
        assert parts[1]["stats"][key] == parts[0]["stats"][key]
    assert one["stats"]["policy_loss"] != 0.0 and one["stats"]["value_loss"] > 0.0
    for delta in ("policy_delta", "value_delta"):
        for name, value in one[delta].items():
            torch.testing.assert_close(parts[0][delta][name], value, rtol=1e-4, atol=1e-7, msg=name)
        assert max(v.abs().max().item() for v in one[delta].values()) > 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    worker(sys.argv[1])
