"""The one list of the project's stages.

Each stage is a recipe script in `recipes/` that parses a YAML recipe into dataclasses and runs. This module
names them once: the `llama2-align <name>` command, the script, the dataclasses it parses (so a pipeline
recipe's stage sections are checked before anything runs) and the pipeline-recipe sections that configure
it. The console command, the pipeline's planner and validation, and the tests read this table; adding a stage
means adding a row here and a script in `recipes/`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path

from alignment.config import RecipeError

# Every stage writes this file last, with its summary: a stage whose output_dir holds it is finished.
COMPLETE_MARKER = "stage_complete.json"
RECIPES_DIR = Path(__file__).resolve().parents[1] / "recipes"


@dataclass(frozen=True)
class StageSpec:
    name: str  # `llama2-align <name>`
    script: str  # recipes/<script>
    configs: tuple[str, ...]  # "module:Class" of each dataclass the script parses, in parse order
    sections: tuple[str, ...] = ()  # the pipeline recipe's sections for this stage
    summary: str = ""

    def config_types(self) -> tuple[type, ...]:
        """The dataclasses, imported on use: `llama2-align --help` lists the stages without importing torch."""
        types = []
        for path in self.configs:
            module, name = path.split(":")
            types.append(getattr(importlib.import_module(module), name))
        return tuple(types)

    @property
    def script_path(self) -> Path:
        return RECIPES_DIR / self.script


SFT_CONFIGS = ("sft.config:ModelArguments", "sft.config:DataArguments", "sft.config:Llama2SFTConfig")
STAGES: tuple[StageSpec, ...] = (
    StageSpec(
        "pipeline",
        "pipeline.py",
        ("alignment.pipeline.runner:PipelineConfig",),
        summary="the main job: pretraining (embedded world), SFT, RLHF-V1..Vn from one recipe",
    ),
    StageSpec(
        "pretrain",
        "pretrain.py",
        ("sft.pretrain:PretrainArguments", "sft.pretrain:Llama2PretrainConfig"),
        ("pretrain",),
        "base-model pretraining on the embedded world's corpus",
    ),
    StageSpec("sft", "sft.py", SFT_CONFIGS, ("sft",), "supervised fine-tuning, loss on answers only"),
    StageSpec(
        "collect",
        "collect.py",
        ("rlhf.collect:CollectConfig",),
        ("collect",),
        "preference collection: two answers per prompt, annotated",
    ),
    StageSpec(
        "reward",
        "reward.py",
        ("reward.config:Llama2RewardConfig",),
        ("reward_helpfulness", "reward_safety"),
        "helpfulness or safety reward model (binary ranking loss with margin)",
    ),
    StageSpec(
        "rejection-sampling",
        "rejection_sampling.py",
        ("rlhf.rejection_sampling:RejectionSamplingArguments", *SFT_CONFIGS),
        ("rejection_sampling",),
        "best-of-K sampling, pooling across iterations, fine-tuning on the pool",
    ),
    StageSpec("ppo", "ppo.py", ("rlhf.ppo_config:PPOConfig",), ("ppo",), "PPO on the safety-gated reward"),
    StageSpec(
        "evaluate",
        "evaluate.py",
        ("rlhf.evaluate:EvaluateConfig",),
        ("evaluate",),
        "gold and reward-model judgement of a model version",
    ),
    StageSpec(
        "context-distillation",
        "context_distillation.py",
        ("rlhf.context_distillation:ContextDistillationArguments", *SFT_CONFIGS),
        ("context_distillation",),
        "safety context distillation: generic, template or targeted (gated by R_s), then SFT (sec. 4.2.4)",
    ),
    StageSpec(
        "gatt",
        "gatt.py",
        ("sft.gatt_stage:GattConfig",),
        ("gatt",),
        "Ghost Attention: multi-turn data with the instruction kept in the first turn only (sec. 3.3)",
    ),
    # Its pipeline section also names the versions to evaluate (evals/pipeline.py reads it).
    StageSpec(
        "safety-eval",
        "safety_eval.py",
        ("evals.config:SafetyEvalConfig",),
        (),
        "TruthfulQA, ToxiGen and BOLD, the paper's safety benchmarks (sec. 4.1, 4.4)",
    ),
)
BY_NAME = {spec.name: spec for spec in STAGES}
BY_SCRIPT = {spec.script: spec for spec in STAGES}
BY_SECTION = {section: spec for spec in STAGES for section in spec.sections}


def stage_by_script(script: str) -> StageSpec:
    if script not in BY_SCRIPT:
        raise RecipeError(f"unknown stage script {script} (known: {', '.join(BY_SCRIPT)})")
    return BY_SCRIPT[script]
