"""The iterated Llama 2-Chat pipeline, SFT then RLHF-V1..V5, from one YAML recipe.

arXiv 2307.09288, sec. 3.2.3 and 3.4: before each iteration new comparisons are collected from the latest model;
R_h and R_s are retrained on everything collected so far; rejection-sampling fine-tuning makes the next
model (V1..V4); from `ppo_from_iteration` (V5 in the paper) PPO runs on top of the RS checkpoint.

Every stage runs as its own process (`accelerate launch recipes/<stage>.py --config ... --output_dir ...`,
argument lists only), so a stage's memory is freed when it ends and each stage can use the recipe's
accelerate config. The run directory holds one folder per iteration and stage and a manifest recording each
stage's config hash; a stage's hash covers its config and the hashes of the stages it reads from, so:
- re-running the same command skips finished stages and resumes an interrupted one (stages resume from
  their own checkpoints / append-only logs);
- a stage whose config changed is re-run, and so is everything downstream of it (their hashes change too);
- a kill -9 at any moment loses no finished stage: the manifest is replaced atomically after each stage,
  and comparisons are append-only.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import random
import runpy
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
import yaml

from alignment.config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    PROBABILITY,
    RecipeError,
    check_range,
    check_recipe_keys,
    coerce_value,
    load_yaml,
    merge_overrides,
    parse_overrides,
    section_fields,
)
from alignment.data import atomic_write_json, atomic_write_text
from alignment.pipeline.manifest import MANIFEST, Stage, read_manifest
from alignment.pipeline.report import write_report
from alignment.stages import BY_SECTION, RECIPES_DIR, STAGES, stage_by_script
from alignment.world import (
    eval_prompts,
    open_source_comparisons,
    prompt_file_rows,
    prompt_pool,
    sample_prompts,
    sft_demonstrations,
)
from alignment.world.scorers import WORLD_JUDGES
from evals.pipeline import safety_eval_stages

LAUNCHERS = ("auto", "accelerate", "python")
REPO_ROOT = RECIPES_DIR.parent
# Every stage's modules (torch, transformers, TRL, ...) are imported here, once: forked stages inherit them.
STAGE_CONFIG_TYPES = {spec.script: spec.config_types() for spec in STAGES if spec.name != "pipeline"}


@dataclass
class PipelineConfig:
    run_dir: str = field(default="runs/pipeline", metadata={"help": "One folder per iteration and stage."})
    launcher: str = field(
        default="auto",
        metadata={
            "help": "auto: a single-process stage runs in a child forked from the pipeline (its libraries "
            "already imported, its memory freed when it ends), and `accelerate launch` runs a stage "
            "with accelerate_config; accelerate: `accelerate launch` for every stage; python: plain "
            "python for every stage."
        },
    )
    threads_per_process: int | None = field(
        default=None,
        metadata={
            "range": AT_LEAST_ONE,
            "help": "CPU threads of each stage process; default: the cores / the processes.",
        },
    )
    accelerate_config: str | None = field(default=None, metadata={"help": "accelerate config file for every stage."})
    chat_format: str = field(default="llama2", metadata={"help": "Chat template used by every stage."})
    seed: int = field(default=0, metadata={"help": "Seed of the world's prompt draws."})
    base_model: str | None = field(default=None, metadata={"help": "Start from this model instead of pretraining."})
    iterations: int = field(default=5, metadata={"range": AT_LEAST_ONE, "help": "RLHF-V1..Vn (the paper: 5)."})
    ppo_from_iteration: int = field(
        default=5, metadata={"range": AT_LEAST_ONE, "help": "PPO on top of RS from this iteration (paper: V5)."}
    )
    rs_fine_tunes: str = field(
        default="latest",
        metadata={
            "help": "The model each RS iteration fine-tunes on the pooled best samples: 'latest' (the model "
            "that sampled them) or 'sft' (the SFT model every time, so the errors a weak reward model "
            "lets through are not trained in again and again). The latest model samples either way."
        },
    )
    oracle_judges: bool = field(
        default=False,
        metadata={
            "help": "Diagnostic: rejection sampling and PPO pick answers with the world's gold judges "
            "(builtin:world-helpfulness / -safety) instead of the trained reward models, which are still "
            "trained and reported. What a perfect reward model would give, on the embedded world only."
        },
    )
    world: dict = field(default_factory=dict, metadata={"help": "Sizes of the embedded world's prompt sets."})
    data_files: dict = field(
        default_factory=dict,
        metadata={
            "help": "Your own data instead of the world's: sft, eval, ppo, collect_v<n>, rs_v<n> (prompt "
            "files) and labels_v<n> (human comparisons, with collect.annotator: file)."
        },
    )
    pretrain: dict = field(default_factory=dict, metadata={"help": "recipes/pretrain.py settings."})
    sft: dict = field(default_factory=dict, metadata={"help": "recipes/sft.py settings."})
    collect: dict = field(default_factory=dict, metadata={"help": "recipes/collect.py settings."})
    reward_helpfulness: dict = field(default_factory=dict, metadata={"help": "recipes/reward.py settings for R_h."})
    reward_safety: dict = field(default_factory=dict, metadata={"help": "recipes/reward.py settings for R_s."})
    rejection_sampling: dict = field(
        default_factory=dict, metadata={"help": "recipes/rejection_sampling.py settings."}
    )
    ppo: dict = field(default_factory=dict, metadata={"help": "recipes/ppo.py settings."})
    evaluate: dict = field(default_factory=dict, metadata={"help": "recipes/evaluate.py settings."})
    safety_eval: dict = field(
        default_factory=dict,
        metadata={
            "help": "TruthfulQA/ToxiGen/BOLD (evals/pipeline.py): 'versions' to evaluate (base, SFT, "
            "RLHF-V<n>) and any recipes/safety_eval.py settings."
        },
    )
    gatt_from_iteration: int | None = field(
        default=None,
        metadata={
            "help": "Ghost Attention from this iteration on (sec. 3.3: after RLHF-V3): the latest model samples GAtt "
            "dialogues, which join that iteration's rejection-sampling fine-tune. None: off."
        },
    )
    gatt: dict = field(default_factory=dict, metadata={"help": "recipes/gatt.py settings of the GAtt data."})
    context_distillation: dict = field(
        default_factory=dict,
        metadata={"help": "recipes/context_distillation.py settings (sec. 4.2.4); empty: no such stage."},
    )
    context_distillation_after: int | None = field(
        default=None,
        metadata={"help": "Distil after this RLHF iteration (default the last); later iterations start from it."},
    )


WORLD_DEFAULTS = {
    "sft_demonstrations": 300,
    "collect_prompts_per_iteration": 256,
    "rs_prompts_per_iteration": 128,
    "ppo_prompts": 512,
    # PPO on every training prompt of the world, in the world's own family mix (as the held-out set's), instead of
    # ppo_prompts draws with every family equally likely.
    "ppo_every_training_prompt": False,
    "eval_prompts_per_family": 16,
    "annotator_noise": 0.2,
    # Family weights of the SFT demonstrations (uniform when empty). Fewer refusal demonstrations than the
    # other families leave the SFT model unsafe sometimes, as a real SFT model is, so RLHF has work to do.
    "sft_family_weights": {},
    # Share of helpful demonstrations that end with the writer's habit "i hope that helps." (rambling to the
    # gold judges): behaviour the demonstrations teach and the annotators' preferences can untrain.
    "sft_closing_share": 0.0,
    # Off-policy comparisons (the paper's open-source preference data, sec. 3.2.2) in the Helpfulness RM's
    # "open_source" mixing pool; 0 = none.
    "open_source_comparisons": 0,
    # A fixed reward-model test set: comparisons of world answers on held-out prompts, the same for every
    # iteration, so R_h's accuracy is comparable across iterations (test set "rm_test"); 0 = none.
    "rm_test_comparisons": 0,
    # Share of the collected borderline prompts (risky words, benign asks) judged under the safety guidelines,
    # as a red-teamer's prompt that turns out benign is: both answers are safe, so the more helpful one wins
    # (the paper's "both safe" safety comparisons, 47% of them, sec. 3.2.1) and R_s sees a helpful answer
    # beat a needless refusal. 0 = every borderline prompt is judged for helpfulness.
    "borderline_safety_annotation": 0.0,
}
WORLD_RANGES = {
    "annotator_noise": NON_NEGATIVE,
    "sft_closing_share": PROBABILITY,
    "borderline_safety_annotation": PROBABILITY,
    "open_source_comparisons": NON_NEGATIVE,
    "rm_test_comparisons": NON_NEGATIVE,
    **{
        key: AT_LEAST_ONE
        for key in WORLD_DEFAULTS
        if key.endswith(("_demonstrations", "_prompts", "_per_iteration", "_per_family"))
    },
}
MAX_ITERATIONS = 20


def stage_config_types(script: str) -> tuple[type, ...]:
    """The dataclasses a stage script parses, to validate the pipeline recipe before anything runs."""
    stage_by_script(script)  # an unknown script fails here, naming the known ones
    return STAGE_CONFIG_TYPES[script]


def pipeline_sections() -> dict[str, dict]:
    """The keys of each mapping section of a pipeline recipe, with their types and ranges (for `--section.key`)."""
    sections = {name: section_fields(stage_config_types(spec.script)) for name, spec in BY_SECTION.items()}
    sections["world"] = {
        key: (dict if isinstance(default, dict) else type(default), WORLD_RANGES.get(key))
        for key, default in WORLD_DEFAULTS.items()
    }
    sections["data_files"] = {
        key: (str, None)
        for key in (
            "sft",
            "eval",
            "ppo",
            *(f"{kind}_v{v}" for kind in ("collect", "rs", "labels") for v in range(1, MAX_ITERATIONS + 1)),
        )
    }
    return sections


def load_pipeline_config(path: str, overrides: list[str] | None = None) -> PipelineConfig:
    """The pipeline recipe at `path`, with command-line `--key value` / `--section.key value` overrides on top."""
    data = load_yaml(path)
    if overrides:
        data = merge_overrides(data, *parse_overrides(overrides, (PipelineConfig,), pipeline_sections()))
    values = check_recipe_keys(data, (PipelineConfig,), path)
    config = PipelineConfig(**values)
    if config.launcher not in LAUNCHERS:
        raise RecipeError(f"{path}: launcher must be one of {', '.join(LAUNCHERS)}, got '{config.launcher}'")
    if config.rs_fine_tunes not in ("latest", "sft"):
        raise RecipeError(f"{path}: rs_fine_tunes must be 'latest' or 'sft', got '{config.rs_fine_tunes}'")
    unknown = set(config.world) - set(WORLD_DEFAULTS)
    if unknown:
        raise RecipeError(f"{path}: unknown key 'world.{sorted(unknown)[0]}' (known: {', '.join(WORLD_DEFAULTS)})")
    for key, value in config.world.items():
        kind = dict if isinstance(WORLD_DEFAULTS[key], dict) else type(WORLD_DEFAULTS[key])
        check_range(coerce_value(value, kind, f"world.{key}", path), WORLD_RANGES.get(key), f"world.{key}", path)
    if config.accelerate_config and not Path(config.accelerate_config).is_file():
        raise RecipeError(f"{path}: 'accelerate_config' points to a missing file: {config.accelerate_config}")
    known_files = {"sft", "eval", "ppo"} | {
        f"{k}_v{v}" for k in ("collect", "rs", "labels") for v in range(1, config.iterations + 1)
    }
    for key, value in config.data_files.items():
        if key not in known_files:
            raise RecipeError(
                f"{path}: unknown key 'data_files.{key}' (use sft, eval, ppo, collect_v<n>, rs_v<n>, labels_v<n>)"
            )
        if not Path(value).exists():
            raise RecipeError(f"{path}: 'data_files.{key}' points to a missing file: {value}")
    if not 1 <= config.iterations <= MAX_ITERATIONS:
        raise RecipeError(f"{path}: iterations must be between 1 and {MAX_ITERATIONS}")
    after = config.context_distillation_after
    if after is not None and not 1 <= after <= config.iterations:
        raise RecipeError(f"{path}: context_distillation_after must be an iteration between 1 and {config.iterations}")
    return config


# --------------------------------------------------------------------------------------------- world data


def write_world_data(config: PipelineConfig, data_dir: Path) -> dict[str, str]:
    """Prompt and demonstration files for every stage; deterministic, so re-runs rewrite identical files."""
    world = {**WORLD_DEFAULTS, **config.world}
    data_dir.mkdir(parents=True, exist_ok=True)

    files: dict[str, list[dict]] = {
        "sft": sft_demonstrations(
            world["sft_demonstrations"],
            config.seed,
            family_weights=world["sft_family_weights"] or None,
            closing_share=world["sft_closing_share"],
        ),
        "eval": prompt_file_rows(eval_prompts(world["eval_prompts_per_family"], config.seed), "eval"),
        "ppo": prompt_file_rows(
            prompt_pool("train")
            if world["ppo_every_training_prompt"]
            else sample_prompts(world["ppo_prompts"], config.seed + 7),
            "ppo",
        ),
    }
    for v in range(1, config.iterations + 1):
        files[f"collect_v{v}"] = prompt_file_rows(
            sample_prompts(world["collect_prompts_per_iteration"], config.seed + 1000 * v), f"c{v}"
        )
        if world["borderline_safety_annotation"]:
            by_safety = random.Random(config.seed + 1000 * v + 2)
            for row in files[f"collect_v{v}"]:
                if row["family"] == "borderline" and by_safety.random() < world["borderline_safety_annotation"]:
                    row["annotation_kind"] = "safety"
        files[f"rs_v{v}"] = prompt_file_rows(
            sample_prompts(world["rs_prompts_per_iteration"], config.seed + 1000 * v + 1), f"rs{v}"
        )
    noise = world["annotator_noise"]
    if world["open_source_comparisons"]:
        files["open_source"] = open_source_comparisons(world["open_source_comparisons"], config.seed + 11, noise)
    if world["rm_test_comparisons"]:
        files["rm_test"] = open_source_comparisons(world["rm_test_comparisons"], config.seed + 13, noise, "heldout")
    paths = {}
    for name, rows in files.items():
        path = data_dir / f"{name}.jsonl"
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        if not path.exists() or path.read_text() != text:
            atomic_write_text(path, text)
        paths[name] = str(path)
    return paths


# --------------------------------------------------------------------------------------------- planning


def rm_data(section: dict, kind: str, data: dict[str, str]) -> dict:
    """The world's off-policy comparisons (R_h's open-source pool) and fixed test set, after the section's own."""
    extra: dict = {}
    if "rm_test" in data:
        extra["eval_files"] = [*section.get("eval_files", []), data["rm_test"]]
    if kind == "helpfulness" and "open_source" in data:
        source = {"path": data["open_source"], "format": "llama2-align", "pool": "open_source"}
        extra["sources"] = [*section.get("sources", []), source]
    return extra


def plan_stages(config: PipelineConfig, run_dir: Path, data: dict[str, str]) -> list[Stage]:
    """The ordered stages of the run, each with the paths it reads filled in."""
    out = lambda name: str(run_dir / name)  # noqa: E731
    fmt = {"chat_format": config.chat_format}
    stages: list[Stage] = []
    if config.base_model:
        base = config.base_model
        base_deps: list[str] = []
    else:
        stages.append(Stage("base/pretrain", "pretrain.py", dict(config.pretrain), []))
        base, base_deps = out("base/pretrain"), ["base/pretrain"]
    stages.append(
        Stage(
            "SFT/sft",
            "sft.py",
            {**config.sft, **fmt, "model_name_or_path": base, "dataset_name": data["sft"]},
            base_deps,
        )
    )
    stages.append(
        Stage(
            "SFT/evaluate",
            "evaluate.py",
            {**config.evaluate, **fmt, "model": out("SFT/sft"), "prompts": data["eval"]},
            ["SFT/sft"],
            version="SFT",
        )
    )
    sft_model = out("SFT/sft")
    latest, latest_stage = sft_model, "SFT/sft"
    previous, previous_stage = None, None
    collected: list[str] = []
    rs_runs: list[str] = []
    for v in range(1, config.iterations + 1):
        it = f"RLHF-V{v}"
        collect = Stage(
            f"{it}/collect",
            "collect.py",
            {
                **config.collect,
                **fmt,
                "model_a": latest,
                "model_b": previous,
                "prompts": data[f"collect_v{v}"],
                "noise": config.world.get("annotator_noise", WORLD_DEFAULTS["annotator_noise"]),
                "seed": config.seed + v,
                **({"labels_file": data[f"labels_v{v}"]} if f"labels_v{v}" in data else {}),
            },
            [latest_stage] + ([previous_stage] if previous_stage else []),
        )
        stages.append(collect)
        collected.append(str(Path(out(collect.name)) / "comparisons.jsonl"))
        reward_deps = [s for s in (c.name for c in stages if c.script == "collect.py")] + ["SFT/sft"]
        for kind, section in (("helpfulness", config.reward_helpfulness), ("safety", config.reward_safety)):
            stages.append(
                Stage(
                    f"{it}/reward_{kind}",
                    "reward.py",
                    {
                        **section,
                        **fmt,
                        "model_name_or_path": sft_model,
                        "comparison_files": list(collected),
                        "reward_model": kind,
                        **rm_data(section, kind, data),
                    },
                    list(reward_deps),
                )
            )
        rm_h, rm_s = out(f"{it}/reward_helpfulness"), out(f"{it}/reward_safety")

        def evaluate_stage(name: str, model: str, deps: list[str], version: str, rm_h=rm_h, rm_s=rm_s) -> Stage:
            """Gold and RM judgement of one version, by this iteration's reward models."""
            judges = {"reward_helpfulness": rm_h, "reward_safety": rm_s}
            settings = {**config.evaluate, **fmt, "model": model, "prompts": data["eval"], **judges}
            return Stage(name, "evaluate.py", settings, deps, version=version)

        rm_deps = [f"{it}/reward_helpfulness", f"{it}/reward_safety"]
        judge_h, judge_s = WORLD_JUDGES if config.oracle_judges else (rm_h, rm_s)
        rs_config = {
            **config.rejection_sampling,
            **fmt,
            "model_name_or_path": latest,
            "helpfulness_model": judge_h,
            "safety_model": judge_s,
            "prompts_name": data[f"rs_v{v}"],
            "previous_samples": list(rs_runs),
        }
        if config.rs_fine_tunes == "sft":
            rs_config.update(model_name_or_path=sft_model, policy_model_name_or_path=latest)
        gatt_deps = []
        if config.gatt_from_iteration is not None and v >= config.gatt_from_iteration:
            # GAtt (sec. 3.3): the latest model answers with the instruction in every user message; the rows
            # (instruction in the first turn only, loss on the last answer) join this iteration's fine-tune.
            stages.append(
                Stage(
                    f"{it}/gatt",
                    "gatt.py",
                    {**config.gatt, **fmt, "model_name_or_path": latest, "data_only": True, "seed": config.seed + v},
                    [latest_stage],
                )
            )
            rs_config["extra_dialogues"] = [str(Path(out(f"{it}/gatt")) / "gatt_data.jsonl")]
            gatt_deps = [f"{it}/gatt"]
        rs = Stage(
            f"{it}/rejection_sampling",
            "rejection_sampling.py",
            rs_config,
            [latest_stage, "SFT/sft"] + rm_deps + [f"RLHF-V{u}/rejection_sampling" for u in range(1, v)] + gatt_deps,
        )
        stages.append(rs)
        rs_runs.append(out(rs.name))
        new_model, new_stage = out(rs.name), rs.name
        if v >= config.ppo_from_iteration:
            stages.append(evaluate_stage(f"{it}/evaluate_rs", new_model, [new_stage] + rm_deps, f"{it}-noPPO"))
            ppo = Stage(
                f"{it}/ppo",
                "ppo.py",
                {
                    **config.ppo,
                    **fmt,
                    "model_name_or_path": new_model,
                    "helpfulness_model": judge_h,
                    "safety_model": judge_s,
                    "prompts_name": data["ppo"],
                },
                [new_stage] + rm_deps,
            )
            stages.append(ppo)
            new_model, new_stage = out(ppo.name), ppo.name
        stages.append(evaluate_stage(f"{it}/evaluate", new_model, [new_stage] + rm_deps, it))
        if config.context_distillation and v == (config.context_distillation_after or config.iterations):
            # Safety context distillation of this iteration's model with its R_s (sec. 4.2.4); the distilled
            # model is judged as version "<it>-CD" and is the model later iterations start from.
            stages.append(
                Stage(
                    f"{it}/context_distillation",
                    "context_distillation.py",
                    {
                        **config.context_distillation,
                        **fmt,
                        "model_name_or_path": new_model,
                        "safety_model": rm_s,
                        "compare_modes": [],
                    },
                    [new_stage, f"{it}/reward_safety"],
                )
            )
            new_model, new_stage = out(f"{it}/context_distillation"), f"{it}/context_distillation"
            stages.append(evaluate_stage(f"{it}/evaluate_cd", new_model, [new_stage] + rm_deps, f"{it}-CD"))
        previous, previous_stage = latest, latest_stage
        latest, latest_stage = new_model, new_stage
    # The paper's safety benchmarks on the versions the recipe names (evals/pipeline.py).
    stages += safety_eval_stages(config.safety_eval, stages, base, base_deps, Stage)
    return stages


def file_digest(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()[:16]


def stage_hashes(stages: list[Stage], data: dict[str, str] | None = None) -> dict[str, str]:
    """A stage's hash covers its config, the content of the input data files it names (world or user data:
    a changed prompt set must re-run the stage even though its path is the same) and its inputs' hashes."""
    data_paths = {str(p) for p in (data or {}).values()}
    digests = {p: file_digest(p) for p in data_paths if Path(p).is_file()}
    hashes: dict[str, str] = {}
    for stage in stages:
        named = [v for v in stage.config.values() if isinstance(v, str)]
        named += [x for v in stage.config.values() if isinstance(v, list) for x in v if isinstance(x, str)]
        payload = json.dumps(
            {
                "script": stage.script,
                "config": stage.config,
                "data": sorted(digests[p] for p in set(named) if p in digests),
                "inputs": [hashes[d] for d in stage.depends_on if d in hashes],
            },
            sort_keys=True,
        )
        hashes[stage.name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return hashes


def validate_stages(stages: list[Stage], source: str) -> None:
    """Unknown keys or wrong types in any stage section fail now, before hours of earlier stages run."""
    for stage in stages:
        check_recipe_keys(stage.config, stage_config_types(stage.script), f"{source} ({stage.name})")


# --------------------------------------------------------------------------------------------- running


def accelerate_processes(accelerate_config: str | None) -> int:
    """Processes per machine that an accelerate config starts (1 without one)."""
    if not accelerate_config:
        return 1
    return max(1, int(load_yaml(accelerate_config).get("num_processes", 1) or 1))


def stage_threads(config: PipelineConfig) -> int:
    """Threads per stage process: every core is used, split evenly between the processes of a stage.

    `accelerate launch` sets OMP_NUM_THREADS=1 unless told otherwise, which left one of two cores idle.
    """
    if config.threads_per_process:
        return config.threads_per_process
    return max(1, (os.cpu_count() or 1) // accelerate_processes(config.accelerate_config))


def forks_stages(config: PipelineConfig) -> bool:
    return (
        config.launcher == "auto"
        and not config.accelerate_config
        and "fork" in multiprocessing.get_all_start_methods()
    )


def launch_command(config: PipelineConfig, script: str, recipe_path: Path, output_dir: Path) -> list[str]:
    script_path = str(RECIPES_DIR / script)
    args = [script_path, "--config", str(recipe_path), "--output_dir", str(output_dir)]
    if config.launcher == "python":
        return [sys.executable, *args]
    launch = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--num_cpu_threads_per_process",
        str(stage_threads(config)),
    ]
    if config.accelerate_config:
        launch += ["--config_file", config.accelerate_config]
    else:
        launch += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, *args]


def _run_forked_stage(script_path: str, argv: list[str], log_path: str, threads: int) -> None:
    """The child's side of a forked stage: what `accelerate launch` would set up for one process, then the script.

    Forking after the pipeline imported torch, transformers, TRL and the stages saves each stage those ~11 s
    of imports and accelerate launch's ~5 s; the child's memory is returned when it exits, as with a new
    process. The parent runs no torch op before forking, so no OpenMP pool is copied half-alive.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    log = os.open(log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    # sys.stdout may not write to fd 1 (a test runner's capture, say): rebind both to the log.
    sys.stdout = open(1, "w", buffering=1, closefd=False)
    sys.stderr = open(2, "w", buffering=1, closefd=False)
    os.chdir(REPO_ROOT)
    os.environ.update(
        OMP_NUM_THREADS=str(threads),
        ACCELERATE_MIXED_PRECISION="no",
        ACCELERATE_DYNAMO_BACKEND="no",
        ACCELERATE_USE_CPU="False",
    )
    torch.set_num_threads(threads)
    sys.argv = [script_path, *argv]
    runpy.run_path(script_path, run_name="__main__")


def run_stage(config: PipelineConfig, stage: Stage, recipe_path: Path, output_dir: Path) -> int:
    """Run one stage to the end in a process of its own; returns its exit code. Output goes to stage.log."""
    log_path = output_dir / "stage.log"
    threads = stage_threads(config)
    if forks_stages(config):
        script_path = str(RECIPES_DIR / stage.script)
        argv = ["--config", str(recipe_path), "--output_dir", str(output_dir)]
        child = multiprocessing.get_context("fork").Process(
            target=_run_forked_stage, args=(script_path, argv, str(log_path), threads), name=stage.name
        )
        child.start()
        child.join()
        return child.exitcode
    command = launch_command(config, stage.script, recipe_path, output_dir)
    with open(log_path, "a") as log:
        return subprocess.run(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        ).returncode


def run_pipeline(config_path: str, stop_after: str | None = None, overrides: list[str] | None = None) -> dict:
    config = load_pipeline_config(config_path, overrides)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {**write_world_data(config, run_dir / "data"), **config.data_files}
    stages = plan_stages(config, run_dir, data)
    validate_stages(stages, config_path)
    if stop_after and stop_after not in {stage.name for stage in stages}:
        raise RecipeError(
            f"--stop_after: no stage '{stop_after}' in this run (stages: {stages[0].name} ... {stages[-1].name})"
        )
    hashes = stage_hashes(stages, data)
    manifest = read_manifest(run_dir)
    started = time.time()
    wall_before = manifest.get("wall_seconds", 0.0)
    for index, stage in enumerate(stages, start=1):
        record = manifest["stages"].get(stage.name)
        output_dir = run_dir / stage.folder
        if record and record.get("status") == "complete" and record.get("hash") == hashes[stage.name]:
            print(f"[{index}/{len(stages)}] {stage.name}: done (hash {hashes[stage.name]}), skipped")
            if stop_after and stage.name == stop_after:
                return manifest
            continue
        if record and record.get("hash") != hashes[stage.name] and output_dir.exists():
            # Config (or an input) changed: its old outputs are stale; a resumed checkpoint would mix both.
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        recipe_path = output_dir / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump({**stage.config, "output_dir": str(output_dir)}, sort_keys=True))
        manifest["stages"][stage.name] = {
            "hash": hashes[stage.name],
            "status": "running",
            "script": stage.script,
            "output_dir": str(output_dir),
            "depends_on": stage.depends_on,
            "version": stage.version,
        }
        atomic_write_json(run_dir / MANIFEST, manifest)
        how = "forked" if forks_stages(config) else config.launcher
        print(
            f"[{index}/{len(stages)}] {stage.name}: recipes/{stage.script} ({how}, {stage_threads(config)} "
            f"threads) ... ",
            flush=True,
        )
        stage_start = time.time()
        returncode = run_stage(config, stage, recipe_path, output_dir)
        if returncode != 0:
            tail = (output_dir / "stage.log").read_text(errors="replace").strip().splitlines()[-5:]
            raise RecipeError(
                f"stage {stage.name} failed (exit {returncode}); log: {output_dir / 'stage.log'}\n" + "\n".join(tail)
            )
        manifest["stages"][stage.name].update(status="complete", seconds=round(time.time() - stage_start, 1))
        manifest["wall_seconds"] = wall_before + time.time() - started
        atomic_write_json(run_dir / MANIFEST, manifest)
        print(f"    finished in {time.time() - stage_start:.0f}s", flush=True)
        if stop_after and stage.name == stop_after:
            return manifest
    report = write_report(config, run_dir, stages, data)
    manifest["wall_seconds"] = wall_before + time.time() - started
    atomic_write_json(run_dir / MANIFEST, manifest)
    return report
