"""The pipeline's report: each model version judged by gold and by the final reward models (figure 11's
analogue), reward-model accuracy per rating level per iteration, the RS max-vs-median curve and PPO curves.

Written as `<run_dir>/report.json`, `report.md` and PNG plots beside them.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from matplotlib import colormaps
from matplotlib.figure import Figure

from alignment.data import atomic_write_json, atomic_write_text, read_jsonl_tolerant
from alignment.pipeline.manifest import read_manifest
from alignment.ratings import RATINGS
from evals.pipeline import safety_report
from rlhf.evaluate import EvaluateConfig, run_evaluate

VERSION_KEYS = (
    "gold_helpfulness",
    "gold_correct_rate",
    "gold_violation_rate",
    "gold_false_refusal_rate",
    "gold_combined",
    "rm_helpfulness",
    "rm_safety",
)
STDERR_KEYS = (
    "gold_helpfulness_stderr",
    "gold_correct_rate_stderr",
    "gold_violation_rate_stderr",
    "gold_false_refusal_rate_stderr",
)


def _load_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.exists() else None


def final_reward_models(stages) -> tuple[str | None, str | None]:
    rm_h = [s.name for s in stages if s.name.endswith("/reward_helpfulness")]
    rm_s = [s.name for s in stages if s.name.endswith("/reward_safety")]
    return (rm_h[-1] if rm_h else None), (rm_s[-1] if rm_s else None)


def version_rows(config, run_dir: Path, stages, data: dict) -> list[dict]:
    """Gold figures from each version's evaluation; RM figures re-scored with the final R_h and R_s, so every
    version is judged by the same reward models."""
    rm_h, rm_s = final_reward_models(stages)
    rows = []
    for stage in stages:
        if stage.version is None:
            continue
        folder = run_dir / stage.name
        result = _load_json(folder / "eval.json") or {}
        rescored = {}
        if rm_h and rm_s and (folder / "responses.jsonl").exists():
            rescored = run_evaluate(
                EvaluateConfig(
                    responses=str(folder / "responses.jsonl"),
                    prompts=data["eval"],
                    chat_format=config.chat_format,
                    reward_helpfulness=str(run_dir / rm_h),
                    reward_safety=str(run_dir / rm_s),
                    output_dir=str(run_dir / "report" / stage.version),
                )
            )
        # The folder of the version's answers: benchmarks pair two versions prompt by prompt from it.
        row = {"name": stage.version, "evaluation": stage.name}
        for key in (*VERSION_KEYS, *STDERR_KEYS, "n_helpfulness", "n_safety", "n_borderline"):
            row[key] = rescored.get(key, result.get(key))
        row["per_family"] = result.get("per_family")
        rows.append(row)
    # The paper's order: SFT, RLHF-V1, ..., RLHF-V5-noPPO beside RLHF-V5.
    return rows


def reward_accuracy(run_dir: Path, stages) -> list[dict]:
    rows = []
    for stage in stages:
        if stage.script != "reward.py":
            continue
        result = _load_json(run_dir / stage.name / "eval.json")
        if result:
            rows.append(
                {"stage": stage.name, **{k: result[k] for k in ("accuracy", "per_rating", "test_sets") if k in result}}
            )
    return rows


RATING_HEADERS = ("significantly better", "better", "slightly better", "negligibly better / unsure")
MODEL_NAMES = {"reward_helpfulness": "Helpfulness RM", "reward_safety": "Safety RM"}


def accuracy_cell(cell: dict | None) -> str:
    """Accuracy in %, its binomial standard error, and the number of held-out pairs behind it."""
    count = (cell or {}).get("count") or 0
    accuracy = (cell or {}).get("accuracy")
    if not count or accuracy is None:
        return f"- (n={count})"
    stderr = math.sqrt(accuracy * (1 - accuracy) / count)
    return f"{100 * accuracy:.1f} ± {100 * stderr:.1f} (n={count})"


def reward_accuracy_table(reward_rows: list[dict]) -> list[str]:
    """Markdown lines: held-out accuracy per rating level in the layout of the paper's Table 8 (arXiv 2307.09288),
    one row per iteration, model and test set; avg is the accuracy over all of the row's pairs."""
    lines = [
        "| iteration | model | test set | " + " | ".join(RATING_HEADERS) + " | avg |",
        "|---|---|---|" + "---|" * (len(RATINGS) + 1),
    ]
    for row in reward_rows:
        if "accuracy" not in row:
            continue
        iteration, _, stage = row["stage"].rpartition("/")
        model = MODEL_NAMES.get(stage, stage)
        test_sets = {"all": row["accuracy"], **(row.get("test_sets") or {})}
        for test_set, accuracy in test_sets.items():
            cells = [accuracy_cell(accuracy.get(rating)) for rating in RATINGS]
            lines.append(
                f"| {iteration} | {model} | {test_set} | "
                + " | ".join(cells)
                + f" | {accuracy_cell(accuracy.get('overall'))} |"
            )
    return lines


def _plot(run_dir: Path, versions: list[dict], reward_rows: list[dict], stages) -> list[str]:
    written = []

    def save(fig, name: str) -> None:
        fig.tight_layout()
        fig.savefig(run_dir / name, dpi=110)
        written.append(name)

    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    for axis, (x_key, y_key, title) in zip(
        axes,
        (
            ("gold_violation_rate", "gold_helpfulness", "gold judges"),
            ("rm_safety", "rm_helpfulness", "final reward models"),
        ),
    ):
        points = [(v[x_key], v[y_key], v["name"]) for v in versions if v[x_key] is not None and v[y_key] is not None]
        if not points:
            continue
        xs = [1 - p[0] if x_key == "gold_violation_rate" else p[0] for p in points]
        ys = [p[1] for p in points]
        axis.plot(xs, ys, "-o", color="tab:blue")
        for x, y, name in zip(xs, ys, (p[2] for p in points)):
            axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        axis.set_xlabel(
            "harmlessness (1 - violation rate)"
            if x_key == "gold_violation_rate"
            else "mean sigmoid(R_s), safety prompts"
        )
        axis.set_ylabel(
            "gold helpfulness" if y_key == "gold_helpfulness" else "mean sigmoid(R_h), helpfulness prompts"
        )
        axis.set_title(f"Versions judged by {title} (fig. 11 analogue)")
        axis.grid(alpha=0.3)
    save(fig, "report_versions.png")

    if reward_rows and any("per_rating" in r for r in reward_rows):
        fig = Figure(figsize=(7, 4))
        axis = fig.subplots()
        for row in reward_rows:
            per = row.get("per_rating") or {}
            levels = [k for k in per if isinstance(per[k], dict)]
            accs = [per[k].get("accuracy") for k in levels]
            if levels:
                axis.plot(
                    range(len(levels)), [a if a is not None else float("nan") for a in accs], "-o", label=row["stage"]
                )
                axis.set_xticks(range(len(levels)), levels, rotation=15)
        axis.set_ylabel("held-out accuracy")
        axis.set_title("Reward-model accuracy per rating level")
        axis.legend(fontsize=6)
        save(fig, "report_reward_accuracy.png")

    rs_curves = [
        (s.name, _load_json(run_dir / s.name / "reward_vs_k.json"))
        for s in stages
        if s.script == "rejection_sampling.py"
    ]
    rs_curves = [(name, curve) for name, curve in rs_curves if curve]
    if rs_curves:
        fig = Figure(figsize=(7, 4))
        axis = fig.subplots()
        for index, (name, curve) in enumerate(rs_curves):
            color = colormaps["viridis"](index / max(len(rs_curves) - 1, 1))
            axis.plot(curve["k"], curve["max"], "-o", color=color, label=f"{name.split('/')[0]} max")
            axis.plot(curve["k"], curve["median"], "--", color=color, label=f"{name.split('/')[0]} median")
        axis.set_xscale("log", base=2)
        axis.set_xlabel("K samples per prompt")
        axis.set_ylabel("R_c")
        axis.set_title("Rejection sampling: max vs median reward over K (fig. 7 analogue)")
        axis.legend(fontsize=6, ncol=2)
        save(fig, "report_rejection_sampling.png")

    ppo_runs = [
        (s.name, read_jsonl_tolerant(run_dir / s.name / "metrics.jsonl")) for s in stages if s.script == "ppo.py"
    ]
    ppo_runs = [(name, rows) for name, rows in ppo_runs if rows]
    if ppo_runs:
        fig = Figure(figsize=(11, 4))
        axes = fig.subplots(1, 2)
        for name, rows in ppo_runs:
            iterations = [row["iteration"] for row in rows]
            axes[0].plot(iterations, [row.get("reward/combined") for row in rows], "-o", label=name)
            axes[1].plot(iterations, [row.get("kl") for row in rows], "-o", label=name)
        axes[0].set_title("PPO: mean R_c per iteration")
        axes[1].set_title("PPO: KL(pi_theta || pi_0) per iteration")
        for axis in axes:
            axis.set_xlabel("PPO iteration")
            axis.legend(fontsize=7)
        save(fig, "report_ppo.png")
    return written


def write_report(config, run_dir: Path, stages, data: dict) -> dict:
    versions = version_rows(config, run_dir, stages, data)
    reward_rows = reward_accuracy(run_dir, stages)
    manifest = read_manifest(run_dir)
    rs_reports = {s.name: str(run_dir / s.name) for s in stages if s.script == "rejection_sampling.py"}
    ppo_runs = {s.name: str(run_dir / s.name) for s in stages if s.script == "ppo.py"}
    report = {
        "versions": versions,
        "reward_models": reward_rows,
        "rejection_sampling_runs": rs_reports,
        "ppo_runs": ppo_runs,
        "wall_seconds": manifest.get("wall_seconds"),
        "stage_seconds": {name: rec.get("seconds") for name, rec in manifest["stages"].items()},
    }
    plots = _plot(run_dir, versions, reward_rows, stages)
    # The paper's safety benchmarks per version, when the recipe has a safety_eval section (evals/pipeline.py).
    safety_entries, safety_lines, safety_plots = safety_report(run_dir, stages)
    report.update(safety_entries)
    plots += safety_plots
    report["plots"] = plots
    atomic_write_json(run_dir / "report.json", report)

    def fmt(value):
        return "-" if value is None else f"{value:.3f}"

    def with_stderr(version: dict, key: str) -> str:
        stderr = version.get(f"{key}_stderr")
        return fmt(version[key]) + ("" if stderr is None else f" ± {stderr:.3f}")

    counts = next((v for v in versions if v.get("n_helpfulness") is not None), {})
    lines = [
        "# Pipeline report",
        "",
        f"Run directory: `{run_dir}`; wall time {fmt(report['wall_seconds'])} s.",
        "",
        f"Gold figures ± their standard error over prompts: helpfulness on {counts.get('n_helpfulness')} held-out "
        f"prompts ({counts.get('n_borderline')} of them borderline), violations on {counts.get('n_safety')} "
        "adversarial prompts.",
        "",
        "| version | gold helpfulness | gold correct-fact rate | gold violation rate | gold false-refusal rate | "
        "gold combined | RM helpfulness | RM safety |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for v in versions:
        cells = [with_stderr(v, k) if f"{k}_stderr" in STDERR_KEYS else fmt(v[k]) for k in VERSION_KEYS]
        lines.append(f"| {v['name']} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "RM figures: mean sigmoid score of the final R_h on helpfulness prompts and of the final R_s on "
        "safety prompts; gold figures: the world's judges (see alignment/world).",
        "",
    ]
    lines += safety_lines
    if reward_rows:
        lines += [
            "## Reward models: held-out accuracy per rating level (Table 8 layout)",
            "",
            "Accuracy in % ± standard error (n = held-out pairs) of the reward models trained in each "
            "iteration, on their held-out comparisons (the reward stage's eval.json); test set 'all' is every "
            "held-out pair, the others split them by pool: 'helpfulness' and 'safety' are the collected pairs, "
            "'open_source' the world's off-policy pairs and 'rm_test' the fixed test set on held-out prompts, "
            "the same pairs at every iteration. Columns: the annotators' rating of the pair "
            "(arXiv 2307.09288, sec. 3.2.1); avg: all of the row's pairs.",
            "",
            *reward_accuracy_table(reward_rows),
            "",
        ]
    lines += [f"![versions]({p})" for p in plots]
    atomic_write_text(run_dir / "report.md", "\n".join(lines) + "\n")
    return report
