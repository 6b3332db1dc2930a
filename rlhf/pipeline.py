"""The iterated Llama 2-Chat pipeline, SFT then RLHF-V1..V5, from one YAML recipe.

LLAMA2_METHOD.md, "Iterations": before each iteration new comparisons are collected from the latest model;
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
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from alignment.config import RecipeError, check_recipe_keys, load_yaml
from alignment.data import atomic_write_json

MANIFEST = "manifest.json"
REPO_ROOT = Path(__file__).resolve().parents[1]
RECIPES_DIR = REPO_ROOT / "recipes"


@dataclass
class PipelineConfig:
    run_dir: str = field(default="runs/pipeline", metadata={"help": "One folder per iteration and stage."})
    launcher: str = field(default="accelerate", metadata={"help": "accelerate (accelerate launch) or python."})
    accelerate_config: str | None = field(default=None, metadata={"help": "accelerate config file for every stage."})
    chat_format: str = field(default="llama2", metadata={"help": "Chat template used by every stage."})
    seed: int = field(default=0, metadata={"help": "Seed of the world's prompt draws."})
    base_model: str | None = field(default=None, metadata={"help": "Start from this model instead of pretraining."})
    iterations: int = field(default=5, metadata={"help": "RLHF-V1..Vn (the paper: 5)."})
    ppo_from_iteration: int = field(default=5, metadata={"help": "PPO on top of RS from this iteration (paper: V5)."})
    rs_fine_tunes: str = field(
        default="latest",
        metadata={"help": "The model each RS iteration fine-tunes on the pooled best samples: 'latest' (the model "
                          "that sampled them) or 'sft' (the SFT model every time, so the errors a weak reward model "
                          "lets through are not trained in again and again). The latest model samples either way."},
    )
    world: dict = field(default_factory=dict, metadata={"help": "Sizes of the embedded world's prompt sets."})
    data_files: dict = field(
        default_factory=dict,
        metadata={"help": "Your own data instead of the world's: sft, eval, ppo, collect_v<n>, rs_v<n> (prompt "
                          "files) and labels_v<n> (human comparisons, with collect.annotator: file)."},
    )
    pretrain: dict = field(default_factory=dict, metadata={"help": "recipes/pretrain.py settings."})
    sft: dict = field(default_factory=dict, metadata={"help": "recipes/sft.py settings."})
    collect: dict = field(default_factory=dict, metadata={"help": "recipes/collect.py settings."})
    reward_helpfulness: dict = field(default_factory=dict, metadata={"help": "recipes/reward.py settings for R_h."})
    reward_safety: dict = field(default_factory=dict, metadata={"help": "recipes/reward.py settings for R_s."})
    rejection_sampling: dict = field(default_factory=dict, metadata={"help": "recipes/rejection_sampling.py settings."})
    ppo: dict = field(default_factory=dict, metadata={"help": "recipes/ppo.py settings."})
    evaluate: dict = field(default_factory=dict, metadata={"help": "recipes/evaluate.py settings."})
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
    "eval_prompts_per_family": 16,
    "annotator_noise": 0.2,
    # Family weights of the SFT demonstrations (uniform when empty). Fewer refusal demonstrations than the
    # other families leave the SFT model unsafe sometimes, as a real SFT model is, so RLHF has work to do.
    "sft_family_weights": {},
    # Share of helpful demonstrations that end with the writer's habit "i hope that helps." (rambling to the
    # gold judges): behaviour the demonstrations teach and the annotators' preferences can untrain.
    "sft_closing_share": 0.0,
}


@dataclass
class Stage:
    name: str                 # e.g. "RLHF-V2/reward_safety"
    script: str               # file name in recipes/
    config: dict
    depends_on: list[str]
    version: str | None = None  # the model version this stage produces or judges, for the report

    @property
    def folder(self) -> str:
        return self.name

    def __post_init__(self) -> None:
        self.depends_on = list(dict.fromkeys(self.depends_on))


def stage_config_types(script: str):
    """The dataclasses a stage script parses, to validate the pipeline recipe before anything runs."""
    if script == "pretrain.py":
        from sft.pretrain import Llama2PretrainConfig, PretrainArguments

        return (PretrainArguments, Llama2PretrainConfig)
    if script == "sft.py":
        from sft.config import DataArguments, Llama2SFTConfig, ModelArguments

        return (ModelArguments, DataArguments, Llama2SFTConfig)
    if script == "collect.py":
        from rlhf.collect import CollectConfig

        return (CollectConfig,)
    if script == "evaluate.py":
        from rlhf.evaluate import EvaluateConfig

        return (EvaluateConfig,)
    if script == "reward.py":
        from reward.config import Llama2RewardConfig

        return (Llama2RewardConfig,)
    if script == "rejection_sampling.py":
        from rlhf.rejection_sampling import RejectionSamplingArguments
        from sft.config import DataArguments, Llama2SFTConfig, ModelArguments

        return (RejectionSamplingArguments, ModelArguments, DataArguments, Llama2SFTConfig)
    if script == "ppo.py":
        from rlhf.ppo_config import PPOConfig

        return (PPOConfig,)
    if script == "context_distillation.py":
        from rlhf.context_distillation import ContextDistillationArguments
        from sft.config import DataArguments, Llama2SFTConfig, ModelArguments

        return (ContextDistillationArguments, ModelArguments, DataArguments, Llama2SFTConfig)
    raise RecipeError(f"unknown stage script {script}")


def load_pipeline_config(path: str) -> PipelineConfig:
    data = load_yaml(path)
    values = check_recipe_keys(data, (PipelineConfig,), path)
    config = PipelineConfig(**values)
    if config.launcher not in ("accelerate", "python"):
        raise RecipeError(f"{path}: launcher must be 'accelerate' or 'python'")
    if config.rs_fine_tunes not in ("latest", "sft"):
        raise RecipeError(f"{path}: rs_fine_tunes must be 'latest' or 'sft', got '{config.rs_fine_tunes}'")
    unknown = set(config.world) - set(WORLD_DEFAULTS)
    if unknown:
        raise RecipeError(f"{path}: unknown key 'world.{sorted(unknown)[0]}' (known: {', '.join(WORLD_DEFAULTS)})")
    if config.accelerate_config and not Path(config.accelerate_config).is_file():
        raise RecipeError(f"{path}: 'accelerate_config' points to a missing file: {config.accelerate_config}")
    known_files = {"sft", "eval", "ppo"} | {f"{k}_v{v}" for k in ("collect", "rs", "labels")
                                            for v in range(1, config.iterations + 1)}
    for key, value in config.data_files.items():
        if key not in known_files:
            raise RecipeError(f"{path}: unknown key 'data_files.{key}' (use sft, eval, ppo, collect_v<n>, rs_v<n>, labels_v<n>)")
        if not Path(value).exists():
            raise RecipeError(f"{path}: 'data_files.{key}' points to a missing file: {value}")
    if not 1 <= config.iterations <= 20:
        raise RecipeError(f"{path}: iterations must be between 1 and 20")
    after = config.context_distillation_after
    if after is not None and not 1 <= after <= config.iterations:
        raise RecipeError(f"{path}: context_distillation_after must be an iteration between 1 and {config.iterations}")
    return config


# --------------------------------------------------------------------------------------------- world data


def write_world_data(config: PipelineConfig, data_dir: Path) -> dict[str, str]:
    """Prompt and demonstration files for every stage; deterministic, so re-runs rewrite identical files."""
    from alignment.world import eval_prompts, sample_prompts, sft_demonstrations

    world = {**WORLD_DEFAULTS, **config.world}
    data_dir.mkdir(parents=True, exist_ok=True)

    def prompt_rows(prompts, tag):
        rows = []
        for i, p in enumerate(prompts):
            rows.append({"id": f"{tag}-{i}", "prompt": p["prompt"], "is_safety_prompt": p["kind"] == "safety",
                         "kind": p["kind"], "family": p["family"], "gold": p["gold"], "world_id": p["id"]})
        return rows

    files: dict[str, list[dict]] = {
        "sft": sft_demonstrations(world["sft_demonstrations"], config.seed,
                                  family_weights=world["sft_family_weights"] or None,
                                  closing_share=world["sft_closing_share"]),
        "eval": prompt_rows(eval_prompts(world["eval_prompts_per_family"], config.seed), "eval"),
        "ppo": prompt_rows(sample_prompts(world["ppo_prompts"], config.seed + 7), "ppo"),
    }
    for v in range(1, config.iterations + 1):
        files[f"collect_v{v}"] = prompt_rows(
            sample_prompts(world["collect_prompts_per_iteration"], config.seed + 1000 * v), f"c{v}")
        files[f"rs_v{v}"] = prompt_rows(
            sample_prompts(world["rs_prompts_per_iteration"], config.seed + 1000 * v + 1), f"rs{v}")
    paths = {}
    for name, rows in files.items():
        path = data_dir / f"{name}.jsonl"
        text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows)
        if not path.exists() or path.read_text() != text:
            from alignment.data import atomic_write_text

            atomic_write_text(path, text)
        paths[name] = str(path)
    return paths


# --------------------------------------------------------------------------------------------- planning


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
    stages.append(Stage("SFT/sft", "sft.py", {**config.sft, **fmt, "model_name_or_path": base,
                                               "dataset_name": data["sft"]}, base_deps))
    stages.append(Stage("SFT/evaluate", "evaluate.py", {**config.evaluate, **fmt, "model": out("SFT/sft"),
                                                        "prompts": data["eval"]}, ["SFT/sft"], version="SFT"))
    sft_model = out("SFT/sft")
    latest, latest_stage = sft_model, "SFT/sft"
    previous, previous_stage = None, None
    collected: list[str] = []
    rs_runs: list[str] = []
    for v in range(1, config.iterations + 1):
        it = f"RLHF-V{v}"
        collect = Stage(f"{it}/collect", "collect.py", {
            **config.collect, **fmt, "model_a": latest, "model_b": previous, "prompts": data[f"collect_v{v}"],
            "noise": config.world.get("annotator_noise", WORLD_DEFAULTS["annotator_noise"]), "seed": config.seed + v,
            **({"labels_file": data[f"labels_v{v}"]} if f"labels_v{v}" in data else {}),
        }, [latest_stage] + ([previous_stage] if previous_stage else []))
        stages.append(collect)
        collected.append(str(Path(out(collect.name)) / "comparisons.jsonl"))
        reward_deps = [s for s in (c.name for c in stages if c.script == "collect.py")] + ["SFT/sft"]
        for kind, section in (("helpfulness", config.reward_helpfulness), ("safety", config.reward_safety)):
            stages.append(Stage(f"{it}/reward_{kind}", "reward.py", {
                **section, **fmt, "model_name_or_path": sft_model, "comparison_files": list(collected),
                "reward_model": kind,
            }, list(reward_deps)))
        rm_h, rm_s = out(f"{it}/reward_helpfulness"), out(f"{it}/reward_safety")
        rm_deps = [f"{it}/reward_helpfulness", f"{it}/reward_safety"]
        rs_config = {**config.rejection_sampling, **fmt, "model_name_or_path": latest, "helpfulness_model": rm_h,
                     "safety_model": rm_s, "prompts_name": data[f"rs_v{v}"], "previous_samples": list(rs_runs)}
        if config.rs_fine_tunes == "sft":
            rs_config.update(model_name_or_path=sft_model, policy_model_name_or_path=latest)
        rs = Stage(f"{it}/rejection_sampling", "rejection_sampling.py", rs_config,
                   [latest_stage, "SFT/sft"] + rm_deps + [f"RLHF-V{u}/rejection_sampling" for u in range(1, v)])
        stages.append(rs)
        rs_runs.append(out(rs.name))
        new_model, new_stage = out(rs.name), rs.name
        if v >= config.ppo_from_iteration:
            stages.append(Stage(f"{it}/evaluate_rs", "evaluate.py", {
                **config.evaluate, **fmt, "model": new_model, "prompts": data["eval"],
                "reward_helpfulness": rm_h, "reward_safety": rm_s,
            }, [new_stage] + rm_deps, version=f"{it}-noPPO"))
            ppo = Stage(f"{it}/ppo", "ppo.py", {
                **config.ppo, **fmt, "model_name_or_path": new_model, "helpfulness_model": rm_h,
                "safety_model": rm_s, "prompts_name": data["ppo"],
            }, [new_stage] + rm_deps)
            stages.append(ppo)
            new_model, new_stage = out(ppo.name), ppo.name
        stages.append(Stage(f"{it}/evaluate", "evaluate.py", {
            **config.evaluate, **fmt, "model": new_model, "prompts": data["eval"],
            "reward_helpfulness": rm_h, "reward_safety": rm_s,
        }, [new_stage] + rm_deps, version=it))
        if config.context_distillation and v == (config.context_distillation_after or config.iterations):
            # Safety context distillation of this iteration's model with its R_s (sec. 4.2.4); the distilled
            # model is judged as version "<it>-CD" and is the model later iterations start from.
            stages.append(Stage(f"{it}/context_distillation", "context_distillation.py", {
                **config.context_distillation, **fmt, "model_name_or_path": new_model, "safety_model": rm_s,
                "compare_modes": [],
            }, [new_stage, f"{it}/reward_safety"]))
            new_model, new_stage = out(f"{it}/context_distillation"), f"{it}/context_distillation"
            stages.append(Stage(f"{it}/evaluate_cd", "evaluate.py", {
                **config.evaluate, **fmt, "model": new_model, "prompts": data["eval"],
                "reward_helpfulness": rm_h, "reward_safety": rm_s,
            }, [new_stage] + rm_deps, version=f"{it}-CD"))
        previous, previous_stage = latest, latest_stage
        latest, latest_stage = new_model, new_stage
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
        payload = json.dumps({"script": stage.script, "config": stage.config,
                              "data": sorted(digests[p] for p in set(named) if p in digests),
                              "inputs": [hashes[d] for d in stage.depends_on if d in hashes]}, sort_keys=True)
        hashes[stage.name] = hashlib.sha256(payload.encode()).hexdigest()[:16]
    return hashes


def validate_stages(stages: list[Stage], source: str) -> None:
    """Unknown keys or wrong types in any stage section fail now, before hours of earlier stages run."""
    for stage in stages:
        check_recipe_keys(stage.config, stage_config_types(stage.script), f"{source} ({stage.name})")


# --------------------------------------------------------------------------------------------- running


def launch_command(config: PipelineConfig, script: str, recipe_path: Path, output_dir: Path) -> list[str]:
    script_path = str(RECIPES_DIR / script)
    args = [script_path, "--config", str(recipe_path), "--output_dir", str(output_dir)]
    if config.launcher == "python":
        return [sys.executable, *args]
    launch = [sys.executable, "-m", "accelerate.commands.launch"]
    if config.accelerate_config:
        launch += ["--config_file", config.accelerate_config]
    else:
        launch += ["--num_processes", "1", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    return [*launch, *args]


def read_manifest(run_dir: Path) -> dict:
    path = run_dir / MANIFEST
    if not path.exists():
        return {"stages": {}}
    return json.loads(path.read_text())


def run_pipeline(config_path: str, stop_after: str | None = None) -> dict:
    import yaml

    config = load_pipeline_config(config_path)
    run_dir = Path(config.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    data = {**write_world_data(config, run_dir / "data"), **config.data_files}
    stages = plan_stages(config, run_dir, data)
    validate_stages(stages, config_path)
    hashes = stage_hashes(stages, data)
    manifest = read_manifest(run_dir)
    started = time.time()
    wall_before = manifest.get("wall_seconds", 0.0)
    for index, stage in enumerate(stages, start=1):
        record = manifest["stages"].get(stage.name)
        output_dir = run_dir / stage.folder
        if record and record.get("status") == "complete" and record.get("hash") == hashes[stage.name]:
            print(f"[{index}/{len(stages)}] {stage.name}: done (hash {hashes[stage.name]}), skipped")
            continue
        if record and record.get("hash") != hashes[stage.name] and output_dir.exists():
            # Config (or an input) changed: its old outputs are stale; a resumed checkpoint would mix both.
            shutil.rmtree(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        recipe_path = output_dir / "recipe.yaml"
        recipe_path.write_text(yaml.safe_dump({**stage.config, "output_dir": str(output_dir)}, sort_keys=True))
        manifest["stages"][stage.name] = {"hash": hashes[stage.name], "status": "running", "script": stage.script,
                                          "output_dir": str(output_dir), "depends_on": stage.depends_on,
                                          "version": stage.version}
        atomic_write_json(run_dir / MANIFEST, manifest)
        command = launch_command(config, stage.script, recipe_path, output_dir)
        print(f"[{index}/{len(stages)}] {stage.name}: {' '.join(command[1:3])} ... ", flush=True)
        stage_start = time.time()
        with open(output_dir / "stage.log", "a") as log:
            result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO_ROOT)
        if result.returncode != 0:
            tail = (output_dir / "stage.log").read_text().strip().splitlines()[-5:]
            raise RecipeError(f"stage {stage.name} failed (exit {result.returncode}); log: {output_dir / 'stage.log'}\n"
                              + "\n".join(tail))
        manifest["stages"][stage.name].update(status="complete", seconds=round(time.time() - stage_start, 1))
        manifest["wall_seconds"] = wall_before + time.time() - started
        atomic_write_json(run_dir / MANIFEST, manifest)
        print(f"    finished in {time.time() - stage_start:.0f}s", flush=True)
        if stop_after and stage.name == stop_after:
            return manifest
    from rlhf.report import write_report

    report = write_report(config, run_dir, stages, data)
    manifest["wall_seconds"] = wall_before + time.time() - started
    atomic_write_json(run_dir / MANIFEST, manifest)
    return report
