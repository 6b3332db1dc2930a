"""Seconds per PPO iteration, rollouts/s, a per-phase profile and MFU: rlhf/ppo.py against TRL 0.25.1's PPOTrainer
(the last TRL with PPO), both sides interleaved in one run.

    python benchmarks/ppo_vs_trl.py --shape 512x64x32 [--iterations 4] [--rounds 2] [--threads 1] [--write]

Shapes are rollouts x mini-batch x answer tokens: 32x8x16 (the first benchmark's), 128x16x32 and 512x64x32 (the
paper's batch and mini-batch, arXiv 2307.09288 sec. 3.2.3). Each side runs in its own process, `--rounds` times,
alternating ours / TRL, with the same thread count: ours with this environment's python, TRL's in the virtual
environment .venv-trl025 (`python -m venv .venv-trl025 --system-site-packages` then
`.venv-trl025/bin/pip install trl==0.25.1`; never in the global site-packages). Same models (the tiny Llama as
policy; one tiny reward checkpoint, a seeded random scalar head on the tiny Llama, as value init and reward),
same prompts (the embedded world's), one PPO epoch, temperature 1. Differences that are the method's, kept: ours
gates R_h and R_s (eq. 3) where TRL has one reward model (here both are the one checkpoint, so ours loads and runs
it once), and writes a resumable checkpoint (every iteration unless `--save_every`). `--threads 2` gives each side
both of a 2-core machine's cores, as the pipeline runs its stages. Seconds per iteration are wall-clock between the
ends of consecutive iterations (the first one dropped: warm-up).

Phases (seconds per iteration, both sides): generation; policy and reference log-probs (TRL takes the policy's
from the generation logits); values; reward scoring; update (forward and backward of the mini-batches and the
optimiser steps); checkpointing; other (the rest: rewards, advantages, metrics, bookkeeping). MFU = useful FLOPs
(2 x parameters per real token for a forward, 6 x for forward and backward; input embeddings not counted, pad
tokens not counted) / seconds / the fp32 matmul peak measured in the same run at the same thread count.
"""

# ruff: noqa: PLC0415 - one script, two interpreters: the TRL side runs in .venv-trl025 with TRL 0.25.1, ours in
# this environment, so each side imports what it runs inside the function that runs it.
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TRL_PYTHON = ROOT / ".venv-trl025" / "bin" / "python"
SHAPES = ("32x8x16", "128x16x32", "512x64x32")
LR, KL_COEF = 1e-4, 0.05
PHASES = ("generation", "logprobs", "values", "scoring", "update", "checkpoint", "other")
PHASE_NAMES = {
    "generation": "generation",
    "logprobs": "policy/ref log-probs",
    "values": "values",
    "scoring": "reward scoring",
    "update": "update fwd+bwd",
    "checkpoint": "checkpointing",
    "other": "other",
}


def parse_shape(text: str) -> tuple[int, int, int]:
    try:
        rollouts, mini, tokens = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--shape wants ROLLOUTSxMINIBATCHxTOKENS, e.g. 512x64x32; got '{text}'"
        ) from None
    if min(rollouts, mini, tokens) < 1 or rollouts % mini:
        raise argparse.ArgumentTypeError(f"--shape {text}: rollouts must be a positive multiple of the mini-batch")
    return rollouts, mini, tokens


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


def world_prompts(batch: int):
    from alignment.world.scorers import world_prompt_records

    # At least one batch of distinct prompts: TRL's dataloader drops an incomplete last batch.
    return world_prompt_records("train")[: max(256, batch)]


def matmul_params(model) -> int:
    """Parameters that do a matmul per token: all but the input embedding."""
    embedding = model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters() if p is not embedding)


def run_ours(shape, iterations: int, work: Path, options: dict) -> dict:
    from rlhf.ppo import run_ppo
    from rlhf.ppo_config import PPOConfig

    batch, mini, tokens = shape
    rm = build_reward_checkpoint(work / "rm")
    config = PPOConfig(
        model_name_or_path="builtin:tiny-llama",
        helpfulness_model=rm,
        safety_model=rm,
        value_model_name_or_path=rm,
        rollout_batch_size=batch,
        mini_batch_size=mini,
        per_device_train_batch_size=mini,
        generation_batch_size=batch,
        max_new_tokens=tokens,
        temperature=1.0,
        learning_rate=LR,
        value_learning_rate=LR,
        kl_coef=KL_COEF,
        num_iterations=iterations,
        eval_every=0,
        report_to=["none"],
        progress=False,
        output_dir=str(work / "ours"),
        **options,
    )
    ends, rows = [], []

    def on_end(iteration, metrics):
        ends.append(time.perf_counter())
        rows.append(metrics)

    run_ppo(config, prompts=world_prompts(batch), heldout_prompts=[], on_iteration_end=on_end)
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    timed = rows[1:]
    phases = {p: statistics.mean(r[f"time/{p}"] for r in timed) for p in PHASES if p != "other"}
    phases["other"] = statistics.mean(gaps) - sum(phases.values())
    real_tokens = statistics.mean(r["sequence_length"] for r in timed) * batch
    from alignment.models import load_causal_lm
    from reward.scoring import load_reward_model

    n_policy = matmul_params(load_causal_lm("builtin:tiny-llama"))
    n_rm = matmul_params(load_reward_model(rm))
    flops = {
        "generation": 2 * n_policy * real_tokens,
        "logprobs": 2 * n_policy * real_tokens * (1 if options.get("logprobs_from_sampling") else 2),
        "values": 2 * n_rm * real_tokens,
        "scoring": 2 * 2 * n_rm * real_tokens,
        "update": 6 * (n_policy + n_rm) * real_tokens,
    }
    return {
        "impl": "ours",
        "seconds_per_iteration": statistics.mean(gaps),
        "iterations_timed": len(gaps),
        "phases": phases,
        "flops": flops,
        "real_tokens": real_tokens,
        "policy_loss": [r["policy_loss"] for r in rows],
    }


def run_trl(shape, iterations: int, work: Path, options: dict) -> dict:
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
    batch, mini, tokens = shape
    rm = build_reward_checkpoint(work / "rm")
    tokenizer = load_tokenizer("builtin:tiny-llama")
    rows = [{"input_ids": encode_prompt(tokenizer, p.messages, "llama2")} for p in world_prompts(batch)]
    dataset = Dataset.from_list(rows)
    seconds = dict.fromkeys(PHASES, 0.0)
    real_tokens = [0]
    holder = {}

    def timed(phase_of, function):
        def wrapper(*args, **kwargs):
            start = time.perf_counter()
            try:
                return function(*args, **kwargs)
            finally:
                seconds[phase_of(*args)] += time.perf_counter() - start

        return wrapper

    original_get_reward = ppo_module.get_reward

    def get_reward(model, query_responses, pad_token_id, context_length):
        if model is holder.get("reward_model"):
            real_tokens[0] += int((query_responses != pad_token_id).sum())
        return original_get_reward(model, query_responses, pad_token_id, context_length)

    ppo_module.batch_generation = timed(lambda *a: "generation", ppo_module.batch_generation)
    # Grad-enabled forwards are the update's; no-grad ones are the reference log-probs.
    ppo_module.forward = timed(lambda *a: "update" if torch.is_grad_enabled() else "logprobs", ppo_module.forward)
    ppo_module.get_reward = timed(
        lambda model, *a: "scoring" if model is holder.get("reward_model") else "values", get_reward
    )
    ends, snapshots = [], []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())
            snapshots.append((dict(seconds), real_tokens[0]))

    args = PPOConfig(
        output_dir=str(work / "trl"),
        per_device_train_batch_size=mini,
        gradient_accumulation_steps=batch // mini,
        num_mini_batches=batch // mini,
        num_ppo_epochs=1,
        local_rollout_forward_batch_size=batch,
        response_length=tokens,
        stop_token="eos",
        temperature=1.0,
        total_episodes=batch * iterations,
        learning_rate=LR,
        kl_coef=KL_COEF,
        num_sample_generations=0,
        report_to="none",
        save_strategy="no",
        use_cpu=True,
        bf16=False,
        seed=0,
        disable_tqdm=True,
        lr_scheduler_type="constant",
    )
    reward_model = AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1)
    holder["reward_model"] = reward_model
    trainer = PPOTrainer(
        args=args,
        processing_class=tokenizer,
        model=load_causal_lm("builtin:tiny-llama"),
        ref_model=load_causal_lm("builtin:tiny-llama"),
        reward_model=reward_model,
        value_model=AutoModelForSequenceClassification.from_pretrained(rm, num_labels=1),
        train_dataset=dataset,
        callbacks=[Clock()],
    )
    backward, step = trainer.accelerator.backward, trainer.optimizer.step
    trainer.accelerator.backward = timed(lambda *a: "update", backward)
    trainer.optimizer.step = timed(lambda *a: "update", step)
    torch.manual_seed(0)
    trainer.train()
    gaps = [b - a for a, b in zip(ends, ends[1:])]
    n = len(gaps)
    (first, tokens_first), (last, tokens_last) = snapshots[0], snapshots[-1]
    phases = {p: (last[p] - first[p]) / n for p in PHASES if p != "other"}
    phases["other"] = statistics.mean(gaps) - sum(phases.values())
    real = (tokens_last - tokens_first) / n
    n_policy = matmul_params(trainer.model.policy)
    n_rm = matmul_params(reward_model)
    flops = {
        "generation": 2 * n_policy * real,
        "logprobs": 2 * n_policy * real,
        "values": 2 * n_rm * real,
        "scoring": 2 * n_rm * real,
        "update": 6 * (n_policy + n_rm) * real,
    }
    return {
        "impl": "trl-0.25.1",
        "seconds_per_iteration": statistics.mean(gaps),
        "iterations_timed": n,
        "phases": phases,
        "flops": flops,
        "real_tokens": real,
    }


def worker(impl: str, shape, iterations: int, threads: int, options: dict, out: str) -> None:
    import torch

    torch.set_num_threads(threads)
    result = (run_ours if impl == "ours" else run_trl)(shape, iterations, Path(out).parent, options)
    result["rollouts_per_s"] = shape[0] / result["seconds_per_iteration"]
    Path(out).write_text(json.dumps(result))


def phase_table(results: dict, peak: float) -> str:
    from benchmarks.common import markdown_table

    rows = []
    for phase in PHASES:
        row = [PHASE_NAMES[phase]]
        for r in results.values():
            s = r["phases"][phase]
            flops = r["flops"].get(phase)
            mfu = f"{flops / s / peak:.1%}" if flops and s > 0 else "-"
            row += [f"{s:.3f}", f"{s / r['seconds_per_iteration']:.0%}", mfu]
        rows.append(row)
    total = ["whole iteration"]
    for r in results.values():
        total += [
            f"{r['seconds_per_iteration']:.3f}",
            "100%",
            f"{sum(r['flops'].values()) / r['seconds_per_iteration'] / peak:.1%}",
        ]
    rows.append(total)
    header = ["phase"]
    for name in results:
        header += [f"{name} s/iter", "share", "MFU"]
    return markdown_table(header, rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--shape",
        type=parse_shape,
        default=parse_shape("32x8x16"),
        help=f"rollouts x mini-batch x answer tokens ({', '.join(SHAPES)}); default 32x8x16",
    )
    parser.add_argument("--iterations", type=int, default=6, help="PPO iterations per run (the first is warm-up)")
    parser.add_argument("--rounds", type=int, default=2, help="runs per side, alternating ours / TRL")
    parser.add_argument("--threads", type=int, default=1, help="torch threads, the same for both sides")
    parser.add_argument(
        "--ours_options",
        default="{}",
        help="JSON of extra PPOConfig fields for our side (to measure one optimisation)",
    )
    parser.add_argument(
        "--with_default",
        action="store_true",
        help="also run our side without --ours_options, interleaved, to measure those options",
    )
    parser.add_argument("--write", action="store_true", help="write this shape's section of BENCHMARKS.md")
    parser.add_argument("--impl", choices=["ours", "trl"], help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    options = json.loads(args.ours_options)
    shape_text = "x".join(map(str, args.shape))
    if args.impl:
        sys.path.insert(0, str(ROOT))
        worker(args.impl, args.shape, args.iterations, args.threads, options, args.out)
        return
    if not TRL_PYTHON.exists():
        raise SystemExit(
            f"{TRL_PYTHON} not found: python -m venv .venv-trl025 --system-site-packages && "
            ".venv-trl025/bin/pip install trl==0.25.1"
        )
    sys.path.insert(0, str(ROOT))
    import torch

    from benchmarks.common import machine_description, markdown_table, measure_matmul_peak

    torch.set_num_threads(args.threads)
    peak = measure_matmul_peak(torch.float32)
    sides = [("ours", sys.executable, args.ours_options), ("trl", str(TRL_PYTHON), "{}")]
    if args.with_default:
        sides.insert(1, ("ours-default", sys.executable, "{}"))
    runs = {impl: [] for impl, _, _ in sides}
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": str(args.threads)}
    with tempfile.TemporaryDirectory() as tmp:
        build_reward_checkpoint(Path(tmp) / "rm")  # here: TRL 0.25.1's environment lacks what reward/ needs
        for round_ in range(args.rounds):
            for impl, python, side_options in sides:
                work = Path(tmp) / f"{impl}-{round_}"
                work.mkdir()
                (work / "rm").symlink_to(Path(tmp) / "rm")
                out = work / "result.json"
                subprocess.run(
                    [
                        python,
                        __file__,
                        "--impl",
                        impl.split("-")[0],
                        "--shape",
                        shape_text,
                        "--iterations",
                        str(args.iterations),
                        "--threads",
                        str(args.threads),
                        "--ours_options",
                        side_options,
                        "--out",
                        str(out),
                    ],
                    check=True,
                    cwd=ROOT,
                    env=env,
                )
                runs[impl].append(json.loads(out.read_text()))
                print(f"round {round_ + 1} {impl}: {runs[impl][-1]['seconds_per_iteration']:.3f} s/iter", flush=True)
    # Per side, the run with the median seconds (the lower middle one with 2 rounds).
    median = {
        impl: sorted(rs, key=lambda r: r["seconds_per_iteration"])[(len(rs) - 1) // 2] for impl, rs in runs.items()
    }
    ours, trl = median["ours"], median["trl"]
    per_round = [t["seconds_per_iteration"] / o["seconds_per_iteration"] for o, t in zip(runs["ours"], runs["trl"])]
    ratio = trl["seconds_per_iteration"] / ours["seconds_per_iteration"]
    default_line = ""
    if args.with_default:
        plain = median["ours-default"]
        plain["impl"] = "ours, without the options"
        per_round_default = [
            t["seconds_per_iteration"] / o["seconds_per_iteration"] for o, t in zip(runs["ours-default"], runs["trl"])
        ]
        default_line = (
            f"Without the options ({plain['seconds_per_iteration']:.3f} s/iter): TRL/ours "
            f"{trl['seconds_per_iteration'] / plain['seconds_per_iteration']:.2f}x, per round "
            f"{', '.join(f'{x:.2f}x' for x in per_round_default)}.\n\n"
        )
    batch, mini, tokens = args.shape
    table = markdown_table(
        ["implementation", "s / iteration (each round)", "rollouts / s", "real tokens / iteration"],
        [
            [
                r["impl"],
                " / ".join(f"{x['seconds_per_iteration']:.3f}" for x in runs[key]),
                f"{r['rollouts_per_s']:.1f}",
                f"{r['real_tokens']:.0f}",
            ]
            for key, r in median.items()
        ],
    )
    command = (
        f"python benchmarks/ppo_vs_trl.py --shape {shape_text} --iterations {args.iterations} "
        f"--rounds {args.rounds} --threads {args.threads}"
        + (f" --ours_options '{args.ours_options}'" if options else "")
        + (" --with_default" if args.with_default else "")
    )
    body = (
        f"Command: `{command}`\n\n"
        f"Machine: {machine_description()}, shared with other jobs (ratios within this run only); fp32 matmul "
        f"peak {peak / 1e9:.1f} GFLOP/s. {batch} rollouts, mini-batch {mini} ({batch // mini} steps per iteration), "
        f"{tokens}-token answers, {args.rounds} rounds per side alternating, mean of {ours['iterations_timed']} "
        f"iterations after a warm-up one; the tables show each side's median round.\n\n{table}\n\n"
        f"Per phase (seconds per iteration, share of the iteration, MFU):\n\n"
        f"{phase_table({'ours': ours, 'TRL': trl}, peak)}\n\n"
        f"Ratio per round: {', '.join(f'{x:.2f}x' for x in per_round)}.\n\n{default_line}"
        f"ratio TRL/ours: {ratio:.2f}x"
    )
    print(body)
    if args.write:
        from benchmarks.common import write_section

        write_section(f"PPO vs TRL 0.25.1, {shape_text}", body)


if __name__ == "__main__":
    main()
