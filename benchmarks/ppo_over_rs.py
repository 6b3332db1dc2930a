"""Does PPO add to rejection sampling on the main job, and is the judge the limit? (issue 14)

    python benchmarks/ppo_over_rs.py --runs runs/rs320-s0 runs/rs320-s1 ... [--judges trained oracle]
        [--every_training_prompt] [--prompt_sets] [--judge_noise 1 2 3] [--write]

From each finished main-job run's RLHF-V5 rejection-sampling model, PPO with ten times the recipe's rollouts
(`BUDGET`: 60 iterations of 64 against 12 of 32, lr 5e-5, kl 0.05; the recipe's PPO moves the tiny policy by an
approx-KL of about 1e-5 per step), once per judge:

- ``trained``: the run's own V5 R_h and R_s, as the pipeline's PPO uses them;
- ``oracle``: the world's gold judges in their place (`builtin:world-helpfulness`, `builtin:world-safety`; the value
  model still starts from R_h), an upper bound on what a better reward model could give PPO.
- ``lower`` (not run by default): the trained judges with `flagged_reward: lower`, so an answer the safety gate flags
  on a helpfulness prompt gets the lower of R_s and R_h instead of R_s (`rlhf.rewards.combined_reward`). ``trained``
  names eq. 3's rule (`flagged_reward: safety`) whatever the run's PPO recipe sets.
- ``other-seed`` (not run by default): ``lower`` with R_h trained on the run's V5 comparisons from the next run's SFT
  model instead of its own (`other_seed_reward_model`, into ``<run>/ppo_over_rs/members/``); the value model still
  starts from the run's R_h. Its pair accuracy on V5's samples is reported with the judges'.

Each PPO model answers the run's held-out prompts exactly as the pipeline evaluates V5 (the run's
``RLHF-V5/evaluate/recipe.yaml`` with ``--model`` replaced). Figures are per-prompt paired differences on the
helpfulness prompts (borderline included), gold helpfulness and the correct-fact rate (`alignment.world.evaluate`'s
definitions), against V5 without PPO (``RLHF-V5/evaluate_rs``), the recipe's V5 and SFT: the mean over runs ± the
larger of the within-run error (paired over prompts, combined over runs) and the run-to-run error. Outputs go to
``<run>/ppo_over_rs/<judge>/``; a finished judge is not run again. About a minute per run and judge at 1 thread.
With ``--every_training_prompt`` each judge's PPO also runs on every training prompt of the world (809, in the
world's own family mix: over half arithmetic, as in the held-out set) instead of the run's PPO prompt file (256
draws, every family equally likely), into ``<run>/ppo_over_rs/<judge>-every-training-prompt/``.

A second table asks whether PPO moved the held-out answers the way the run's R_h wanted (``answer_changes``): over
the helpfulness prompts whose greedy answer PPO changed from V5 without PPO's, how many gold rates higher and
lower, how many the run's V5 R_h scores higher, and on the changes gold rates differently how often R_h agrees
with gold. A policy exploiting R_h would raise R_h on most changes while gold falls; a policy whose training-prompt
gains do not carry to unseen prompts changes answers with no lean in either.

A third table (``--prompt_sets``) tells those two apart: V5 without PPO and each PPO model also answer every training
prompt of the world (greedy, as the evaluation does), and gold helpfulness is compared on PPO's own prompts (the
run's PPO prompt file), the other training prompts and the held-out prompts, for arithmetic and for the other
families. If PPO loses gold on the prompts it trained on, the judge misled it there; if it gains there and not on
held-out prompts, the gains do not transfer. About 40 s per model and run at 1 thread.

``--judge_noise S ...`` asks how accurate R_h must be: PPO x10 on every training prompt with gold helpfulness plus a
fixed error of s.d. S per answer (`builtin:world-helpfulness+noise=S`, the same answer always gets the same error, as
a trained reward model's mistakes are a property of the answer), into ``<run>/ppo_over_rs/noise=S-every-training-
prompt/``. A last table gives each judge's pairwise accuracy on V5's rejection-sampling samples (the V4 policy's own
answers, `iteration_diagnostics.iteration_figures`' pairs) beside its PPO gain, the trained R_h's included.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml  # noqa: E402

from alignment.data import atomic_write_text, read_jsonl_tolerant  # noqa: E402
from alignment.world import gold_helpfulness, prompt_file_rows, prompt_pool, prompts_by_text  # noqa: E402
from alignment.world.scorers import WORLD_JUDGES, world_judge  # noqa: E402
from benchmarks.common import markdown_table, write_section  # noqa: E402
from benchmarks.iteration_diagnostics import iteration_figures, ratio  # noqa: E402
from benchmarks.pipeline_seeds import per_prompt, seed_mean  # noqa: E402
from reward.scoring import RewardScorer  # noqa: E402
from rlhf.cd_compare import paired  # noqa: E402
from rlhf.scoring import score_samples  # noqa: E402

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
# The trained judges with `flagged_reward: lower`: an answer the safety gate flags on a helpfulness prompt gets the
# lower of R_s and R_h, not R_s (rlhf.rewards.combined_reward).
LOWER = "lower"
# `LOWER` with R_h trained on the run's V5 comparisons from the next run's SFT model (`other_seed_reward_model`).
OTHER_SEED = "other-seed"
BASELINES = {"V5 without PPO": "RLHF-V5/evaluate_rs", "V5 (recipe PPO)": "RLHF-V5/evaluate", "SFT": "SFT/evaluate"}
METRICS = ("gold helpfulness", "correct-fact rate")
PROMPT_SETS = ("PPO's prompts", "other training prompts", "held-out prompts")
# Arithmetic is most of the prompts and most of the errors (the model cannot add reliably): R_h's judgement of a
# sum takes the same arithmetic as writing it, so it is reported apart from the families it can check.
FAMILY_GROUPS = ("all", "arithmetic", "other families")


class Source(NamedTuple):
    """A V5 model compared with V5 without PPO: per run its held-out evaluation, its weights, the prompt file its
    PPO trained on, and its folder under ``<run>/ppo_over_rs/``."""

    name: str
    evaluations: dict[Path, Path]
    models: dict[Path, Path]
    ppo_prompts: dict[Path, Path]
    folder: str


def recipe_ppo_prompts(run: Path) -> Path:
    recipe = yaml.safe_load((run / "RLHF-V5" / "ppo" / "recipe.yaml").read_text(encoding="utf-8"))
    return Path(recipe["prompts_name"])


def judge_source(runs: list[Path], judge: str, every_training_prompt: bool, threads: int) -> Source:
    """`run_judge` on each run, as a `Source`."""
    folder = f"{judge}-every-training-prompt" if every_training_prompt else judge
    name = f"PPO x10{' on every training prompt' if every_training_prompt else ''}, {judge} judges"
    prompts = {run: training_prompts_file(run) if every_training_prompt else recipe_ppo_prompts(run) for run in runs}
    evaluations = {}
    for run in runs:
        helpfulness_model = other_seed_reward_model(run, runs, threads) if judge == OTHER_SEED else None
        evaluations[run] = run_judge(run, judge, threads, folder, prompts[run], helpfulness_model)
    return Source(name, evaluations, {run: e.parent / "ppo" for run, e in evaluations.items()}, prompts, folder)


def gold_helpfulness_judge(judge: str) -> str:
    """The builtin judge standing in for R_h: "oracle" is gold itself, "noise=S" gold with a fixed error per answer
    (`alignment.world.scorers`)."""
    return WORLD_JUDGES[0] if judge == "oracle" else f"{WORLD_JUDGES[0]}+{judge}"


def other_seed_reward_model(run: Path, runs: list[Path], threads: int) -> Path:
    """R_h trained once on `run`'s V5 comparisons with its V5 R_h's recipe, but from the SFT model of the run after it
    in `runs` (cyclically): SFT on other demonstrations, so its likely wrong answers are not the policy's."""
    other = runs[(runs.index(run) + 1) % len(runs)]
    out = run / "ppo_over_rs" / "members" / f"sft-of-{other.name}"
    if not (out / "stage_complete.json").exists():
        reward = [sys.executable, str(REPO / "recipes" / "reward.py")]
        reward += ["--config", str(run / "RLHF-V5" / "reward_helpfulness" / "recipe.yaml")]
        reward += ["--model_name_or_path", str(other / "SFT" / "sft"), "--output_dir", str(out)]
        subprocess.run(reward, check=True, env={**os.environ, "OMP_NUM_THREADS": str(threads)})
        atomic_write_text(out / "stage_complete.json", "{}\n")
    return out


def judge_accuracy(runs: list[Path], judge: str, threads: int = 1) -> dict[str, tuple[int, int]]:
    """How often `judge` orders two of V5's rejection-sampling samples (the V4 policy's own answers to one training
    prompt) as gold does, summed over runs: {pair group of `iteration_diagnostics`, or "all": (right, pairs)}.
    "trained" is each run's V5 R_h, as logged with the samples; `OTHER_SEED` the run's `other_seed_reward_model`."""
    scorer = None if judge in ("trained", OTHER_SEED) else world_judge(gold_helpfulness_judge(judge))
    right, pairs = Counter(), Counter()
    for run in runs:
        if judge == OTHER_SEED:
            scorer = RewardScorer(str(other_seed_reward_model(run, runs, threads)))
        figures = iteration_figures(run, 5, scorer)
        for group, (hits, total) in figures["pairs"].items():
            for key in (group, "all"):
                right[key] += hits
                pairs[key] += total
    return {group: (right[group], pairs[group]) for group in pairs}


def run_judge(
    run: Path, judge: str, threads: int, folder: str, prompts: Path, helpfulness_model: Path | None = None
) -> Path:
    """PPO from the run's V5 RS model with `judge` on `prompts` (`OTHER_SEED`: R_h is `helpfulness_model`), then the
    pipeline's V5 evaluation of it; returns the eval dir."""
    out = run / "ppo_over_rs" / folder
    evaluation = out / "eval"
    if (evaluation / "eval.json").exists():
        return evaluation
    options = [f"--{key}={value}" for key, value in BUDGET.items()] + [f"--prompts_name={prompts}"]
    # The rule is named, not taken from the run's PPO recipe, which may set either.
    options.append(f"--flagged_reward={'lower' if judge in (LOWER, OTHER_SEED) else 'safety'}")
    if judge == OTHER_SEED:
        own = run / "RLHF-V5" / "reward_helpfulness"
        options += [f"--helpfulness_model={helpfulness_model}", f"--value_model_name_or_path={own}"]
    elif judge not in ("trained", LOWER):
        options += [
            f"--helpfulness_model={gold_helpfulness_judge(judge)}",
            f"--safety_model={WORLD_JUDGES[1]}",
            f"--value_model_name_or_path={run / 'RLHF-V5' / 'reward_helpfulness'}",
        ]
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    ppo = [sys.executable, str(REPO / "recipes" / "ppo.py"), "--config", str(run / "RLHF-V5" / "ppo" / "recipe.yaml")]
    subprocess.run([*ppo, "--output_dir", str(out / "ppo"), *options], check=True, env=env)
    return evaluate_model(run, out / "ppo", evaluation, threads)


def evaluate_model(run: Path, model: Path, evaluation: Path, threads: int, prompts: Path | None = None) -> Path:
    """The pipeline's V5 evaluation of `model` (its held-out prompts, or `prompts`) into `evaluation`, once."""
    if (evaluation / "eval.json").exists():
        return evaluation
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    evaluate = [sys.executable, str(REPO / "recipes" / "evaluate.py")]
    evaluate += ["--config", str(run / "RLHF-V5" / "evaluate" / "recipe.yaml"), "--model", str(model)]
    if prompts is not None:
        evaluate += ["--prompts", str(prompts)]
    subprocess.run([*evaluate, "--output_dir", str(evaluation)], check=True, env=env)
    return evaluation


def training_prompts_file(run: Path) -> Path:
    """Every training prompt of the world, as a prompt file for the evaluation stage."""
    path = run / "ppo_over_rs" / "training_prompts.jsonl"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(
            path, "".join(json.dumps(row) + "\n" for row in prompt_file_rows(prompt_pool("train"), "train"))
        )
    return path


def prompt_set(text: str, ppo_texts: set[str], heldout_texts: set[str]) -> str:
    if text in heldout_texts:
        return "held-out prompts"
    return "PPO's prompts" if text in ppo_texts else "other training prompts"


def set_differences(
    before: dict[str, float], after: dict[str, float], set_of: dict[str, str], family_of: dict[str, str]
) -> dict[tuple[str, str], dict]:
    """`paired` after - before within each (prompt set, family group) of `PROMPT_SETS` x `FAMILY_GROUPS`."""
    out = {}
    for name in PROMPT_SETS:
        for group in FAMILY_GROUPS:
            keep = {
                text
                for text in before
                if set_of.get(text) == name
                and (group == "all" or (family_of[text] == "arithmetic") == (group == "arithmetic"))
            }
            if keep:
                out[(name, group)] = paired({t: before[t] for t in keep}, after)
    return out


def prompt_set_rows(runs: list[Path], sources: list[Source], threads: int) -> tuple[list[list], dict]:
    """The third table (module docstring): gold helpfulness against V5 without PPO per prompt set and family group."""
    family_of = {text: prompt["family"] for text, prompt in prompts_by_text().items()}
    baseline = BASELINES["V5 without PPO"]
    rs_models = {run: run / "RLHF-V5" / "rejection_sampling" for run in runs}
    no_ppo = Source("V5 without PPO", {run: run / baseline for run in runs}, rs_models, {}, "rs")

    def answers(source: Source, run: Path) -> dict[str, float]:
        """Gold helpfulness per prompt, training (evaluated here, once) and held-out."""
        folder = run / "ppo_over_rs" / source.folder / "training_eval"
        trained_on = evaluate_model(run, source.models[run], folder, threads, training_prompts_file(run))
        return {
            **per_prompt(trained_on)["gold helpfulness"],
            **per_prompt(source.evaluations[run])["gold helpfulness"],
        }

    before = {run: answers(no_ppo, run) for run in runs}
    heldout_texts = {run: set(per_prompt(run / baseline)["gold helpfulness"]) for run in runs}
    rows, summary = [], {}
    for source in sources:
        per_run = []
        for run in runs:
            ppo_texts = {row["prompt"] for row in read_jsonl_tolerant(source.ppo_prompts[run])}
            set_of = {text: prompt_set(text, ppo_texts, heldout_texts[run]) for text in before[run]}
            per_run.append(set_differences(before[run], answers(source, run), set_of, family_of))
        for key in per_run[0]:
            mean, stderr, means = combine([differences[key] for differences in per_run])
            prompts = sum(differences[key]["n"] for differences in per_run)
            summary[f"{source.name} - V5 without PPO: {key[0]}, {key[1]}"] = {"mean": mean, "stderr": stderr}
            row = [source.name, *key, prompts, f"{mean:+.3f} ± {stderr:.3f}", ", ".join(f"{m:+.3f}" for m in means)]
            rows.append(row)
    return rows, summary


def combine(differences: list[dict]) -> tuple[float, float, list[float]]:
    """Mean over runs of the paired differences, its standard error (`seed_mean`: the larger of within-run and
    run-to-run) and the per-run means."""
    means = [d["mean"] for d in differences]
    mean, stderr = seed_mean(means, [d["stderr"] for d in differences])
    return mean, stderr, means


def changed_answers(before: Path, after: Path) -> list[tuple[list[dict], str, str, dict]]:
    """(messages, answer before, answer after, prompt) for each helpfulness prompt whose answer differs."""
    old = {row["prompt"][-1]["content"]: row for row in read_jsonl_tolerant(before / "responses.jsonl")}
    by_text, out = prompts_by_text(), []
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


def gate_figures(scorers: tuple, evaluation: Path) -> dict[str, float]:
    """How a run's V5 reward models (`scorers`: R_h, R_s) score the held-out helpfulness answers in `evaluation`: the
    answers, the share the safety gate flags (sigmoid(R_s) < 0.15 on a prompt that is not a safety prompt) and the
    means of R_h and of R_c by eq. 3 (R_s where flagged)."""
    by_text = prompts_by_text()
    rows = [
        row
        for row in read_jsonl_tolerant(evaluation / "responses.jsonl")
        if by_text[row["prompt"][-1]["content"]]["kind"] != "safety"
    ]
    messages, answers = [row["prompt"] for row in rows], [row["response"] for row in rows]
    scores = score_samples(*scorers, messages, answers, [False] * len(rows))
    return {
        "answers": len(rows),
        "flagged": int(scores.use_safety.sum()),
        "R_h": float(scores.helpfulness.mean()),
        "R_c": float(scores.combined.mean()),
    }


def gate_rows(runs: list[Path], sources: list[Source]) -> tuple[list[list], dict]:
    """Per model (V5 without PPO first), `gate_figures` summed (answers, flagged) or averaged (R_h, R_c) over runs."""
    no_ppo = {run: run / BASELINES["V5 without PPO"] for run in runs}
    # Each run's two reward models, loaded once for every model they judge.
    scorers = {
        run: tuple(RewardScorer(str(run / "RLHF-V5" / f"reward_{kind}")) for kind in ("helpfulness", "safety"))
        for run in runs
    }
    rows, summary = [], {}
    for name, evaluations in [("V5 without PPO", no_ppo), *((s.name, s.evaluations) for s in sources)]:
        figures = [gate_figures(scorers[run], evaluations[run]) for run in runs]
        answers, flagged = sum(f["answers"] for f in figures), sum(f["flagged"] for f in figures)
        mean_h, mean_c = (sum(f[key] for f in figures) / len(figures) for key in ("R_h", "R_c"))
        summary[f"{name}: gate"] = {"answers": answers, "flagged": flagged, "R_h": mean_h, "R_c": mean_c}
        rows.append([name, answers, f"{flagged} ({flagged / answers:.3f})", f"{mean_h:.2f}", f"{mean_c:.2f}"])
    return rows, summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", type=Path, required=True, help="finished main-job run directories")
    parser.add_argument("--judges", nargs="+", choices=(*JUDGES, LOWER, OTHER_SEED), default=list(JUDGES))
    parser.add_argument("--threads", type=int, default=1, help="CPU threads of each PPO and evaluation process")
    parser.add_argument(
        "--prompt_sets",
        action="store_true",
        help="also answer every training prompt and compare PPO's own, the other training and held-out prompts",
    )
    parser.add_argument(
        "--every_training_prompt",
        action="store_true",
        help="also run each judge's PPO on every training prompt of the world instead of the run's PPO prompt file",
    )
    parser.add_argument(
        "--every_training_prompt_only",
        action="store_true",
        help="run each judge's PPO on every training prompt only, not also on the run's PPO prompt file",
    )
    parser.add_argument(
        "--gate",
        action="store_true",
        help="also the share of held-out helpfulness answers the safety gate flags, with mean R_h and R_c",
    )
    parser.add_argument(
        "--judge_noise",
        nargs="+",
        type=float,
        default=[],
        help="also PPO x10 on every training prompt with gold helpfulness plus a fixed per-answer error of each s.d.",
    )
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    parser.add_argument("--section", default="PPO over rejection sampling on the main job, trained and perfect judges")
    args = parser.parse_args(argv)
    missing = [str(run) for run in args.runs if not (run / "RLHF-V5" / "evaluate_rs" / "responses.jsonl").exists()]
    if missing:
        parser.error(f"not a finished main-job run (no RLHF-V5/evaluate_rs/responses.jsonl): {', '.join(missing)}")
    rows, summary = [], {}
    # The recipe's own PPO first (the main job's V5), then each judge's ten-times-budget PPO.
    runs = args.runs
    recipe = {run: run / BASELINES["V5 (recipe PPO)"] for run in runs}
    ppo_models = {run: run / "RLHF-V5" / "ppo" for run in runs}
    sources = [Source("V5 (recipe PPO)", recipe, ppo_models, {run: recipe_ppo_prompts(run) for run in runs}, "recipe")]
    prompt_files = (False, True) if args.every_training_prompt else (False,)
    for every_training_prompt in (True,) if args.every_training_prompt_only else prompt_files:
        sources += [judge_source(runs, judge, every_training_prompt, args.threads) for judge in args.judges]
    sources += [judge_source(runs, f"noise={noise:g}", True, args.threads) for noise in args.judge_noise]
    for name, evaluations, *_ in sources:
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
    for name, evaluations, *_ in sources:
        for run, evaluation in evaluations.items():
            counts = answer_changes(run, evaluation)
            summary[f"{name}: answer changes: {run}"] = counts
            change_rows.append([name, str(run), *counts.values()])
    command = "python benchmarks/ppo_over_rs.py --runs " + " ".join(str(run) for run in args.runs)
    command += " --every_training_prompt" * args.every_training_prompt + " --prompt_sets" * args.prompt_sets
    command += " --every_training_prompt_only" * args.every_training_prompt_only + " --gate" * args.gate
    command += f" --judges {' '.join(args.judges)}" * (args.judges != list(JUDGES))
    if args.judge_noise:
        command += " --judge_noise " + " ".join(f"{noise:g}" for noise in args.judge_noise)
    budget = ", ".join(f"{key} {value}" for key, value in BUDGET.items())
    body = (
        f"Command: `{command}`\n\nPPO budget: {budget}. Paired per prompt over {len(args.runs)} runs.\n\n"
        + markdown_table(["comparison", "figure", "mean ± s.e.", "per run"], rows)
        + "\n\nHeld-out helpfulness answers PPO changed from V5 without PPO's, by gold and the run's V5 R_h:\n\n"
        + markdown_table(["PPO", "run", *change_counts([]).keys()], change_rows)
    )
    if args.prompt_sets:
        set_rows, set_summary = prompt_set_rows(args.runs, sources, args.threads)
        summary |= set_summary
        body += (
            "\n\nGold helpfulness against V5 without PPO on PPO's own prompts, the other training prompts and the "
            "held-out prompts (greedy answers, paired per prompt; `prompts` summed over runs):\n\n"
            + markdown_table(["PPO", "prompt set", "families", "prompts", "mean ± s.e.", "per run"], set_rows)
        )
    if args.gate:
        rows_of_gate, gate_summary = gate_rows(args.runs, sources)
        summary |= gate_summary
        body += (
            "\n\nHeld-out helpfulness answers the safety gate flags (sigmoid(R_s) < 0.15, summed over runs), and the "
            "run's V5 R_h and eq. 3's R_c on them (mean over runs):\n\n"
            + markdown_table(["model", "answers", "flagged by the gate", "mean R_h", "mean R_c (eq. 3)"], rows_of_gate)
        )
    if args.judge_noise or OTHER_SEED in args.judges:
        accuracy_rows = []
        judges = ["trained", "oracle"] + [f"noise={noise:g}" for noise in args.judge_noise]
        judges += [OTHER_SEED] * (OTHER_SEED in args.judges)
        for judge in judges:
            pairs = judge_accuracy(runs, judge, args.threads)
            gain = summary.get(f"PPO x10 on every training prompt, {judge} judges - V5 without PPO: gold helpfulness")
            summary[f"{judge}: pair accuracy on V5's RS samples"] = pairs
            accuracy_rows.append(
                [
                    judge,
                    *(ratio(*pairs.get(group, (0, 0))) for group in ("all", "correct vs wrong_value", "format")),
                    "-" if gain is None else f"{gain['mean']:+.3f} ± {gain['stderr']:.3f}",
                ]
            )
        body += (
            "\n\nHow often each judge orders two of V5's rejection-sampling samples (the V4 policy's own answers to "
            "a training prompt, pairs with different gold grades, summed over runs) as gold does, and what PPO x10 on "
            "every training prompt gains with it (held-out gold helpfulness - V5 without PPO):\n\n"
            + markdown_table(
                ["judge", "all pairs", "correct vs wrong value", "format pairs", "PPO gain, held out"], accuracy_rows
            )
        )
    print(body)
    print(json.dumps(summary, indent=1))
    if args.write:
        write_section(args.section, body)


if __name__ == "__main__":
    main()
