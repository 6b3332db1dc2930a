"""results.md and results.png of one safety-eval run, and the versions table (Tables 11/14's analogue)."""

from __future__ import annotations

from pathlib import Path

from matplotlib.figure import Figure

from alignment.data import atomic_write_text

# Columns of the versions table: (label, benchmark, value key, stderr key, scale to percent).
TABLE_COLUMNS = (
    ("TruthfulQA MC2 (%)", "truthfulqa", "mc2", "mc2_stderr", 100.0),
    ("TruthfulQA % true (ROUGE-L)", "truthfulqa", "true", "true_stderr", 100.0),
    ("ToxiGen % toxic", "toxigen", "toxic_rate", "stderr", 100.0),
    ("BOLD mean sentiment", "bold", "mean", "stderr", 1.0),
)


def with_stderr(value, stderr, scale: float = 1.0, digits: int = 2) -> str:
    if value is None:
        return "-"
    text = f"{value * scale:.{digits}f}"
    return text if stderr is None else f"{text} ± {stderr * scale:.{digits}f}"


def versions_table(rows: list[tuple[str, dict]]) -> list[str]:
    """Markdown table: one row per (version name, results.json), TruthfulQA/ToxiGen/BOLD columns with stderr."""
    lines = [
        "| version | " + " | ".join(label for label, *_ in TABLE_COLUMNS) + " |",
        "|---|" + "---|" * len(TABLE_COLUMNS),
    ]
    for name, results in rows:
        cells = []
        for _, bench, key, err, scale in TABLE_COLUMNS:
            section = results.get(bench) or {}
            digits = 3 if scale == 1.0 else 2
            cells.append(with_stderr(section.get(key), section.get(err), scale, digits))
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def judge_line(toxigen: dict) -> str:
    judge = toxigen["judge"]
    line = (
        f"ToxiGen judge: `{judge['name']}`, trained on {judge['train_n']} human-labelled sentences; held-out "
        f"accuracy {judge['heldout_accuracy']:.3f}, AUC {judge['heldout_auc']:.3f} (n={judge['heldout_n']})."
    )
    if not toxigen.get("reported", True):
        line += f" **{toxigen['withheld']}**"
    return line


def write_model_report(results: dict, output: Path, plot_file: str, report_file: str) -> str | None:
    lines = [
        f"# Safety benchmarks: {results['model']}",
        "",
        "arXiv 2307.09288 sec. 4.1 / 4.4, Tables 11 and 14. Every figure: mean ± standard error (n).",
        "",
    ]
    lines += versions_table([(results["model"], results)]) + [""]
    if "truthfulqa" in results:
        t = results["truthfulqa"]
        lines += [
            "## TruthfulQA",
            "",
            f"n = {t['n']} questions. MC1 {with_stderr(t['mc1'], t['mc1_stderr'], 100)} %, "
            f"MC2 {with_stderr(t['mc2'], t['mc2_stderr'], 100)} % (lm-eval's truthfulqa_mc1/mc2 definition, "
            f"backend `{t['mc_backend']}`).",
            f"{t['true_metric']}: {with_stderr(t['true'], t['true_stderr'], 100)} %; by BLEU "
            f"{with_stderr(t['true_bleu'], t['true_bleu_stderr'], 100)} %.",
            "",
        ]
    if "toxigen" in results:
        x = results["toxigen"]
        lines += [
            "## ToxiGen",
            "",
            judge_line(x),
            "",
            f"n = {x['n']} continuations; % toxic {with_stderr(x['toxic_rate'], x['stderr'], 100)}.",
            "",
            "| group | % toxic | n |",
            "|---|---|---|",
        ]
        for group, rate in x["per_group"].items():
            lines.append(
                f"| {group} | {with_stderr(rate, x['per_group_stderr'][group], 100)} | {x['per_group_n'][group]} |"
            )
        lines.append("")
    if "bold" in results:
        b = results["bold"]
        lines += [
            "## BOLD (VADER compound, -1 to 1)",
            "",
            f"n = {b['n']} continuations; mean {with_stderr(b['mean'], b['stderr'], 1, 3)}. "
            f"Left out: {', '.join(b['excluded'])}.",
            "",
            "| domain | mean sentiment | n |",
            "|---|---|---|",
        ]
        for domain, value in b["per_domain"].items():
            lines.append(
                f"| {domain} | {with_stderr(value, b['per_domain_stderr'][domain], 1, 3)} | "
                f"{b['per_domain_n'][domain]} |"
            )
        lines += ["", "| group | mean sentiment | n |", "|---|---|---|"]
        for group, value in b["per_group"].items():
            lines.append(
                f"| {group} | {with_stderr(value, b['per_group_stderr'][group], 1, 3)} | {b['per_group_n'][group]} |"
            )
        lines.append("")
    speed = results.get("generation_speed", {}).get("all", {})
    if speed.get("tokens_per_s"):
        lines += [
            f"Generation: {speed['new_tokens']} new tokens in {speed['seconds']} s "
            f"({speed['tokens_per_s']} tokens/s); whole run {results.get('seconds')} s.",
            "",
        ]
    plot = plot_model(results, output / plot_file)
    if plot:
        lines.append(f"![safety benchmarks]({plot_file})")
    atomic_write_text(output / report_file, "\n".join(lines) + "\n")
    return plot_file if plot else None


def plot_model(results: dict, path: Path) -> bool:

    panels = [name for name in ("truthfulqa", "toxigen", "bold") if name in results]
    if not panels:
        return False
    fig = Figure(figsize=(5.5 * len(panels), 4.5))
    axes = fig.subplots(1, len(panels), squeeze=False)
    for axis, name in zip(axes[0], panels):
        r = results[name]
        if name == "truthfulqa":
            keys = [("MC1", "mc1"), ("MC2", "mc2"), ("% true\n(ROUGE-L)", "true"), ("% true\n(BLEU)", "true_bleu")]
            values = [100 * (r[k] or 0) for _, k in keys]
            errors = [100 * (r[f"{k}_stderr"] or 0) for _, k in keys]
            axis.bar([label for label, _ in keys], values, yerr=errors, color="tab:blue", capsize=3)
            axis.set_ylabel("%")
            axis.set_title(f"TruthfulQA (n={r['n']})")
        elif name == "toxigen" and not r.get("reported", True):
            axis.axis("off")
            axis.text(
                0.5,
                0.5,
                f"ToxiGen (n={r['n']}): withheld\n{r['withheld']}",
                ha="center",
                va="center",
                wrap=True,
                fontsize=9,
            )
        elif name == "toxigen":
            groups = list(r["per_group"])
            values = [100 * (r["per_group"][g] or 0) for g in groups]
            errors = [100 * (r["per_group_stderr"][g] or 0) for g in groups]
            axis.barh(groups, values, xerr=errors, color="tab:red", capsize=2)
            axis.set_xlabel("% toxic")
            axis.set_title(
                f"ToxiGen (n={r['n']}), judge held-out acc {r['judge']['heldout_accuracy']:.2f}, "
                f"AUC {r['judge']['heldout_auc']:.2f}",
                fontsize=9,
            )
            axis.tick_params(axis="y", labelsize=7)
        else:
            domains = list(r["per_domain"])
            values = [r["per_domain"][d] for d in domains]
            errors = [r["per_domain_stderr"][d] or 0 for d in domains]
            axis.bar(domains, values, yerr=errors, color="tab:green", capsize=3)
            axis.axhline(0, color="black", linewidth=0.6)
            axis.set_ylabel("mean VADER compound")
            axis.set_title(f"BOLD (n={r['n']})")
            axis.tick_params(axis="x", labelrotation=20, labelsize=8)
    fig.suptitle(results["model"], fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True


def plot_versions(rows: list[tuple[str, dict]], path: Path) -> bool:
    """One panel per table column, versions side by side with stderr bars."""

    if not rows:
        return False
    fig = Figure(figsize=(4 * len(TABLE_COLUMNS), 3.8))
    axes = fig.subplots(1, len(TABLE_COLUMNS))
    names = [name for name, _ in rows]
    for axis, (label, bench, key, err, scale) in zip(axes, TABLE_COLUMNS):
        values = [((r.get(bench) or {}).get(key) or 0) * scale for _, r in rows]
        errors = [((r.get(bench) or {}).get(err) or 0) * scale for _, r in rows]
        axis.bar(names, values, yerr=errors, capsize=3, color="tab:purple")
        axis.set_title(label, fontsize=9)
        axis.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    return True
