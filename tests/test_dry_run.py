"""`llama2-align dry-run`: batch arithmetic, memory per device, and clear failures on impossible plans."""

from __future__ import annotations

from pathlib import Path

import pytest

from alignment.dry_run import ARCHITECTURES, GIB, Launch, lora_params, main, plan, run

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes"


def test_sft_7b_on_fsdp_prints_the_batch_arithmetic_and_memory(capsys):
    result = run(
        ["--config", str(RECIPES / "llama2-7b/sft.yaml"), "--accelerate_config", str(RECIPES / "accelerate/fsdp.yaml")]
    )
    out = capsys.readouterr().out
    assert "global batch 64 sequences = 4 per device x 2 accumulation x 8 processes" in out
    assert result["kind"] == "fsdp2" and result["num_processes"] == 8
    # 6.74e9 parameters x (2 weights + 2 gradients + 12 AdamW) bytes / 8 shards
    memory = result["memory_gib"]
    assert memory["policy weights"] == pytest.approx(6.74e9 * 2 / 8 / GIB)
    assert memory["policy AdamW states"] == pytest.approx(6.74e9 * 12 / 8 / GIB)


def test_the_same_recipe_under_ddp_does_not_fit_and_says_why(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "--config",
                str(RECIPES / "llama2-7b/sft.yaml"),
                "--accelerate_config",
                str(RECIPES / "accelerate/ddp.yaml"),
            ]
        )
    assert exit_info.value.code == 2
    assert "exceeds 80 GiB" in capsys.readouterr().err


def test_a_batch_that_does_not_divide_fails_with_the_numbers(capsys):
    with pytest.raises(SystemExit):
        main(
            [
                "--config",
                str(RECIPES / "tiny/sft.yaml"),
                "--accelerate_config",
                str(RECIPES / "accelerate/ddp-cpu.yaml"),
            ]
        )
    assert "global batch 4 is not a multiple of per-device batch 4 x 2 processes = 8" in capsys.readouterr().err


def test_generation_under_fsdp_v1_is_refused(tmp_path, capsys):
    config = tmp_path / "fsdp1.yaml"
    config.write_text((RECIPES / "accelerate/fsdp.yaml").read_text().replace("fsdp_version: 2", "fsdp_version: 1"))
    with pytest.raises(SystemExit):
        main(["--config", str(RECIPES / "llama2-13b/ppo.yaml"), "--accelerate_config", str(config)])
    assert "FSDP v1" in capsys.readouterr().err


@pytest.mark.parametrize("size", ["13b", "70b"])
@pytest.mark.parametrize("stage", ["sft", "reward", "ppo"])
def test_paper_scale_presets_name_their_launch_and_fit(size, stage, capsys):
    result = run(["--config", str(RECIPES / f"llama2-{size}/{stage}.yaml")])
    assert result["kind"] == "fsdp2"
    assert result["num_processes"] == {"13b": 16 if stage == "ppo" else 8, "70b": 64}[size]
    assert result["total_gib"] < 80


def test_paper_scale_presets_are_valid_stage_recipes():
    from alignment.config import parse_recipe
    from reward.config import Llama2RewardConfig
    from rlhf.ppo_config import PPOConfig
    from sft.config import DataArguments, Llama2SFTConfig, ModelArguments

    for size in ("13b", "70b"):
        _, data_args, sft_args = parse_recipe(
            (ModelArguments, DataArguments, Llama2SFTConfig), ["--config", str(RECIPES / f"llama2-{size}/sft.yaml")]
        )
        assert (data_args.global_batch_size, sft_args.learning_rate, sft_args.num_train_epochs) == (64, 2e-5, 2)
        (reward_args,) = parse_recipe((Llama2RewardConfig,), ["--config", str(RECIPES / f"llama2-{size}/reward.yaml")])
        assert reward_args.global_batch_size == 512
        assert reward_args.learning_rate == {"13b": 1e-5, "70b": 5e-6}[size]
        (ppo,) = parse_recipe((PPOConfig,), ["--config", str(RECIPES / f"llama2-{size}/ppo.yaml")])
        assert (ppo.rollout_batch_size, ppo.mini_batch_size, ppo.clip_range, ppo.learning_rate) == (512, 64, 0.2, 1e-6)
        assert ppo.kl_coef == {"13b": 0.01, "70b": 0.005}[size]


def test_ppo_arithmetic_and_lora_reference_costs_nothing():
    launch = Launch("x", "fsdp2", 8, 1, bf16=True)
    recipe = {
        "rollout_batch_size": 512,
        "mini_batch_size": 64,
        "per_device_train_batch_size": 2,
        "use_lora": True,
        "lora_r": 16,
        "max_new_tokens": 128,
    }
    arithmetic, memory = plan(recipe, "ppo", launch, ARCHITECTURES["7b"])
    assert arithmetic == [
        "PPO batch 512 rollouts = 64 per process x 8 processes; 8 gradient steps per iteration",
        "mini-batch 64 = 2 per device x 4 accumulation x 8 processes",
    ]
    lines = {line.what: line.bytes for line in memory}
    assert lines["reference (policy with adapter disabled)"] == 0
    # LoRA r=16 on 7B: 32 layers x 16 x (2(4096+4096) + 2(4096+4096) + 3(4096+11008)) = 39,976,960 trainable
    assert lora_params(ARCHITECTURES["7b"], 16) == 39_976_960
    assert lines["policy AdamW states"] == pytest.approx(39_976_960 * 12 / 8)
