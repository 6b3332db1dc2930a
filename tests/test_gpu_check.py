"""benchmarks/gpu_check.py: the --smoke run covers every section on CPU, without trl or datasets, as on the GPU
machine; the budget skips what it cannot reach; the dry-run and the counted tensors agree where they must."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"

# Runs the script with trl, datasets and the other packages the check does not need absent (None in sys.modules:
# `import` fails and `importlib.util.find_spec` answers None, as for a package that is not installed). The GPU
# machine is known to lack trl and datasets; the others may be missing there too.
ABSENT = [
    "trl",
    "datasets",
    "sentencepiece",
    "google.protobuf",
    "gguf",
    "tensorboard",
    "matplotlib",
    "pandas",
    "pyarrow",
    "vllm",
    "deepspeed",
    "flash_attn",
]
WITHOUT_PACKAGES = f"""
import runpy, sys
for name in {ABSENT!r}:
    sys.modules[name] = None
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
"""


def load_gpu_check():
    """The script as a module (benchmarks/ is not a package); registered first, as dataclasses need."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    # A budget no CI machine reaches: this test checks what the sections report, not how fast they run.
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            WITHOUT_PACKAGES,
            str(SCRIPT),
            "--smoke",
            "--budget_s",
            "600",
            "--output_dir",
            str(out),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    return json.loads((out / "gpu_check.json").read_text()), (out / "gpu_check.md").read_text()


@pytest.fixture
def in_process(monkeypatch):
    """The script's module for calling `main` here, with a fresh accelerate state (one process keeps one
    Accelerator's mixed precision) and no environment report (checked in the subprocess run above)."""
    from accelerate.state import AcceleratorState

    module = load_gpu_check()
    monkeypatch.setattr(
        module, "environment_report", lambda: {"missing_line": "missing: none", "packages": {"torch": "x"}}
    )
    AcceleratorState._reset_state(reset_partial_state=True)
    yield module
    AcceleratorState._reset_state(reset_partial_state=True)


def positive(value) -> bool:
    return isinstance(value, (int, float)) and value > 0


def test_smoke_runs_without_trl_and_datasets_and_names_them(smoke):
    report, markdown = smoke
    assert report["errors"] == []
    env = report["environment"]
    assert env["missing"]["required"] == [
        "trl",
        "datasets",
        "sentencepiece",
        "protobuf",
        "gguf",
        "tensorboard",
        "matplotlib",
    ]
    assert env["missing"]["optional"] == ["vllm", "deepspeed", "flash-attn"]
    assert env["missing_line"] == (
        "missing: trl, datasets, sentencepiece, protobuf, gguf, tensorboard, matplotlib "
        "(required); vllm, deepspeed, flash-attn (optional)"
    )
    assert all(env["packages"][name] for name in ("torch", "transformers", "accelerate", "peft"))
    assert env["missing_line"] in markdown


def test_smoke_reports_every_step_with_positive_figures(smoke):
    report, markdown = smoke
    assert positive(report["matmul_peak"]["flops"])
    names = [step["case"] for step in report["steps"]]
    assert names == [
        "sft tiny full",
        "reward tiny full",
        "ppo tiny full",
        "sft tiny LoRA",
        "reward tiny LoRA",
        "ppo tiny LoRA",
    ]
    for step in report["steps"]:
        for key in ("median_step_s", "tokens_per_s", "mfu", "model_flops_per_step"):
            assert positive(step[key]), (step["case"], key)
        assert all(positive(v) for v in step["counted"].values()), step["case"]
        assert positive(step["dry_run"]["sum_gib"]) and positive(step["dry_run"]["total_with_overhead_gib"])
        assert step["peak_allocated_gib"] is None  # CUDA's allocator counters; none on CPU
        assert f"| {step['case']} |" in markdown
    sft = report["steps"][0]
    assert sft["tokens_per_step"] == 2 * 32
    assert report["steps"][1]["tokens_per_step"] == 2 * 2 * 32  # pairs: a chosen and a rejected row each
    assert report["steps"][2]["tokens_per_step"] == 4 * 24


def test_counted_tensors_equal_the_dry_run_lines_for_sft(smoke):
    """fp32 full fine-tuning: weights and gradients are 4 bytes per parameter in both; AdamW's two moments 8
    (plus a 4-byte step counter per tensor); with LoRA the gradients are exactly the dry-run's adapter count."""
    report, _ = smoke
    full, lora = report["steps"][0], report["steps"][3]
    lines = full["dry_run"]["lines_gib"]
    assert full["counted"]["weights_gib"] == pytest.approx(lines["policy weights"], rel=1e-12)
    assert full["counted"]["gradients_gib"] == pytest.approx(lines["policy gradients"], rel=1e-12)
    assert full["counted"]["optimizer_states_gib"] == pytest.approx(lines["policy AdamW states"], rel=0.01)
    assert lora["counted"]["gradients_gib"] == pytest.approx(
        lora["dry_run"]["lines_gib"]["policy gradients"], rel=1e-12
    )


def test_smoke_generation_and_ppo_iteration(smoke):
    report, _ = smoke
    gen = report["generation"]
    assert [row["k"] for row in gen["rows"]] == [4, 16]
    for row in gen["rows"]:
        for label in ("engine", "generate"):
            assert positive(row[label]["tokens_per_s"])
            # Random weights may sample the stop token early; never more than the budget.
            assert 0 < row[label]["tokens"] <= gen["prompts"] * row["k"] * gen["max_new_tokens"]
        assert positive(row["engine_over_generate"])
    it = report["ppo_iteration"]
    for key in (
        "generation_s",
        "training_s",
        "iteration_s",
        "generation_tokens_per_s",
        "training_tokens_per_s",
        "training_mfu",
        "rollouts_per_s",
    ):
        assert positive(it[key]), key
    assert it["rollouts"] == 16 and it["mini_batch"] == 8
    assert 0 < it["generated_tokens"] <= 16 * 6
    assert it["generation_s"] + it["training_s"] <= it["iteration_s"]


def test_a_spent_budget_skips_the_sections_with_a_note(tmp_path, in_process):
    report = in_process.main(["--smoke", "--budget_s", "0", "--output_dir", str(tmp_path)])
    assert "steps" not in report and "generation" not in report
    assert report["notes"][0].startswith("matmul_peak: skipped, the budget is spent")
    written = json.loads((tmp_path / "gpu_check.json").read_text())
    assert written["notes"] == report["notes"] and written["environment"]["packages"]["torch"]


def test_the_alarm_stops_a_section_that_overruns():
    module = load_gpu_check()
    started = time.monotonic()
    with pytest.raises(module.BudgetExceeded):
        with module.alarm_at(time.monotonic() + 0.05):
            time.sleep(5)
    assert time.monotonic() - started < 4


def test_help_names_the_device_command():
    help_text = load_gpu_check().build_parser().format_help()
    assert "--smoke" in help_text and "--output_dir" in help_text and "--budget_s" in help_text
    assert "PYTHONUNBUFFERED=1 python benchmarks/gpu_check.py --output_dir $OUT/gpu" in help_text


def test_bf16_smoke_shows_the_ppo_optimizer_state_the_dry_run_overestimates(tmp_path, in_process):
    """The PPO recipes load bf16 weights (`dtype: bfloat16`): AdamW then keeps bf16 moments, 4 bytes per trained
    parameter, where the dry-run's k = 12 assumes fp32 master weights and moments (BENCHMARKS.md, GPU check)."""
    report = in_process.main(
        [
            "--smoke",
            "--bf16",
            "--skip",
            "generation",
            "ppo_iteration",
            "--budget_s",
            "600",
            "--output_dir",
            str(tmp_path),
        ]
    )
    assert report["errors"] == []
    steps = {step["case"]: step for step in report["steps"]}
    assert [steps[name]["weights_dtype"] for name in steps] == [
        "float32",
        "float32",
        "bfloat16",
        "bfloat16",
        "bfloat16",
        "bfloat16",
    ]
    ppo = steps["ppo tiny full"]
    counted, lines = ppo["counted"], ppo["dry_run"]["lines_gib"]
    # Policy and value model are trained: 2 bytes of gradient each per parameter, 4 of moments (plus one
    # 4-byte step counter per tensor).
    assert counted["optimizer_states_gib"] == pytest.approx(2 * counted["gradients_gib"], rel=0.01)
    assert lines["policy AdamW states"] == pytest.approx(6 * lines["policy gradients"])
    assert positive(ppo["tokens_per_s"]) and positive(ppo["mfu"])
