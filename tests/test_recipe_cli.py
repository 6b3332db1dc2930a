"""Every stage script answers --help; the pipeline takes --key / --section.key overrides; every rate, coefficient
and size is range-checked when a recipe is parsed, in one line naming the source, the field, the value and the
allowed range; and every shipped recipe passes those checks."""

from __future__ import annotations

import dataclasses
import re
import runpy
import sys
from pathlib import Path

import pytest
import yaml

from alignment import cli
from alignment.config import Range, RecipeError, check_recipe_keys, parse_recipe
from alignment.pipeline.runner import (
    PipelineConfig,
    load_pipeline_config,
    plan_stages,
    stage_config_types,
    validate_stages,
)
from alignment.stages import BY_NAME, STAGES

REPO = Path(__file__).resolve().parents[1]
# Every stage of the registry, by its recipe file's stem (recipes/<preset>/<stem>.yaml).
STAGE_SCRIPTS = {Path(spec.script).stem: spec.script for spec in STAGES if spec.name != "pipeline"}


def run_script(monkeypatch, script: str, args: list[str]) -> int:
    argv = [str(REPO / "recipes" / script), *args]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script edits sys.path
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(argv[0], run_name="__main__")
    return exit_info.value.code


def one_line(text: str) -> str:
    return " ".join(text.split())


def option_help(lines: list[str], option: str) -> str:
    """The help text argparse printed for `option`: beside it, or on the next line when the option is long."""
    index = next(
        (
            i
            for i, line in enumerate(lines)
            if line.strip() == option or line.strip().startswith((f"{option} ", f"{option},"))
        ),
        None,
    )
    assert index is not None, f"{option} missing from --help"
    beside = re.split(r"\s{2,}", lines[index].strip(), maxsplit=1)
    return beside[1] if len(beside) == 2 else lines[index + 1].strip()


# ------------------------------------------------------------------------------------------------ --help


@pytest.mark.parametrize("stage", list(STAGE_SCRIPTS))
def test_every_stage_script_help_lists_every_field_with_help_and_default(stage, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100000")  # no wrapping: each option's help, range and default on one line
    assert run_script(monkeypatch, STAGE_SCRIPTS[stage], ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {STAGE_SCRIPTS[stage]} [--config RECIPE.yaml]")
    lines = out.splitlines()
    for dataclass_type in stage_config_types(STAGE_SCRIPTS[stage]):
        for field in dataclasses.fields(dataclass_type):
            if not field.init:
                continue
            text = option_help(lines, f"--{field.name}")
            help_text = one_line(field.metadata.get("help", "")).replace("%%", "%")
            assert one_line(text).startswith(help_text[:60]), (stage, field.name, text)
            if "range" in field.metadata:
                assert f"Range: {field.metadata['range']}." in text
            assert "(default: " in text


@pytest.mark.parametrize(
    "script, option, expected",
    [
        ("ppo.py", "--learning_rate", "Policy LR, constant (sec. 3.2.3: 1e-6). Range: > 0. (default: 1e-06)"),
        ("ppo.py", "--top_p", "Range: in (0, 1]. (default: 1.0)"),
        ("ppo.py", "--kl_coef", "beta of eq. (4): 0.01 for 7B/13B, 0.005 for 34B/70B. Range: >= 0. (default: 0.01)"),
        (
            "sft.py",
            "--eval_fraction",
            "Share of rows held out for evaluation (seeded). Range: in [0, 1). (default: 0.0)",
        ),
        (
            "reward.py",
            "--warmup_steps",
            "Warmup: 3% of steps (sec. 3.2.2); see min_warmup_steps. Range: >= 0. (default: 0.03)",
        ),
        ("rejection_sampling.py", "--num_samples", "Range: >= 0. (default: 10)"),
    ],
)
def test_help_shows_range_and_default(monkeypatch, capsys, script, option, expected):
    monkeypatch.setenv("COLUMNS", "100000")
    assert run_script(monkeypatch, script, ["--help"]) == 0
    assert option_help(capsys.readouterr().out.splitlines(), option).endswith(expected)


def test_help_wins_over_a_broken_recipe(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.yaml"
    broken.write_text("learnig_rate: 1\n")
    assert run_script(monkeypatch, "sft.py", ["--config", str(broken), "-h"]) == 0
    assert "--learning_rate" in capsys.readouterr().out


def test_pipeline_help_lists_its_fields_and_the_dotted_sections(monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "100000")
    assert run_script(monkeypatch, "pipeline.py", ["--help"]) == 0
    out = capsys.readouterr().out
    for field in dataclasses.fields(PipelineConfig):
        assert f"--{field.name} " in out
    assert "--stop_after STOP_AFTER" in out
    assert "--<section>.<key> value" in out
    assert "RLHF-V1..Vn (the paper: 5). Range: >= 1. (default: 5)" in out


@pytest.mark.parametrize("command", [*BY_NAME])
def test_console_command_passes_help_to_every_stage(monkeypatch, capsys, command):
    monkeypatch.setattr(sys, "path", list(sys.path))
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {BY_NAME[command].script} [--config RECIPE.yaml]")
    assert "--run_dir" in out if command == "pipeline" else "--output_dir" in out


# ------------------------------------------------------------------------------------------------ pipeline overrides

PIPELINE = {
    "run_dir": "runs/from-yaml",
    "launcher": "python",
    "base_model": "builtin:tiny-llama",
    "iterations": 1,
    "ppo_from_iteration": 1,
    "sft": {"learning_rate": 1.0e-3, "num_train_epochs": 3},
    "reward_helpfulness": {"eval_fraction": 0.15},
    "reward_safety": {"eval_fraction": 0.15},
    "world": {"ppo_prompts": 64},
}
FAKE_DATA = {name: f"data/{name}.jsonl" for name in ("sft", "eval", "ppo", "collect_v1", "rs_v1")}


def pipeline_recipe(tmp_path: Path) -> str:
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(PIPELINE))
    return str(path)


def planned_config(config, name: str) -> dict:
    stages = plan_stages(config, Path(config.run_dir), FAKE_DATA)
    return next(stage for stage in stages if stage.name == name).config


def test_pipeline_overrides_reach_the_planned_stage_configs(tmp_path):
    config = load_pipeline_config(
        pipeline_recipe(tmp_path),
        [
            "--run_dir",
            "runs/x",
            "--sft.learning_rate",
            "1e-4",
            "--reward_helpfulness.eval_fraction=0.3",
            "--ppo.kl_coef",
            "0.05",
            "--world.ppo_prompts",
            "32",
            "--sft.lora_target_modules",
            "[q_proj, v_proj]",
            "--iterations",
            "1",
        ],
    )
    assert config.run_dir == "runs/x"
    assert config.world == {"ppo_prompts": 32}
    sft = planned_config(config, "SFT/sft")
    assert sft["learning_rate"] == 1e-4 and isinstance(sft["learning_rate"], float)
    assert sft["num_train_epochs"] == 3  # the section's other keys are kept
    assert sft["lora_target_modules"] == ["q_proj", "v_proj"]
    assert planned_config(config, "RLHF-V1/reward_helpfulness")["eval_fraction"] == 0.3
    assert planned_config(config, "RLHF-V1/reward_safety")["eval_fraction"] == 0.15  # the other RM is untouched
    assert planned_config(config, "RLHF-V1/ppo")["kl_coef"] == 0.05
    validate_stages(plan_stages(config, Path(config.run_dir), FAKE_DATA), "pipeline.yaml")


def test_pipeline_override_of_an_empty_section(tmp_path):
    config = load_pipeline_config(pipeline_recipe(tmp_path), ["--evaluate.max_new_tokens", "7"])
    assert config.evaluate == {"max_new_tokens": 7}
    assert planned_config(config, "SFT/evaluate")["max_new_tokens"] == 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--sft.learnig_rate", "1e-4"],
            "command line: unknown option '--sft.learnig_rate' (did you mean '--sft.learning_rate'?)",
        ),
        (
            ["--sfft.learning_rate", "1e-4"],
            "command line: unknown option '--sfft.learning_rate' (did you mean '--sft.learning_rate'?)",
        ),
        (["--run_dirr", "runs/x"], "command line: unknown option '--run_dirr' (did you mean '--run_dir'?)"),
        (
            ["--world.ppo_prompt", "3"],
            "command line: unknown option '--world.ppo_prompt' (did you mean '--world.ppo_prompts'?)",
        ),
        (["--sft.learning_rate", "fast"], "command line: key 'sft.learning_rate' expects a number, got 'fast' (str)"),
        (["--iterations", "two"], "command line: key 'iterations' expects an integer, got 'two' (str)"),
        (
            ["--ppo.num_iterations", "2.5"],
            "command line: key 'ppo.num_iterations' expects an integer, got 2.5 (float)",
        ),
        (["--sft.packing", "maybe"], "command line: key 'sft.packing' expects true or false, got 'maybe' (str)"),
        (["--ppo.learning_rate", "-1"], "command line: ppo.learning_rate must be > 0, got -1.0"),
        (["--world.annotator_noise", "-0.1"], "command line: world.annotator_noise must be >= 0, got -0.1"),
        (["--sft.learning_rate"], "command line: option '--sft.learning_rate' needs a value"),
        (["runs/x"], "command line: unexpected argument 'runs/x'"),
    ],
)
def test_pipeline_override_errors_are_one_line(tmp_path, argv, message):
    with pytest.raises(RecipeError) as error:
        load_pipeline_config(pipeline_recipe(tmp_path), argv)
    assert str(error.value).startswith(message) and "\n" not in str(error.value)


def test_pipeline_script_passes_overrides_and_stop_after(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(
        "alignment.pipeline.runner.run_pipeline",
        lambda path, stop_after=None, overrides=None: calls.append((path, stop_after, overrides)) or {},
    )
    argv = [
        str(REPO / "recipes/pipeline.py"),
        "--config",
        "p.yaml",
        "--run_dir",
        "runs/x",
        "--stop_after",
        "RLHF-V1/collect",
        "--sft.learning_rate",
        "1e-4",
    ]
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))
    runpy.run_path(argv[0], run_name="__main__")
    assert calls == [("p.yaml", "RLHF-V1/collect", ["--run_dir", "runs/x", "--sft.learning_rate", "1e-4"])]


def test_pipeline_script_reports_a_bad_override_in_one_line(tmp_path, monkeypatch, capsys):
    code = run_script(monkeypatch, "pipeline.py", ["--config", pipeline_recipe(tmp_path), "--sft.learnin_rate", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == [
        "error: command line: unknown option '--sft.learnin_rate' (did you mean '--sft.learning_rate'?)"
    ]


# ------------------------------------------------------------------------------------------------ ranges


def test_range_bounds():
    assert 0 not in Range(0, low_open=True) and 1e-9 in Range(0, low_open=True)
    assert 1 in Range(0, 1) and 1 not in Range(0, 1, high_open=True) and 0 in Range(0, 1, high_open=True)
    assert float("nan") not in Range(0, low_open=True) and float("inf") not in Range(1)
    assert str(Range(0, low_open=True)) == "> 0" and str(Range(1)) == ">= 1"
    assert str(Range(0, 1, low_open=True)) == "in (0, 1]" and str(Range(0, 0.5, high_open=True)) == "in [0, 0.5)"


BAD_VALUES = [
    # (stage, YAML key: value, expected message after "<recipe file>: ")
    ("ppo", "learning_rate: -1", "learning_rate must be > 0, got -1.0"),
    ("ppo", "learning_rate: .nan", "learning_rate must be > 0, got nan"),
    ("ppo", "value_learning_rate: 0", "value_learning_rate must be > 0, got 0.0"),
    ("ppo", "kl_coef: -0.01", "kl_coef must be >= 0, got -0.01"),
    ("ppo", "clip_range: 0", "clip_range must be > 0, got 0.0"),
    ("ppo", "value_clip_range: -0.2", "value_clip_range must be > 0, got -0.2"),
    ("ppo", "temperature: 0", "temperature must be > 0, got 0.0"),
    ("ppo", "top_p: 1.5", "top_p must be in (0, 1], got 1.5"),
    ("ppo", "top_p: 0", "top_p must be in (0, 1], got 0.0"),
    ("ppo", "gamma: 1.1", "gamma must be in [0, 1], got 1.1"),
    ("ppo", "lam: -0.5", "lam must be in [0, 1], got -0.5"),
    ("ppo", "safety_threshold: 1", "safety_threshold must be in (0, 1), got 1.0"),
    ("ppo", "heldout_fraction: 1.0", "heldout_fraction must be in [0, 1), got 1.0"),
    ("ppo", "rollout_batch_size: 0", "rollout_batch_size must be >= 1, got 0"),
    ("ppo", "ppo_epochs: 0", "ppo_epochs must be >= 1, got 0"),
    ("ppo", "adam_beta2: 1.0", "adam_beta2 must be in [0, 1), got 1.0"),
    ("ppo", "max_grad_norm: 0", "max_grad_norm must be > 0, got 0.0"),
    ("ppo", "early_stopping_min_delta: -0.1", "early_stopping_min_delta must be >= 0, got -0.1"),
    ("sft", "learning_rate: -2.0e-5", "learning_rate must be > 0, got -2e-05"),
    ("sft", "num_train_epochs: 0", "num_train_epochs must be > 0, got 0.0"),
    ("sft", "per_device_train_batch_size: 0", "per_device_train_batch_size must be >= 1, got 0"),  # inherited field
    ("sft", "weight_decay: -0.1", "weight_decay must be >= 0, got -0.1"),
    ("sft", "eval_fraction: 1.0", "eval_fraction must be in [0, 1), got 1.0"),
    ("sft", "lora_dropout: 1", "lora_dropout must be in [0, 1), got 1.0"),
    ("sft", "global_batch_size: 0", "global_batch_size must be >= 1, got 0"),
    ("sft", "max_length: 0", "max_length must be >= 1, got 0"),
    ("reward", "learning_rate: -1.0e-5", "learning_rate must be > 0, got -1e-05"),
    ("reward", "eval_fraction: -0.1", "eval_fraction must be in [0, 1), got -0.1"),
    ("reward", "safety_threshold: 0", "safety_threshold must be in (0, 1), got 0.0"),
    ("reward", "calibrate_unsafe_precision: 1.2", "calibrate_unsafe_precision must be in (0, 1], got 1.2"),
    ("reward", "train_top_layers: -1", "train_top_layers must be >= 0, got -1"),
    ("reward", "warmup_steps: -1", "warmup_steps must be >= 0, got -1.0"),
    ("reward", "max_grad_norm: -1", "max_grad_norm must be >= 0, got -1.0"),
    ("rejection_sampling", "num_samples: -1", "num_samples must be >= 0, got -1"),
    ("rejection_sampling", "temperature: 0", "temperature must be > 0, got 0.0"),
    ("rejection_sampling", "temperature_sweep: [0.7, -1]", "temperature_sweep must be > 0, got -1.0"),
    ("rejection_sampling", "eval_top_p: 1.1", "eval_top_p must be in (0, 1], got 1.1"),
    ("rejection_sampling", "reward_curve_ks: [1, 0]", "reward_curve_ks must be >= 1, got 0"),
    ("rejection_sampling", "learning_rate: 0", "learning_rate must be > 0, got 0.0"),
    ("collect", "temperature_b: 0", "temperature_b must be > 0, got 0.0"),
    ("collect", "top_p: 2", "top_p must be in (0, 1], got 2.0"),
    ("collect", "noise: -0.2", "noise must be >= 0, got -0.2"),
    ("evaluate", "temperature: -0.5", "temperature must be >= 0, got -0.5"),
    ("evaluate", "batch_size: 0", "batch_size must be >= 1, got 0"),
    ("pretrain", "hidden_size: 0", "hidden_size must be >= 1, got 0"),
    ("pretrain", "learning_rate: -3.0e-3", "learning_rate must be > 0, got -0.003"),
    ("pretrain", "corpus_docs: 0", "corpus_docs must be >= 1, got 0"),
]


@pytest.mark.parametrize("stage, line, message", BAD_VALUES)
def test_out_of_range_recipe_values_fail_in_one_line(tmp_path, stage, line, message):
    path = tmp_path / f"{stage}.yaml"
    path.write_text(line + "\n")
    with pytest.raises(RecipeError) as error:
        parse_recipe(stage_config_types(STAGE_SCRIPTS[stage]), ["--config", str(path)])
    assert str(error.value) == f"{path}: {message}"


@pytest.mark.parametrize("stage, line, message", BAD_VALUES[::4])
def test_out_of_range_values_fail_on_the_command_line(stage, line, message):
    key, value = (part.strip() for part in line.split(":", 1))
    with pytest.raises(RecipeError) as error:
        # --key=value: argparse reads "-3.0e-3" after a bare --key as an option, not a number
        parse_recipe(stage_config_types(STAGE_SCRIPTS[stage]), [f"--{key}={value.strip('[]').split(',')[-1].strip()}"])
    assert str(error.value) == f"command line: {message}"


def test_range_ends_that_are_allowed(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text("kl_coef: 0\ntop_p: 1\ngamma: 1\nheldout_fraction: 0\neval_every: 0\n")
    (config,) = parse_recipe(stage_config_types("ppo.py"), ["--config", str(path)])
    assert (config.kl_coef, config.top_p, config.gamma, config.heldout_fraction) == (0.0, 1.0, 1.0, 0.0)
    (config,) = parse_recipe(stage_config_types("evaluate.py"), ["--temperature", "0"])
    assert config.temperature == 0.0  # greedy evaluation


def test_ppo_script_refuses_a_negative_learning_rate_before_any_model_loads(monkeypatch, capsys, tmp_path):
    code = run_script(
        monkeypatch,
        "ppo.py",
        [
            "--config",
            str(REPO / "recipes/tiny/ppo.yaml"),
            "--learning_rate",
            "-1",
            "--model_name_or_path",
            "./no-such-model",
            "--output_dir",
            str(tmp_path),
        ],
    )
    err = capsys.readouterr().err
    assert code == 2 and err.strip().splitlines() == ["error: command line: learning_rate must be > 0, got -1.0"]


def test_pipeline_stage_section_out_of_range_fails_in_validation(tmp_path):
    recipe = {**PIPELINE, "ppo": {"clip_range": -0.2}}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    config = load_pipeline_config(str(path))
    with pytest.raises(RecipeError) as error:
        validate_stages(plan_stages(config, Path(config.run_dir), FAKE_DATA), str(path))
    assert str(error.value) == f"{path} (RLHF-V1/ppo): clip_range must be > 0, got -0.2"
    path.write_text(yaml.safe_dump({**PIPELINE, "world": {"sft_closing_share": 1.5}}))
    with pytest.raises(RecipeError) as error:
        load_pipeline_config(str(path))
    assert str(error.value) == f"{path}: world.sft_closing_share must be in [0, 1], got 1.5"
    path.write_text(yaml.safe_dump({**PIPELINE, "ppo_from_iteration": 0}))
    with pytest.raises(RecipeError, match=r"pipeline.yaml: ppo_from_iteration must be >= 1, got 0$"):
        load_pipeline_config(str(path))


# ------------------------------------------------------------------------------------------------ shipped recipes

# Stage presets (a preset folder may also hold data a recipe reads, e.g. llama2-7b/risk_templates.yaml).
STAGE_RECIPES = sorted(
    p for p in (REPO / "recipes").glob("*/*.yaml") if p.parent.name != "accelerate" and p.stem in STAGE_SCRIPTS
)
PIPELINE_RECIPES = sorted((REPO / "recipes").glob("*/pipeline.yaml"))


def test_the_shipped_recipes_are_all_found():
    names = {f"{p.parent.name}/{p.stem}" for p in STAGE_RECIPES}
    assert {"tiny/ppo", "smollm2/reward", "llama2-7b/sft", "llama2-13b/ppo", "llama2-70b/reward"} <= names
    assert {p.parent.name for p in PIPELINE_RECIPES} >= {"tiny", "smollm2", "llama2-7b"}


@pytest.mark.parametrize("path", STAGE_RECIPES, ids=lambda p: f"{p.parent.name}/{p.stem}")
def test_every_shipped_stage_recipe_passes_the_range_checks(path):
    types = stage_config_types(STAGE_SCRIPTS[path.stem])
    check_recipe_keys(yaml.safe_load(path.read_text()), types, str(path))
    parse_recipe(types, ["--config", str(path)])


@pytest.mark.parametrize("path", PIPELINE_RECIPES, ids=lambda p: p.parent.name)
def test_every_shipped_pipeline_recipe_and_its_stage_sections_pass_the_range_checks(path, monkeypatch, tmp_path):
    monkeypatch.chdir(REPO)  # accelerate_config paths are relative to the checkout
    recipe = yaml.safe_load(path.read_text())
    for key in recipe.get("data_files") or {}:  # the user's own data files, which a checkout does not have
        (tmp_path / f"{key}.jsonl").write_text("{}\n")
        recipe["data_files"][key] = str(tmp_path / f"{key}.jsonl")
    copy = tmp_path / f"{path.parent.name}.yaml"
    copy.write_text(yaml.safe_dump(recipe))
    config = load_pipeline_config(str(copy))
    data = {
        **{
            f"{kind}_v{v}": f"data/{kind}_v{v}.jsonl"
            for kind in ("collect", "rs")
            for v in range(1, config.iterations + 1)
        },
        **FAKE_DATA,
        **config.data_files,
    }
    stages = plan_stages(config, Path(config.run_dir), data)
    assert {stage.script for stage in stages} >= {"sft.py", "reward.py", "rejection_sampling.py", "evaluate.py"}
    validate_stages(stages, str(path))
