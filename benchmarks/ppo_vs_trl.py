"""Seconds per PPO iteration and rollouts/s: rlhf/ppo.py against TRL 0.25.1's PPOTrainer (the last TRL with PPO).

    python benchmarks/ppo_vs_trl.py [--iterations 8] [--write]

Both run in their own process on the same machine, one after the other: ours with this environment's python,
TRL's in the virtual environment .venv-trl025 (`python -m venv .venv-trl025 --system-site-packages` then
`.venv-trl025/bin/pip install trl==0.25.1`; never in the global site-packages). Same models (the tiny Llama as
policy; one tiny reward checkpoint, a seeded random scalar head on the tiny Llama, as value init and reward),
same prompts (the embedded world's), batch 32, mini-batch 8 (4 steps per iteration), one PPO epoch, 16-token
answers, temperature 1, 1 thread each. Differences that are the method's, kept: ours scores every answer
with two reward models (R_h and R_s, eq. 3) where TRL has one, and checkpoints every iteration (resume).
Per-iteration seconds are wall-clock between the ends of consecutive iterations (first one dropped: warm-up).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / ".venv-trl025" / "bin" / "python"
BATCH, MINI_BATCH, RESPONSE_LENGTH, N_PROMPTS = 32, 8, 16, 256
LR, KL_COEF = 1e-4, 0.05


def build_reward_checkpoint(path: Path) -> str:
    import torch

    from alignment.models import load_tokenizer
    from reward.scoring import load_reward_model

    if not (path / "config.json").exists():
        torch.manual_seed(0)
        model = load_reward_model("builtin:tiny-llama")
        model.save_pretrained(path, safe_serialization=True)
        load_tokenizer("builtin:tiny-llama").save_pretrained(path)
    return str(path)


def world_prompts():
    from alignment.world.scorers import world_prompt_records

    return world_prompt_records("train")[:N_PROMPTS]


def run_ours(iterations: int, work: Path) -> dict:
    from rlhf.ppo import run_ppo
    from rlhf.ppo_config import PPOConfig

    rm = build_reward_checkpoint(work / "rm")
    config = PPOConfig(
        model_name_or_path="builtin:tiny-llama", helpfulness_model=rm, safety_model=rm, value_model_name_or_path=rm,
        rollout_batch_size=BATCH, mini_batch_size=MINI_BATCH, per_device_train_batch_size=MINI_BATCH,
        generation_batch_size=BATCH, max_new_tokens=RESPONSE_LENGTH, temperature=1.0, learning_rate=LR,
        value_learning_rate=LR, kl_coef=KL_COEF, num_iterations=iterations, eval_every=0, report_to=["none"],
        progress=False, output_dir=str(work / "ours"),
    )
    ends, rows = [], []

    def on_end(iteration, metrics):
        ends.append(time.perf_counter())
        rows.append(metrics)
    run_ppo(config, prompts=world_prompts(), heldout_prompts=[], on_iteration_end=on_end)
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    generation = sum(r["time/generation"] for r in rows[1:])
    return {"impl": "ours", "seconds_per_iteration": sum(gaps) / len(gaps),
            "generation_share": generation / sum(gaps), "iterations_timed": len(gaps)}


def run_trl(iterations: int, work: Path) -> dict:
    os.environ["TRL_EXPERIMENTAL_SILENCE"] = "1"
    import torch
    import trl
    import trl.trainer.ppo_trainer as ppo_module
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, TrainerCallback
    from trl import PPOConfig, PPOTrainer

    from alignment.chat import encode_prompt
    from alignment.models import load_causal_lm, load_tokenizer

    assert trl.__version__ == "0.25.1", trl.__version__
    rm = build_reward_checkpoint(work / "rm")
    tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = [{"input_ids": encode_prompt(tokenizer, p.messages, "llama2")} for p in world_prompts()]
    dataset = Dataset.from_list(rows)
    generation_seconds = [0.0]
    original = ppo_module.batch_generation

    def timed_generation(*args, **kwargs):
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            generation_seconds[0] += time.perf_counter() - start
    ppo_module.batch_generation = timed_generation

    ends, generation_at_end = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            generation_at_end.append(generation_seconds[0])

    args = PPOConfig(
        output_dir=str(work / "trl"), per_device_train_batch_size=MINI_BATCH,
        gradient_accumulation_steps=BATCH // MINI_BATCH, num_mini_batches=BATCH // MINI_BATCH, num_ppo_epochs=1,
        local_rollout_forward_batch_size=BATCH, response_length=RESPONSE_LENGTH, stop_token="eos", temperature=1.0,
        total_episodes=BATCH * iterations, learning_rate=LR, kl_coef=KL_COEF, num_sample_generations=0,
        report_to="none", save_strategy="no", use_cpu=True, bf16=False, seed=0, disable_tqdm=True,
        lr_scheduler_type="constant",
    )
    trainer = PPOTrainer(
        args=args, processing_class=tokenizer, model=load_causal_lm("builtin:tiny-llama"),
        ref_model=load_causal_lm("builtin:tiny-llama"),
        reward_model=AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1),
        value_model=AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1),
        train_dataset=dataset, callbacks=[Clock()],
    )
    torch.manual_seed(0)
    trainer.train()
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    generation = generation_at_end[-1] - generation_at_end[0]
    return {"impl": "trl-0.25.1", "seconds_per_iteration": sum(gaps) / len(gaps),
            "generation_share": generation / sum(gaps), "iterations_timed": len(gaps)}


def worker(impl: str, iterations: int, out: str) -> None:
    import torch

    torch.set_num_threads(1)
    result = (run_ours if impl == "ours" else run_trl)(iterations, Path(out).parent)
    result["rollouts_per_s"] = BATCH / result["seconds_per_iteration"]
    Path(out).write_text(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=8)
    parser.add_argument("--write", action="store_true", help="write the PPO section of BENCHMARKS.md")
    parser.add_argument("--impl", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.impl:
        sys.path.insert(0, str(ROOT))
        worker(args.impl, args.iterations, args.out)
        return
    if not TRL_PYTHON.exists():
        raise SystemExit(f"{TRL_PYTHON} not found: python -m venv .venv-trl025 --system-site-packages && "
                         ".venv-trl025/bin/pip install trl==0.25.1")
    results = {}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    with tempfile.TemporaryDirectory() as tmp:
        sys.path.insert(0, str(ROOT))
        build_reward_checkpoint(Path(tmp) / "rm")  # here: TRL 0.25.1's environment lacks what reward/ needs
        for impl, python in (("ours", sys.executable), ("trl", str(TRL_PYTHON))):
            out = Path(tmp) / f"{impl}.json"
            subprocess.run([python, __file__, "--impl", impl, "--iterations", str(args.iterations), "--out", str(out)],
                           check=True, cwd=ROOT, env=env)
            results[impl] = json.loads(out.read_text())
    ours, trl = results["ours"], results["trl"]
    import torch

    torch.set_num_threads(1)  # what each run used; machine_description reports it
    from benchmarks.common import machine_description, markdown_table

    table = markdown_table(
        ["implementation", "s / iteration", "rollouts / s", "generation share"],
        [[r["impl"], f"{r['seconds_per_iteration']:.2f}", f"{r['rollouts_per_s']:.1f}", f"{r['generation_share']:.0%}"]
         for r in (ours, trl)],
    )
    body = (
        f"Command: `python benchmarks/ppo_vs_trl.py --iterations {args.iterations} --write`\n\n"
        f"Machine: {machine_description()} (2 cores, otherwise idle). Tiny Llama policy, batch {BATCH}, "
        f"mini-batch {MINI_BATCH}, one PPO epoch, {RESPONSE_LENGTH}-token answers, mean of "
        f"{ours['iterations_timed']} / {trl['iterations_timed']} iterations after a warm-up one.\n\n{table}\n\n"
        f"Ratio (TRL seconds / ours): {trl['seconds_per_iteration'] / ours['seconds_per_iteration']:.2f}x. "
        "Ours scores with two reward models (R_h, R_s) and writes a resumable checkpoint every iteration; "
        "TRL 0.25.1 scores with one and does not checkpoint between iterations."
    )
    print(body)
    if args.write:
        from benchmarks.common import write_section

        write_section("PPO", body)


if __name__ == "__main__":
    main()
