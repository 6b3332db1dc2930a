"""alignment/distributed.py: sharding, gathering, generation on consolidated weights, configs."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest
import torch
import trl.models.utils as trl_utils

import alignment.distributed as distributed
from alignment.config import RecipeError
from alignment.distributed import (
    PAD_INDEX,
    all_gather_objects,
    check_generation_backend,
    distributed_kind,
    gather_metrics,
    gathered_full_weights,
    pad_dataset_to_multiple,
    shard,
    shard_bounds,
    shard_indices,
)

ROOT = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------------- sharding


def test_shard_indices_uneven_blocks_first_ranks_take_the_extra():
    assert [shard_indices(7, r, 3) for r in range(3)] == [[0, 1, 2], [3, 4], [5, 6]]
    assert [shard_bounds(7, r, 3) for r in range(3)] == [(0, 3), (3, 5), (5, 7)]


@pytest.mark.parametrize("n,world", [(0, 2), (1, 2), (5, 2), (13, 4), (16, 4), (3, 8)])
def test_shards_cover_every_item_exactly_once(n, world):
    joined = [i for r in range(world) for i in shard_indices(n, r, world)]
    assert joined == list(range(n))


def test_padded_shards_have_equal_length_and_mark_padding():
    assert [shard_indices(5, r, 2, pad=True) for r in range(2)] == [[0, 1, 2], [3, 4, PAD_INDEX]]
    # Fewer items than processes: the last ranks hold only padding but still take part.
    assert [shard_indices(1, r, 3, pad=True) for r in range(3)] == [[0], [PAD_INDEX], [PAD_INDEX]]
    assert [shard_indices(1, r, 3) for r in range(3)] == [[0], [], []]


def test_shard_rejects_a_rank_outside_the_world():
    with pytest.raises(ValueError, match="rank 2 is not in a world of 2"):
        shard_indices(4, 2, 2)


def test_single_process_helpers_are_identities():
    assert shard(["a", "b", "c"]) == ["a", "b", "c"]
    assert all_gather_objects([1, 2]) == [1, 2]
    assert gather_metrics({"loss": 2.0, "acc": 0.5}, weight=3) == {"acc": 0.5, "loss": 2.0}
    with pytest.raises(ValueError, match="total weight"):
        gather_metrics({"loss": 1.0}, weight=0)


def test_pad_dataset_to_multiple_appends_zero_weight_rows():
    from datasets import Dataset

    data = Dataset.from_list([{"input_ids": [5, 6], "labels": [-100, 6], "seq_lengths": [2]}] * 5)
    padded = pad_dataset_to_multiple(data, 4, pad_token_id=0)
    assert len(padded) == 8
    assert padded[5] == {"input_ids": [0], "labels": [-100], "seq_lengths": [1]}
    assert padded[:5] == data[:5]
    assert pad_dataset_to_multiple(padded, 4, 0) is padded
    with pytest.raises(ValueError, match="column 'score'"):
        pad_dataset_to_multiple(Dataset.from_list([{"input_ids": [1], "score": [1.0]}]), 2, 0)


# ---------------------------------------------------------------------------------------------- generation dispatch


def test_plain_model_yields_the_unwrapped_module():
    model = torch.nn.Linear(2, 2)
    assert distributed_kind(model) == "single"
    with gathered_full_weights(model) as unwrapped:
        assert unwrapped is model
    wrapped = types.SimpleNamespace(module=model, parameters=model.parameters, modules=model.modules)
    accelerator = types.SimpleNamespace(unwrap_model=lambda m: m.module, state=types.SimpleNamespace())
    with gathered_full_weights(wrapped, accelerator) as unwrapped:
        assert unwrapped is model


def test_zero3_gathers_all_parameters_and_removes_hooks(monkeypatch):
    calls = []

    @contextlib.contextmanager
    def gathered(params, modifier_rank=None):
        calls.append(("gather", len(params), modifier_rank))
        yield
        calls.append(("release",))

    fake = types.ModuleType("deepspeed")
    fake.zero = types.SimpleNamespace(GatheredParameters=gathered)
    monkeypatch.setitem(sys.modules, "deepspeed", fake)
    # Only alignment.distributed sees the fake finder: a module imported meanwhile elsewhere (transformers reads
    # find_spec once per package and caches it) must not learn that nothing is installed.
    monkeypatch.setattr(
        distributed,
        "importlib",
        types.SimpleNamespace(
            util=types.SimpleNamespace(find_spec=lambda name: object() if name == "deepspeed" else None)
        ),
    )
    monkeypatch.setattr(trl_utils, "remove_hooks", lambda m: calls.append(("remove_hooks",)))
    monkeypatch.setattr(trl_utils, "add_hooks", lambda m: calls.append(("add_hooks",)))

    model = torch.nn.Linear(2, 2)
    for p in model.parameters():
        p.ds_id = 0  # what ZeRO-3 puts on every partitioned parameter
    assert distributed_kind(model) == "deepspeed_zero3"
    with gathered_full_weights(model) as unwrapped:
        assert unwrapped is model
        calls.append(("generate",))
    assert calls == [("gather", 2, None), ("remove_hooks",), ("generate",), ("add_hooks",), ("release",)]


def test_zero3_stage_is_read_from_the_accelerator_plugin():
    model = torch.nn.Linear(2, 2)
    plugin = types.SimpleNamespace(zero_stage=2)
    accelerator = types.SimpleNamespace(state=types.SimpleNamespace(deepspeed_plugin=plugin))
    assert distributed_kind(model, accelerator) == "deepspeed"
    plugin.zero_stage = 3
    assert distributed_kind(model, accelerator) == "deepspeed_zero3"


def test_zero3_without_deepspeed_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(
        distributed, "importlib", types.SimpleNamespace(util=types.SimpleNamespace(find_spec=lambda name: None))
    )
    model = torch.nn.Linear(2, 2)
    model.weight.ds_id = 0
    with pytest.raises(RecipeError, match="deepspeed package is not installed"):
        with gathered_full_weights(model):
            pass


def test_fsdp_v1_generation_is_refused_unless_allowed(monkeypatch):
    import alignment.distributed as d

    model = torch.nn.Linear(2, 2)
    monkeypatch.setattr(d, "_is_fsdp1", lambda m: True)
    assert distributed_kind(model) == "fsdp"
    with pytest.raises(RecipeError, match="fsdp_version: 2"):
        with gathered_full_weights(model):
            pass
    with gathered_full_weights(model, allow_sharded_generation=True) as same:
        assert same is model


def test_generation_backend_combinations():
    check_generation_backend("hf", "fsdp2")
    check_generation_backend("hf", "deepspeed_zero3")
    with pytest.raises(RecipeError, match="FSDP v1"):
        check_generation_backend("hf", "fsdp")
    with pytest.raises(RecipeError, match="unknown generation backend 'tgi'"):
        check_generation_backend("tgi", "single")
    with pytest.raises(RecipeError, match="vllm"):  # not installed here, and CPU anyway
        check_generation_backend("vllm", "ddp")


# ---------------------------------------------------------------------------------------------- accelerate configs


def test_accelerate_configs_load_and_name_the_llama_layer():
    from accelerate.commands.config.config_args import load_config_from_file

    kinds = {}
    for name in ("single", "ddp", "ddp-cpu", "fsdp", "zero3"):
        config = load_config_from_file(str(ROOT / "recipes" / "accelerate" / f"{name}.yaml"))
        kinds[name] = (str(config.distributed_type).split(".")[-1], config.num_processes)
    assert kinds == {
        "single": ("NO", 1),
        "ddp": ("MULTI_GPU", 8),
        "ddp-cpu": ("MULTI_CPU", 2),
        "fsdp": ("FSDP", 8),
        "zero3": ("DEEPSPEED", 8),
    }
    fsdp = load_config_from_file(str(ROOT / "recipes/accelerate/fsdp.yaml")).fsdp_config
    assert fsdp["fsdp_version"] == 2
    assert fsdp["fsdp_auto_wrap_policy"] == "TRANSFORMER_BASED_WRAP"
    assert fsdp["fsdp_transformer_layer_cls_to_wrap"] == "LlamaDecoderLayer"
    zero3 = load_config_from_file(str(ROOT / "recipes/accelerate/zero3.yaml")).deepspeed_config
    assert zero3["zero_stage"] == 3 and zero3["zero3_save_16bit_model"] is True


# ---------------------------------------------------------------------------------------------- two processes (gloo)

WORKER = textwrap.dedent(
    """
    import json, os, sys
    import torch, torch.distributed as dist
    dist.init_process_group("gloo")
    from alignment.distributed import all_gather_objects, gather_metrics, gathered_full_weights, shard
    from rlhf.ppo_math import masked_whiten

    rank, world = dist.get_rank(), dist.get_world_size()
    out = {}
    items = list(range(5))                      # uneven: 3 on rank 0, 2 on rank 1
    mine = shard(items)
    out["gathered"] = all_gather_objects([i * 10 for i in mine])
    # per-rank mean loss over its rows, weighted by rows: must equal the mean over all rows
    losses = torch.tensor([1.0, 2.0, 3.0, 4.0, 10.0])
    out["metrics"] = gather_metrics({"loss": losses[mine].mean().item()}, weight=len(mine))
    scores = torch.tensor([0.5, -1.0, 2.0, 3.5, 0.0])
    out["whitened"] = masked_whiten(scores[mine], distributed=True).tolist()

    from torch.distributed.fsdp import fully_shard
    from alignment.models import load_causal_lm
    model = load_causal_lm("builtin:tiny-llama")
    ids = torch.tensor([[2, 10, 11, 12]])
    reference = model.generate(ids, max_new_tokens=6, do_sample=False).tolist()
    for layer in model.model.layers:
        fully_shard(layer)
    fully_shard(model)
    with gathered_full_weights(model) as full:
        out["full_inside"] = all(type(p) is torch.nn.Parameter and not hasattr(p, "placements")
                                 for p in full.parameters())
        out["same_tokens"] = full.generate(ids, max_new_tokens=6, do_sample=False).tolist() == reference
    out["sharded_after"] = all(hasattr(p, "placements") for p in model.parameters())
    with open(os.path.join(sys.argv[1], f"rank{rank}.json"), "w") as handle:
        json.dump(out, handle)
    dist.destroy_process_group()
    """
)


def torchrun(script: Path, *args: str, nproc: int = 2, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    # --standalone: a free port per launch, so concurrent test runs on one machine never meet.
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        str(nproc),
        str(script),
        *args,
    ]
    # A new session lets a timeout kill the workers too, not only the launcher: no rank is left waiting.
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.communicate()
        raise
    assert process.returncode == 0, stderr[-3000:]
    return subprocess.CompletedProcess(command, process.returncode, stdout, stderr)


@pytest.mark.slow  # ~30 s on 2 shared cores; the SFT test below keeps a 2-process run in CI
def test_two_processes_shard_gather_whiten_and_generate_on_gathered_fsdp2_weights(tmp_path):
    import json

    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    torchrun(script, str(tmp_path))
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    expected_whitened = masked_whiten_reference([0.5, -1.0, 2.0, 3.5, 0.0])
    for out in ranks:
        assert out["gathered"] == [0, 10, 20, 30, 40]
        assert out["metrics"]["loss"] == pytest.approx(4.0)  # (1+2+3+4+10)/5, not (2 + 7)/2
        assert out["full_inside"] and out["same_tokens"] and out["sharded_after"]
    assert ranks[0]["whitened"] + ranks[1]["whitened"] == pytest.approx(expected_whitened, abs=1e-6)


def masked_whiten_reference(values):
    t = torch.tensor(values, dtype=torch.float64)
    return ((t - t.mean()) / torch.sqrt(t.var(unbiased=False) + 1e-8)).tolist()


# ------------------------------------------------------------------------------------------- stages, 1 vs 2 processes


def _run_stage(script: str, args: list[str], nproc: int) -> None:
    if nproc == 1:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        result = subprocess.run(
            [sys.executable, script, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=180
        )
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        torchrun(ROOT / script, *args, nproc=nproc, timeout=180)


def _logged(output_dir: Path) -> list[dict]:
    import json

    (state,) = output_dir.glob("checkpoint-*/trainer_state.json")
    return [h for h in json.loads(state.read_text())["log_history"] if "loss" in h]


def test_sft_two_processes_match_one_process_with_an_uneven_dataset(tmp_path):
    """13 dialogs, global batch 4: the last batch holds one dialog, which 2 processes must not pad by repeating."""
    from safetensors.torch import load_file

    data = tmp_path / "dialogs.jsonl"
    data.write_text("".join((ROOT / "alignment/assets/demo_sft.jsonl").read_text().splitlines(True)[:13]))
    common = [
        "--config",
        "recipes/tiny/sft.yaml",
        "--dataset_name",
        str(data),
        "--eval_fraction",
        "0",
        "--global_batch_size",
        "4",
        "--per_device_train_batch_size",
        "2",
        "--num_train_epochs",
        "1",
        "--packing",
        "false",
        "--logging_steps",
        "1",
        "--save_steps",
        "4",
        "--report_to",
        "none",
        "--use_cpu",
        "true",
    ]
    _run_stage("recipes/sft.py", [*common, "--output_dir", str(tmp_path / "one")], nproc=1)
    _run_stage("recipes/sft.py", [*common, "--output_dir", str(tmp_path / "two")], nproc=2)

    one, two = _logged(tmp_path / "one"), _logged(tmp_path / "two")
    assert [h["step"] for h in one] == [h["step"] for h in two] == [1, 2, 3, 4]  # ceil(13 / 4)
    # Every answer token is trained on exactly once in both runs: 1 process accumulates 2 x 2, 2 processes 2 + 2.
    assert [h["num_tokens"] for h in one] == [h["num_tokens"] for h in two]
    for a, b in zip(one, two):
        assert b["loss"] == pytest.approx(a["loss"], abs=1e-4)
    weights_one = load_file(tmp_path / "one" / "model.safetensors")
    weights_two = load_file(tmp_path / "two" / "model.safetensors")
    assert weights_one.keys() == weights_two.keys()
    for name in weights_one:
        torch.testing.assert_close(weights_two[name], weights_one[name], atol=1e-4, rtol=1e-3)
