"""The iterated pipeline: planning, config hashes, skip/resume semantics and a kill -9 end to end."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from alignment.config import RecipeError
from alignment.data import read_jsonl_tolerant
from alignment.pipeline import runner as pipeline
from alignment.pipeline.runner import (
    load_pipeline_config,
    plan_stages,
    stage_hashes,
    validate_stages,
    write_world_data,
)
from alignment.world import prompt_by_id, prompt_pool

REPO = Path(__file__).resolve().parents[1]

SHORT = {
    "launcher": "python",
    "chat_format": "llama2",
    "base_model": "builtin:tiny-llama",
    "iterations": 1,
    "ppo_from_iteration": 1,
    "world": {
        "sft_demonstrations": 32,
        "collect_prompts_per_iteration": 16,
        "rs_prompts_per_iteration": 8,
        "ppo_prompts": 16,
        "eval_prompts_per_family": 2,
    },
    "sft": {
        "global_batch_size": 16,
        "per_device_train_batch_size": 16,
        "learning_rate": 1.0e-3,
        "num_train_epochs": 1,
        "max_length": 96,
        "save_steps": 50,
    },
    "collect": {"max_new_tokens": 8, "batch_size": 16},
    "reward_helpfulness": {
        "eval_fraction": 0.25,
        "global_batch_size": 8,
        "per_device_train_batch_size": 8,
        "learning_rate": 1.0e-3,
        "num_train_epochs": 1,
        "max_length": 96,
        "save_steps": 50,
    },
    "reward_safety": {
        "eval_fraction": 0.25,
        "global_batch_size": 8,
        "per_device_train_batch_size": 8,
        "learning_rate": 1.0e-3,
        "num_train_epochs": 1,
        "max_length": 96,
        "save_steps": 50,
        "calibrate_unsafe_precision": 0.89,
    },
    # An 8-token budget cuts every answer of this barely trained model: keep them, or the pool is empty.
    "rejection_sampling": {
        "num_samples": 2,
        "max_new_tokens": 8,
        "drop_unfinished": False,
        "temperature_sweep": [1.0],
        "sweep_num_prompts": 4,
        "pick_temperature": False,
        "global_batch_size": 8,
        "per_device_train_batch_size": 8,
        "num_train_epochs": 1,
        "max_length": 96,
        "learning_rate": 1.0e-3,
    },
    "ppo": {
        "rollout_batch_size": 8,
        "mini_batch_size": 4,
        "per_device_train_batch_size": 4,
        "generation_batch_size": 8,
        "max_new_tokens": 8,
        "num_iterations": 2,
        "eval_every": 0,
        "report_to": [],
    },
    "evaluate": {"max_new_tokens": 8},
}


def write_recipe(tmp_path: Path, **overrides) -> Path:
    recipe = {**SHORT, "run_dir": str(tmp_path / "run"), **overrides}
    path = tmp_path / "pipeline.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def planned(path: Path):
    config = load_pipeline_config(str(path))
    run_dir = Path(config.run_dir)
    data = write_world_data(config, run_dir / "data")
    return config, plan_stages(config, run_dir, data)


def test_plan_follows_the_paper_sequence(tmp_path):
    _, stages = planned(write_recipe(tmp_path, iterations=3, ppo_from_iteration=3))
    names = [s.name for s in stages]
    assert names[:2] == ["SFT/sft", "SFT/evaluate"]
    for v in (1, 2):
        it = f"RLHF-V{v}"
        assert names[names.index(f"{it}/collect") : names.index(f"{it}/evaluate") + 1] == [
            f"{it}/collect",
            f"{it}/reward_helpfulness",
            f"{it}/reward_safety",
            f"{it}/rejection_sampling",
            f"{it}/evaluate",
        ]
    assert names[-6:] == [
        "RLHF-V3/reward_helpfulness",
        "RLHF-V3/reward_safety",
        "RLHF-V3/rejection_sampling",
        "RLHF-V3/evaluate_rs",
        "RLHF-V3/ppo",
        "RLHF-V3/evaluate",
    ]
    by_name = {s.name: s for s in stages}
    # Reward models train on everything collected so far, starting from the SFT checkpoint.
    files = by_name["RLHF-V3/reward_safety"].config["comparison_files"]
    assert [Path(f).parent.parent.name for f in files] == ["RLHF-V1", "RLHF-V2", "RLHF-V3"]
    assert by_name["RLHF-V3/reward_safety"].config["model_name_or_path"].endswith("SFT/sft")
    # RS pools the samples of all earlier iterations; PPO starts from the RS checkpoint.
    assert [Path(p).parent.name for p in by_name["RLHF-V3/rejection_sampling"].config["previous_samples"]] == [
        "RLHF-V1",
        "RLHF-V2",
    ]
    assert by_name["RLHF-V3/ppo"].config["model_name_or_path"].endswith("RLHF-V3/rejection_sampling")
    # Two model variants per comparison: the latest and the previous model.
    collect = by_name["RLHF-V3/collect"].config
    assert collect["model_a"].endswith("RLHF-V2/rejection_sampling")
    assert collect["model_b"].endswith("RLHF-V1/rejection_sampling")
    assert [s.version for s in stages if s.version] == ["SFT", "RLHF-V1", "RLHF-V2", "RLHF-V3-noPPO", "RLHF-V3"]


def test_rs_can_fine_tune_the_sft_model_on_samples_of_the_latest(tmp_path):
    _, stages = planned(write_recipe(tmp_path, iterations=3, ppo_from_iteration=4))
    latest = {s.name: s.config for s in stages}["RLHF-V3/rejection_sampling"]
    assert latest["model_name_or_path"].endswith("RLHF-V2/rejection_sampling")
    assert "policy_model_name_or_path" not in latest
    _, stages = planned(write_recipe(tmp_path, iterations=3, ppo_from_iteration=4, rs_fine_tunes="sft"))
    by_name = {s.name: s for s in stages}
    for v in (1, 2, 3):
        rs = by_name[f"RLHF-V{v}/rejection_sampling"]
        assert rs.config["model_name_or_path"].endswith("SFT/sft")
        sampler = "SFT/sft" if v == 1 else f"RLHF-V{v - 1}/rejection_sampling"
        assert rs.config["policy_model_name_or_path"].endswith(sampler) and "SFT/sft" in rs.depends_on
    with pytest.raises(RecipeError, match="rs_fine_tunes must be 'latest' or 'sft'"):
        planned(write_recipe(tmp_path, rs_fine_tunes="base"))


def test_changed_stage_config_changes_its_hash_and_everything_downstream(tmp_path):
    _, before = planned(write_recipe(tmp_path, iterations=2, ppo_from_iteration=3))
    changed = dict(SHORT["reward_safety"], learning_rate=2.0e-3)
    _, after = planned(write_recipe(tmp_path, iterations=2, ppo_from_iteration=3, reward_safety=changed))
    h0, h1 = stage_hashes(before), stage_hashes(after)
    differs = {name for name in h0 if h0[name] != h1[name]}
    assert differs == {
        "RLHF-V1/reward_safety",
        "RLHF-V1/rejection_sampling",
        "RLHF-V1/evaluate",
        "RLHF-V2/collect",
        "RLHF-V2/reward_safety",
        "RLHF-V2/reward_helpfulness",
        "RLHF-V2/rejection_sampling",
        "RLHF-V2/evaluate",
    }


def test_world_data_is_deterministic(tmp_path):
    config, _ = planned(write_recipe(tmp_path))
    first = {p: Path(p).read_text() for p in write_world_data(config, tmp_path / "a").values()}
    second = {p.replace("/b/", "/a/"): Path(p).read_text() for p in write_world_data(config, tmp_path / "b").values()}
    assert first == second


def test_ppo_every_training_prompt_writes_the_whole_training_pool_and_nothing_held_out(tmp_path):
    config, _ = planned(write_recipe(tmp_path, world={**SHORT["world"], "ppo_every_training_prompt": True}))
    rows = read_jsonl_tolerant(Path(config.run_dir) / "data" / "ppo.jsonl")
    pool = prompt_pool("train")
    assert [r["prompt"] for r in rows] == [p["prompt"] for p in pool] and len(rows) > SHORT["world"]["ppo_prompts"]
    assert not {r["prompt"] for r in rows} & {p["prompt"] for p in prompt_pool("heldout")}
    drawn, _ = planned(write_recipe(tmp_path))
    assert len(read_jsonl_tolerant(Path(drawn.run_dir) / "data" / "ppo.jsonl")) == SHORT["world"]["ppo_prompts"]


def test_borderline_safety_annotation_marks_only_that_share_of_borderline_collection_prompts(tmp_path):
    def collected(share):
        config, _ = planned(write_recipe(tmp_path, world={**SHORT["world"], "borderline_safety_annotation": share}))
        rows = read_jsonl_tolerant(Path(config.run_dir) / "data" / "collect_v1.jsonl")
        return [r for r in rows if r["family"] == "borderline"], [r for r in rows if r["family"] != "borderline"]

    default_config, _ = planned(write_recipe(tmp_path))
    default_files = {p.name: p.read_text() for p in (Path(default_config.run_dir) / "data").iterdir()}
    borderline, others = collected(0.0)
    assert borderline and not any("annotation_kind" in r for r in borderline + others)
    assert {p.name: p.read_text() for p in (tmp_path / "run" / "data").iterdir()} == default_files
    every, others = collected(1.0)
    assert [r["annotation_kind"] for r in every] == ["safety"] * len(borderline)
    assert not any("annotation_kind" in r for r in others)
    assert all(not r["is_safety_prompt"] and r["kind"] == "helpfulness" for r in every)  # PPO routing unchanged
    half, _ = collected(0.5)
    marked = sum("annotation_kind" in r for r in half)
    assert 0 < marked < len(half)
    with pytest.raises(RecipeError, match=r"world\.borderline_safety_annotation"):
        collected(1.5)


def test_unknown_key_in_a_stage_section_fails_before_anything_runs(tmp_path):
    path = write_recipe(tmp_path, sft={**SHORT["sft"], "learnin_rate": 1.0})
    config, stages = planned(path)
    with pytest.raises(
        RecipeError, match=r"\(SFT/sft\): unknown key 'learnin_rate' \(did you mean 'learning_rate'\?\)"
    ):
        validate_stages(stages, str(path))
    bad_top = write_recipe(tmp_path, iterationz=3)
    with pytest.raises(RecipeError, match="unknown key 'iterationz'"):
        load_pipeline_config(str(bad_top))


def _fake_stage_launcher(log: Path, fail_on: str | None):
    """Stand-in for `accelerate launch`: records the stage and fails on one, as a kill would."""

    def launch(config, script, recipe_path, output_dir):
        name = str(Path(output_dir).relative_to(Path(config.run_dir)))
        code = (
            f"import sys; open({str(log)!r}, 'a').write({name!r} + '\\n'); "
            f"sys.exit(1 if {name!r} == {fail_on!r} else 0)"
        )
        return [sys.executable, "-c", code]

    return launch


def test_rerun_skips_finished_stages_and_redoes_only_the_interrupted_one(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, iterations=2, ppo_from_iteration=3)
    monkeypatch.setattr(pipeline, "write_report", lambda *a: {"versions": []})
    log = tmp_path / "launched.txt"
    monkeypatch.setattr(pipeline, "launch_command", _fake_stage_launcher(log, fail_on="RLHF-V1/rejection_sampling"))
    with pytest.raises(RecipeError, match="stage RLHF-V1/rejection_sampling failed"):
        pipeline.run_pipeline(str(path))
    first = log.read_text().split()
    assert first[-1] == "RLHF-V1/rejection_sampling"
    monkeypatch.setattr(pipeline, "launch_command", _fake_stage_launcher(log, fail_on=None))
    pipeline.run_pipeline(str(path))
    second = log.read_text().split()[len(first) :]
    assert second[0] == "RLHF-V1/rejection_sampling"  # the interrupted stage, and nothing before it
    assert not set(second) & set(first[:-1])
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert all(record["status"] == "complete" for record in manifest["stages"].values())
    # A third run has nothing to do.
    pipeline.run_pipeline(str(path))
    assert log.read_text().split()[len(first) + len(second) :] == []


def test_stop_after_a_finished_stage_stops_there(tmp_path, monkeypatch):
    path = write_recipe(tmp_path, iterations=2, ppo_from_iteration=3)
    monkeypatch.setattr(pipeline, "write_report", lambda *a: {"versions": []})
    log = tmp_path / "launched.txt"
    monkeypatch.setattr(pipeline, "launch_command", _fake_stage_launcher(log, fail_on=None))
    pipeline.run_pipeline(str(path), stop_after="RLHF-V1/collect")
    assert log.read_text().split() == ["SFT/sft", "SFT/evaluate", "RLHF-V1/collect"]
    # Already done: a second call with the same stop runs nothing (it once ran the rest of the pipeline).
    pipeline.run_pipeline(str(path), stop_after="SFT/sft")
    assert log.read_text().split() == ["SFT/sft", "SFT/evaluate", "RLHF-V1/collect"]
    with pytest.raises(RecipeError, match="--stop_after: no stage 'RLHF-V9/collect' in this run"):
        pipeline.run_pipeline(str(path), stop_after="RLHF-V9/collect")
    assert len(log.read_text().split()) == 3


STAGE_PROBE = """
import json, os, sys, torch
out = dict(argv=sys.argv[1:], threads=torch.get_num_threads(), omp=os.environ["OMP_NUM_THREADS"], cwd=os.getcwd(),
           pid=os.getpid(), torch_preloaded="transformers" in sys.modules)
print(json.dumps(out))
sys.exit(int(os.environ.get("PROBE_EXIT", "0")))
"""


def test_single_process_stages_are_forked_with_every_core_and_report_their_exit_code(tmp_path, monkeypatch):
    """launcher auto: no accelerate launch, libraries already imported, threads = cores, output in stage.log."""
    (tmp_path / "probe.py").write_text(STAGE_PROBE)
    monkeypatch.setattr(pipeline, "RECIPES_DIR", tmp_path)
    monkeypatch.setattr(pipeline.os, "cpu_count", lambda: 2)
    config = load_pipeline_config(str(write_recipe(tmp_path, launcher="auto")))
    stage = pipeline.Stage("X/probe", "probe.py", {}, [])
    out = tmp_path / "X"
    out.mkdir()
    assert pipeline.run_stage(config, stage, out / "recipe.yaml", out) == 0
    seen = json.loads((out / "stage.log").read_text().splitlines()[-1])
    assert seen["argv"] == ["--config", str(out / "recipe.yaml"), "--output_dir", str(out)]
    assert (seen["threads"], seen["omp"]) == (2, "2") and seen["torch_preloaded"]
    assert seen["cwd"] == str(pipeline.REPO_ROOT) and seen["pid"] != os.getpid()
    monkeypatch.setenv("PROBE_EXIT", "3")
    assert pipeline.run_stage(config, stage, out / "recipe.yaml", out) == 3
    assert os.getcwd() != str(tmp_path / "X") and pipeline.torch.get_num_threads() == 1  # the parent is untouched
    # With an accelerate config, the stage is launched; its processes share the cores.
    accelerate_config = tmp_path / "ddp.yaml"
    accelerate_config.write_text("num_processes: 2\n")
    config = load_pipeline_config(
        str(write_recipe(tmp_path, launcher="auto", accelerate_config=str(accelerate_config)))
    )
    command = pipeline.launch_command(config, "sft.py", out / "recipe.yaml", out)
    assert command[3:5] == ["--num_cpu_threads_per_process", "1"] and not pipeline.forks_stages(config)


def _wait_for_running(manifest_path: Path, stage: str, process, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"pipeline ended before {stage} started")
        if manifest_path.exists():
            try:
                record = json.loads(manifest_path.read_text())["stages"].get(stage)
            except json.JSONDecodeError:
                record = None
            if record and record["status"] == "running":
                return
        time.sleep(0.1)
    raise AssertionError(f"{stage} did not start within {timeout}s")


def test_kill_minus_9_mid_iteration_then_rerun_finishes_without_redoing_stages(tmp_path):
    """The tiny end-to-end pipeline (SFT, V1 with RS and PPO), killed with SIGKILL inside V1 (forked stages)."""
    # A longer R_s stage (10 epochs) so the kill lands inside it on a fast machine too.
    path = write_recipe(tmp_path, launcher="auto", reward_safety={**SHORT["reward_safety"], "num_train_epochs": 10})
    command = [sys.executable, str(REPO / "recipes" / "pipeline.py"), "--config", str(path)]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen(
        command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    manifest_path = tmp_path / "run" / "manifest.json"
    _wait_for_running(manifest_path, "RLHF-V1/reward_safety", process, timeout=600)
    time.sleep(0.3)  # a forked stage starts at once and this one lasts a few seconds: kill it mid-way
    os.killpg(process.pid, signal.SIGKILL)  # the whole process group: runner and the stage it launched
    process.wait()
    killed = json.loads(manifest_path.read_text())["stages"]
    finished_before = {name for name, r in killed.items() if r["status"] == "complete"}
    assert {"SFT/sft", "SFT/evaluate", "RLHF-V1/collect", "RLHF-V1/reward_helpfulness"} <= finished_before
    comparisons = (tmp_path / "run" / "RLHF-V1" / "collect" / "comparisons.jsonl").read_text()

    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for name in finished_before:
        assert f"{name}: done" in result.stdout, name
    assert "RLHF-V1/reward_safety: done" not in result.stdout
    assert (tmp_path / "run" / "RLHF-V1" / "collect" / "comparisons.jsonl").read_text() == comparisons
    report = json.loads((tmp_path / "run" / "report.json").read_text())
    assert [v["name"] for v in report["versions"]] == ["SFT", "RLHF-V1-noPPO", "RLHF-V1"]
    # Each version names the folder of its answers, which benchmarks pair prompt by prompt.
    assert [v["evaluation"] for v in report["versions"]] == ["SFT/evaluate", "RLHF-V1/evaluate_rs", "RLHF-V1/evaluate"]
    for version in report["versions"]:
        assert (tmp_path / "run" / version["evaluation"] / "responses.jsonl").exists()
        assert 0.0 <= version["gold_helpfulness"] <= 1.0
        assert 0.0 <= version["gold_violation_rate"] <= 1.0
        assert 0.0 <= version["rm_safety"] <= 1.0
    assert report["wall_seconds"] > 0


def test_changed_world_data_reruns_the_stages_that_read_it(tmp_path):
    path = write_recipe(tmp_path)
    config, stages = planned(path)
    data = write_world_data(config, Path(config.run_dir) / "data")
    before = stage_hashes(stages, data)
    world = {**SHORT["world"], "sft_demonstrations": 40}
    config2, stages2 = planned(write_recipe(tmp_path, world=world))
    after = stage_hashes(stages2, write_world_data(config2, Path(config2.run_dir) / "data"))
    assert before["SFT/sft"] != after["SFT/sft"]  # same path, new content
    assert before["RLHF-V1/ppo"] != after["RLHF-V1/ppo"]  # downstream of SFT


def test_world_open_source_comparisons_feed_the_helpfulness_rm_and_the_fixed_test_set_every_rm(tmp_path):
    world = {**SHORT["world"], "open_source_comparisons": 40, "rm_test_comparisons": 30}
    _, stages = planned(write_recipe(tmp_path, iterations=2, ppo_from_iteration=3, world=world))
    by_name = {s.name: s.config for s in stages}
    data = tmp_path / "run" / "data"
    for v in (1, 2):
        helpful, safety = by_name[f"RLHF-V{v}/reward_helpfulness"], by_name[f"RLHF-V{v}/reward_safety"]
        assert helpful["sources"] == [
            {"path": str(data / "open_source.jsonl"), "format": "llama2-align", "pool": "open_source"}
        ]
        assert "sources" not in safety
        assert helpful["eval_files"] == safety["eval_files"] == [str(data / "rm_test.jsonl")]
    test_rows = [json.loads(line) for line in (data / "rm_test.jsonl").read_text().splitlines()]
    assert test_rows and all(prompt_by_id(row["prompt_id"])["split"] == "heldout" for row in test_rows)
    _, plain = planned(write_recipe(tmp_path, iterations=1, ppo_from_iteration=2))
    assert not {"sources", "eval_files"} & set({s.name: s.config for s in plain}["RLHF-V1/reward_helpfulness"])


def test_oracle_judges_replace_the_reward_models_in_rs_and_ppo_only(tmp_path):
    _, stages = planned(write_recipe(tmp_path, iterations=2, ppo_from_iteration=2, oracle_judges=True))
    by_name = {s.name: s.config for s in stages}
    for name in ("RLHF-V1/rejection_sampling", "RLHF-V2/rejection_sampling", "RLHF-V2/ppo"):
        assert (by_name[name]["helpfulness_model"], by_name[name]["safety_model"]) == (
            "builtin:world-helpfulness",
            "builtin:world-safety",
        )
    # The reward models are still trained, and they judge the versions.
    assert by_name["RLHF-V2/evaluate"]["reward_helpfulness"].endswith("RLHF-V2/reward_helpfulness")
    assert "RLHF-V2/reward_helpfulness" in by_name
