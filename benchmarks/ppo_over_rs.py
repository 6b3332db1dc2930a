"""Does PPO add to rejection sampling on the main job, and is the judge the limit? (issue 14)

    python benchmarks/ppo_over_rs.py --runs runs/rs320-s0 runs/rs320-s1 ... [--judges trained oracle] [--write]

From each finished main-job run's RLHF-V5 rejection-sampling model, PPO with ten times the recipe's rollouts
(`BUDGET`: 60 iterations of 64 against 12 of 32, lr 5e-5, kl 0.05; the recipe's PPO moves the tiny policy by an
approx-KL of about 1e-5 per step), once per judge:

- ``trained``: the run's own V5 R_h and R_s, as the pipeline's PPO uses them;
- ``oracle``: the world's gold judges in their place (`builtin:world-helpfulness`, `builtin:world-safety`; the value
  model still starts from R_h), an upper bound on what a better reward model could give PPO.

Each PPO model answers the run's held-out prompts exactly as the pipeline evaluates V5 (the run's
``RLHF-V5/evaluate/recipe.yaml`` with ``--model`` replaced). Figures are per-prompt paired differences on the
helpfulness prompts (borderline included), gold helpfulness and the correct-fact rate (`alignment.world.evaluate`'s
definitions), against V5 without PPO (``RLHF-V5/evaluate_rs``), the recipe's V5 and SFT: the mean over runs ± the
larger of the within-run error (paired over prompts, combined over runs) and the run-to-run error. Outputs go to
``<run>/ppo_over_rs/<judge>/``; a finished judge is not run again. About a minute per run and judge at 1 thread.

A second table asks whether PPO moved the held-out answers the way the run's R_h wanted (``answer_changes``): over
the helpfulness prompts whose greedy answer PPO changed from V5 without PPO's, how many gold rates higher and
lower, how many the run's V5 R_h scores higher, and on the changes gold rates differently how often R_h agrees
with gold. A policy exploiting R_h would raise R_h on most changes while gold falls; a policy whose training-prompt
gains do not carry to unseen prompts changes answers with no lean in either.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.data import read_jsonl_tolerant  # noqa: E402
from alignment.world import gold_helpfulness  # noqa: E402
from alignment.world.scorers import WORLD_JUDGES  # noqa: E402
from benchmarks.common import markdown_table, write_section  # noqa: E402
from benchmarks.pipeline_seeds import per_prompt, seed_mean, world_prompts_by_text  # noqa: E402
from reward.scoring import RewardScorer  # noqa: E402
from rlhf.cd_compare import paired  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
BUDGET = {
    "rollout_batch_size": 64,
    "mini_batch_size": 16,
    "per_device_train_batch_size": 16,
    "generation_batch_size": 64,
    "num_iterations": 60,
    "learning_rate": 5e-5,
    "kl_coef": 0.05,
    "eval_every": 10,
    "early_stopping_patience": 3,
    "early_stopping_min_delta": 0.02,
}
JUDGES = ("trained", "oracle")
BASELINES = {"V5 without PPO": "RLHF-V5/evaluate_rs", "V5 (recipe PPO)": "RLHF-V5/evaluate", "SFT": "SFT/evaluate"}
METRICS = ("gold helpfulness", "correct-fact rate")


def run_judge(run: Path, judge: str, threads: int) -> Path:
    """PPO from the run's V5 RS model with `judge`, then the pipeline's V5 evaluation of it; returns the eval dir."""
    out = run / "ppo_over_rs" / judge
    evaluation = out / "eval"
    if (evaluation / "eval.json").exists():
        return evaluation
    options = [f"--{key}={value}" for key, value in BUDGET.items()]
    if judge == "oracle":
        helpfulness, safety = WORLD_JUDGES
        options += [
            f"--helpfulness_model={helpfulness}",
            f"--safety_model={safety}",
            f"--value_model_name_or_path={run / 'RLHF-V5' / 'reward_helpfulness'}",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    ppo = [sys.executable, str(REPO / "recipes" / "ppo.py"), "--config", str(run / "RLHF-V5" / "ppo" / "recipe.yaml")]
    subprocess.run([*ppo, "--output_dir", str(out / "ppo"), *options], check=True, env=env)
    evaluate = [sys.executable, str(REPO / "recipes" / "evaluate.py")]
    evaluate += ["--config", str(run / "RLHF-V5" / "evaluate" / "recipe.yaml"), "--model", str(out / "ppo")]
    subprocess.run([*evaluate, "--output_dir", str(evaluation)], check=True, env=env)
    return evaluation


def combine(differences: list[dict]) -> tuple[float, float, list[float]]:
    """Mean over runs of the paired differences, its standard error (`seed_mean`: the larger of within-run and
    run-to-run) and the per-run means."""
    means = [d["mean"] for d in differences]
    mean, stderr = seed_mean(means, [d["stderr"] for d in differences])
    return mean, stderr, means


def changed_answers(before: Path, after: Path) -> list[tuple[list[dict], str, str, dict]]:
    """(messages, answer before, answer after, prompt) for each helpfulness prompt whose answer differs."""
    old = {row["prompt"][-1]["content"]: row for row in read_jsonl_tolerant(before / "responses.jsonl")}
    by_text, out = world_prompts_by_text(), []
    for row in read_jsonl_tolerant(after / "responses.jsonl"):
        text = row["prompt"][-1]["content"]
        prompt = by_text[text]
        if prompt["kind"] != "safety" and row["response"] != old[text]["response"]:
            out.append((row["prompt"], old[text]["response"], row["response"], prompt))
    return out


def change_counts(changes: list[tuple[float, float, float, float]]) -> dict[str, int]:
    """Counts over (gold before, gold after, R_h before, R_h after) of changed answers (module docstring)."""
    gold_differs = [c for c in changes if c[1] != c[0]]
    return {
        "changed": len(changes),
        "gold up": sum(c[1] > c[0] for c in changes),
        "gold down": sum(c[1] < c[0] for c in changes),
        "R_h up": sum(c[3] > c[2] for c in changes),
        "gold differs": len(gold_differs),
        "R_h agrees with gold": sum((c[3] > c[2]) == (c[1] > c[0]) for c in gold_differs),
    }


def answer_changes(run: Path, evaluation: Path) -> dict[str, int]:
    """`change_counts` of PPO's held-out answers against V5 without PPO's, R_h being the run's V5 R_h."""
    changes = changed_answers(run / BASELINES["V5 without PPO"], evaluation)
    if not changes:
        return change_counts([])
    scorer = RewardScorer(str(run / "RLHF-V5" / "reward_helpfulness"))
    messages = [c[0] for c in changes]
    before = scorer.score(messages, [c[1] for c in changes]).scores
    after = scorer.score(messages, [c[2] for c in changes]).scores
    return change_counts(
        [
            (gold_helpfulness(c[3], c[1]), gold_helpfulness(c[3], c[2]), float(b), float(a))
            for c, b, a in zip(changes, before, after)
        ]
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="finished main-job run directories")
    parser.add_argument("--judges", nargs="+", choices=JUDGES, default=list(JUDGES))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each PPO and evaluation process")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    parser.add_argument("--section", default="PPO over rejection sampling on the main job, trained and perfect judges")
    args = parser.parse_args(argv)
    missing = [str(run) for run in args.runs if not (run / "RLHF-V5" / "evaluate_rs" / "responses.jsonl").exists()]
    if missing:
        parser.error(f"not a finished main-job run (no RLHF-V5/evaluate_rs/responses.jsonl): {', '.join(missing)}")
    rows, summary = [], {}
    # The recipe's own PPO first (the main job's V5), then each judge's ten-times-budget PPO.
    sources = [("V5 (recipe PPO)", {run: run / BASELINES["V5 (recipe PPO)"] for run in args.runs})]
    for judge in args.judges:
        sources.append((f"PPO x10, {judge} judges", {run: run_judge(run, judge, args.threads) for run in args.runs}))
    for name, evaluations in sources:
        figures = {run: per_prompt(evaluation) for run, evaluation in evaluations.items()}
        for baseline, folder in BASELINES.items():
            if baseline == name:
                continue
            base = {run: per_prompt(run / folder) for run in args.runs}
            for metric in METRICS:
                mean, stderr, means = combine([paired(base[r][metric], figures[r][metric]) for r in args.runs])
                summary[f"{name} - {baseline}: {metric}"] = {"mean": mean, "stderr": stderr, "per_run": means}
                per_run = ", ".join(f"{m:+.3f}" for m in means)
                rows.append([f"{name} - {baseline}", metric, f"{mean:+.3f} ± {stderr:.3f}", per_run])
    change_rows = []
    for name, evaluations in sources:
        for run, evaluation in evaluations.items():
            counts = answer_changes(run, evaluation)
            summary[f"{name}: answer changes: {run}"] = counts
            change_rows.append([name, str(run), *counts.values()])
    command = "python benchmarks/ppo_over_rs.py --runs " + " ".join(str(run) for run in args.runs)
    budget = ", ".join(f"{key} {value}" for key, value in BUDGET.items())
    body = (
        f"Command: `{command}`\n\nPPO budget: {budget}. Paired per prompt over {len(args.runs)} runs.\n\n"
        + markdown_table(["comparison", "figure", "mean ± s.e.", "per run"], rows)
        + "\n\nHeld-out helpfulness answers PPO changed from V5 without PPO's, by gold and the run's V5 R_h:\n\n"
        + markdown_table(["PPO", "run", *change_counts([]).keys()], change_rows)
    )
    print(body)
    print(json.dumps(summary, indent=1))
    if args.write:
        write_section(args.section, body)


if __name__ == "__main__":
    main()
