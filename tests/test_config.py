"""Recipe errors are one clear line naming the key or file, and they happen before any model loads."""

import os
import runpy
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from alignment.batching import accumulation_steps
from alignment.config import RecipeError, parse_recipe, require_file

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Model:
    model_name_or_path: str = "builtin:tiny-llama"
    use_lora: bool = False
    lora_target_modules: list[str] = field(default_factory=lambda: ["q_proj"])


@dataclass
class Train:
    learning_rate: float = 2e-5
    num_train_epochs: int = 2
    max_train_rows: int | None = None


def recipe(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def test_yaml_then_cli_overrides(tmp_path):
    path = recipe(tmp_path, "learning_rate: 2e-5\nnum_train_epochs: 3\nlora_target_modules: [q_proj, v_proj]\n")
    model, train = parse_recipe((Model, Train), ["--config", path, "--num_train_epochs", "5"])
    # PyYAML reads 2e-5 as a string (YAML 1.1); it is still a float here
    assert train.learning_rate == 2e-5 and isinstance(train.learning_rate, float)
    assert train.num_train_epochs == 5  # the command line wins over the recipe
    assert model.lora_target_modules == ["q_proj", "v_proj"]
    assert model.use_lora is False and train.max_train_rows is None


@pytest.mark.parametrize(
    "text, message",
    [
        ("learnig_rate: 1.0e-3\n", r"recipe.yaml: unknown key 'learnig_rate' \(did you mean 'learning_rate'\?\)"),
        ("zzz: 1\n", r"recipe.yaml: unknown key 'zzz'$"),
        ("num_train_epochs: two\n", r"recipe.yaml: key 'num_train_epochs' expects an integer, got 'two' \(str\)"),
        ("num_train_epochs: 2.5\n", r"key 'num_train_epochs' expects an integer, got 2.5 \(float\)"),
        ("use_lora: yes please\n", r"key 'use_lora' expects true or false"),
        ("learning_rate: fast\n", r"key 'learning_rate' expects a number, got 'fast'"),
        ("lora_target_modules: q_proj\n", r"key 'lora_target_modules' expects a list"),
        ("learning_rate: null\n", r"key 'learning_rate' cannot be null"),
        ("learning_rate: [1\n", r"recipe.yaml:2: not valid YAML"),
        ("- learning_rate\n", r"recipe.yaml: a recipe must be a mapping of key: value, got list"),
    ],
)
def test_recipe_errors_name_file_and_key(tmp_path, text, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe((Model, Train), ["--config", recipe(tmp_path, text)])


def test_null_is_allowed_for_optional_fields(tmp_path):
    _, train = parse_recipe((Model, Train), ["--config", recipe(tmp_path, "max_train_rows: null\n")])
    assert train.max_train_rows is None


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["--learnin_rate", "1"],
            r"command line: unknown option '--learnin_rate' \(did you mean '--learning_rate'\?\)",
        ),
        (["--num_train_epochs", "two"], r"command line: argument --num_train_epochs.*invalid int value: 'two'"),
        (["--config"], r"--config needs a path"),
        (["--config", "missing.yaml"], r"recipe file not found: missing.yaml"),
    ],
)
def test_command_line_errors(argv, message):
    with pytest.raises(RecipeError, match=message):
        parse_recipe((Model, Train), argv)


def test_require_file_only_for_local_paths(tmp_path):
    require_file("org/dataset", "dataset_name")  # a hub id is not checked here
    require_file(str(REPO / "pyproject.toml"), "dataset_name")
    with pytest.raises(RecipeError, match=r"'dataset_name' points to a missing file: ./absent.jsonl"):
        require_file("./absent.jsonl", "dataset_name")


def test_global_batch_arithmetic():
    assert accumulation_steps(64, 4, 8) == 2  # the 7B preset: 8 GPUs x 4 x 2 = 64 (sec. 3.1)
    with pytest.raises(RecipeError, match=r"global batch 64 is not a multiple of per-device batch 6 x 1"):
        accumulation_steps(64, 6, 1)
    with pytest.raises(RecipeError, match="must be positive"):
        accumulation_steps(0, 1, 1)


# The stage script itself, as a user runs it. The model path does not exist, so reaching the model loader would
# fail with a different message: each error below is raised before any model loads.
BAD_MODEL = "model_name_or_path: ./no-such-model\n"
CASES = {
    "unknown_key": (
        BAD_MODEL + "learnig_rate: 1.0e-3\n",
        [],
        "unknown key 'learnig_rate' (did you mean 'learning_rate'?)",
    ),
    "missing_dataset": (
        BAD_MODEL + "dataset_name: ./absent.jsonl\n",
        [],
        "'dataset_name' points to a missing file: ./absent.jsonl",
    ),
    "wrong_type": (BAD_MODEL + "num_train_epochs: many\n", [], "key 'num_train_epochs' expects a number, got 'many'"),
    "malformed_yaml": (BAD_MODEL + "learning_rate: [1\n", [], ":3: not valid YAML"),
    "unknown_cli": (
        BAD_MODEL,
        ["--learning_rat", "3"],
        "unknown option '--learning_rat' (did you mean '--learning_rate'?)",
    ),
    "wrong_cli_type": (BAD_MODEL, ["--learning_rate", "fast"], "invalid float value: 'fast'"),
    "bad_chat_format": (BAD_MODEL + "chat_format: chatml\n", [], "unknown chat_format 'chatml'"),
    "bad_batch": (
        BAD_MODEL + "global_batch_size: 10\nper_device_train_batch_size: 4\n",
        [],
        "global batch 10 is not a multiple of per-device batch 4",
    ),
    "bad_eval_fraction": (BAD_MODEL + "eval_fraction: 1.5\n", [], "eval_fraction must be in [0, 1)"),
}
# A subprocess costs seconds of imports each, so CI runs two as real processes and every case in-process.
SUBPROCESS_IN_CI = ("unknown_key", "missing_dataset")


def script_argv(root, name, extra=()):
    text, case_extra, _ = CASES[name]
    path = root / f"{name}.yaml"
    path.write_text(text)
    return [
        str(REPO / "recipes" / "sft.py"),
        "--config",
        str(path),
        "--output_dir",
        str(root / name),
        *case_extra,
        *extra,
    ]


def check_one_line_error(code, err, expected):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and expected in lines[0]
    assert "Traceback" not in err and "no-such-model" not in err


def start_script(root, name):
    return subprocess.Popen(
        [sys.executable] + script_argv(root, name),
        cwd=root,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )


@pytest.fixture(scope="module")
def ci_script_runs(tmp_path_factory):
    """The CI subprocess cases, started together and checked one by one."""
    root = tmp_path_factory.mktemp("recipes")
    running = {name: start_script(root, name) for name in SUBPROCESS_IN_CI}
    return {name: (process.wait(timeout=300), process.stderr.read()) for name, process in running.items()}


@pytest.mark.parametrize("case", SUBPROCESS_IN_CI)
def test_stage_script_fails_in_one_line(ci_script_runs, case):
    check_one_line_error(*ci_script_runs[case], CASES[case][2])


@pytest.mark.slow
@pytest.mark.parametrize("case", [c for c in CASES if c not in SUBPROCESS_IN_CI])
def test_stage_script_fails_in_one_line_all_cases(tmp_path, case):
    process = start_script(tmp_path, case)
    check_one_line_error(process.wait(timeout=300), process.stderr.read(), CASES[case][2])


@pytest.mark.parametrize("case", list(CASES))
def test_stage_script_entry_point_fails_in_one_line(tmp_path, monkeypatch, capsys, case):
    argv = script_argv(tmp_path, case)
    monkeypatch.setattr(sys, "argv", argv)
    monkeypatch.setattr(sys, "path", list(sys.path))  # the script edits sys.path
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_path(argv[0], run_name="__main__")
    check_one_line_error(exit_info.value.code, capsys.readouterr().err, CASES[case][2])
