"""The safety benchmarks inside the pipeline: a `safety_eval` section names the versions to evaluate.

    safety_eval:
      versions: [base, SFT, RLHF-V1]    # any of base, SFT, RLHF-V<n>, RLHF-V<n>-noPPO
      toxigen_per_group: 8               # any recipes/safety_eval.py setting
      ...

Each version gets a stage `<version>/safety_eval` after the stage that makes it; the report gets the
analogue of Tables 11 and 14 (versions as rows; TruthfulQA MC2, % true, ToxiGen % toxic, BOLD sentiment).
"""

from __future__ import annotations

import json
from pathlib import Path

from alignment.config import RecipeError
from evals.report import TABLE_COLUMNS, plot_versions, versions_table

SCRIPT = "safety_eval.py"
STAGE_SUFFIX = "/safety_eval"


def safety_eval_stages(section: dict, stages: list, base_model: str, base_deps: list[str], stage_type) -> list:
    """Stages evaluating the named versions; `stages` are the planned ones (their evaluate stages name the
    model of each version), `stage_type` the pipeline's Stage class."""
    versions = list(section.get("versions", []))
    if not versions:
        return []
    settings = {k: v for k, v in section.items() if k != "versions"}
    models = {"base": (base_model, list(base_deps))}
    for stage in stages:
        if stage.version is not None:
            models[stage.version] = (stage.config["model"], stage.depends_on[:1])
    out = []
    for version in versions:
        if version not in models:
            raise RecipeError(
                f"safety_eval.versions: unknown version '{version}' (this run makes: {', '.join(models)})"
            )
        model, deps = models[version]
        out.append(
            stage_type(f"{version}{STAGE_SUFFIX}", SCRIPT, {**settings, "model": model, "model_name": version}, deps)
        )
    return out


def safety_rows(run_dir: Path, stages) -> list[tuple[str, dict]]:
    rows = []
    for stage in stages:
        if stage.script == SCRIPT:
            path = Path(run_dir) / stage.name / "results.json"
            if path.exists():
                rows.append((stage.name[: -len(STAGE_SUFFIX)], json.loads(path.read_text())))
    return rows


def safety_report(run_dir: Path, stages) -> tuple[dict, list[str], list[str]]:
    """(report.json entries, report.md lines, PNG files) for the versions' safety benchmarks; empty when none."""

    rows = safety_rows(run_dir, stages)
    if not rows:
        return {}, [], []
    entries = {
        name: {
            label: {
                "value": (r.get(bench) or {}).get(key),
                "stderr": (r.get(bench) or {}).get(err),
                "n": (r.get(bench) or {}).get("n"),
            }
            for label, bench, key, err, _ in TABLE_COLUMNS
        }
        for name, r in rows
    }
    lines = [
        "## Safety benchmarks (Tables 11 and 14 analogue)",
        "",
        "Mean ± standard error; n per benchmark in each version's `safety_eval/results.md`. % true is the "
        "TruthfulQA authors' ROUGE-L metric, not the paper's GPT-judge; ToxiGen uses the judge named there.",
        "",
    ]
    lines += versions_table(rows) + [""]
    plots = ["report_safety.png"] if plot_versions(rows, Path(run_dir) / "report_safety.png") else []
    return {"safety_benchmarks": entries}, lines, plots
