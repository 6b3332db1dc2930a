"""Distributed semantics shared by every stage: sharding, gathering, weights for generation, checkpoints.

The stages run under plain python, `torchrun` or `accelerate launch` (single process, DDP, FSDP, DeepSpeed
ZeRO-3; configs in recipes/accelerate/). What must hold whatever the number of processes:

- data is split without duplicates or drops, an uneven last batch included (`shard_indices`, `gather_in_order`);
  a Trainer's data is padded to a multiple of the global batch with rows that weigh nothing
  (`pad_dataset_to_multiple`) and drawn in an order that does not depend on the process count
  (`GlobalLengthGroupedSampler`), so every optimizer step sees the global batch of one process;
- metrics and statistics are those of the global batch (`gather_metrics`; reward and advantage whitening use
  `rlhf.ppo_math.masked_whiten(..., distributed=True)`, which all-reduces its sums);
- generation under FSDP / ZeRO-3 runs on consolidated weights, freed afterwards (`gathered_full_weights`):
  the paper reports generation ~20x slower until it did this (sec. 3.2.3);
- checkpoints are written once, as a full safetensors state dict, so they load at another world size
  (`save_full_model`);
- no rank waits forever: collectives run under a process-group timeout (`process_group_timeout`).

Everything here talks to `torch.distributed` directly (what accelerate and torchrun both initialise), so the
helpers work the same inside a TRL trainer, a hand-written PPO loop or a test launched with torchrun.
"""

from __future__ import annotations

import contextlib
import datetime
import importlib.util
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
import torch.distributed as dist
from accelerate.utils import InitProcessGroupKwargs
from torch.distributed.fsdp import FullyShardedDataParallel
from transformers.trainer_pt_utils import get_length_grouped_indices

from alignment.config import RecipeError

# Re-exported: the stages ask this module; the torch-free dry run imports alignment.launch directly.
from alignment.launch import DISTRIBUTED_KINDS as DISTRIBUTED_KINDS
from alignment.launch import GENERATION_BACKENDS as GENERATION_BACKENDS
from alignment.launch import check_generation_backend as check_generation_backend

try:
    from torch.distributed.fsdp import FSDPModule
except ImportError:  # torch < 2.6 has no FSDP2
    FSDPModule = None

PAD_INDEX = -1
"""Marks a padding slot in `shard_indices(..., pad=True)`: the process computes on some row but weighs it 0."""


# ----------------------------------------------------------------------------------------------------------------
# Processes


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of the running process group, (0, 1) without one."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    return rank_and_world()[0] == 0


def process_group_timeout(minutes: float = 30.0):
    """accelerate kwargs handler bounding every collective: a crashed or stuck rank ends the run with an error
    after `minutes` instead of leaving the others blocked forever. Trainers take `ddp_timeout` (seconds)."""
    return InitProcessGroupKwargs(timeout=datetime.timedelta(minutes=minutes))


# ----------------------------------------------------------------------------------------------------------------
# Sharding


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, stop) of `rank`'s contiguous block when n items are split over `world` processes.

    Blocks differ in size by at most one (the first n % world ranks take one more), so concatenating the
    blocks in rank order gives 0..n-1 back: nothing duplicated, nothing dropped.
    """
    if world <= 0 or not 0 <= rank < world:
        raise ValueError(f"rank {rank} is not in a world of {world} processes")
    if n < 0:
        raise ValueError(f"cannot shard {n} items")
    base, extra = divmod(n, world)
    start = rank * base + min(rank, extra)
    return start, start + base + (1 if rank < extra else 0)


def shard_indices(n: int, rank: int, world: int, pad: bool = False) -> list[int]:
    """Indices of the n items that process `rank` of `world` owns (see `shard_bounds`).

    pad=False: ranks hold ceil(n/world) or floor(n/world) items; a rank may hold none when n < world.
    pad=True: every rank holds exactly ceil(n/world) slots, the missing ones filled with `PAD_INDEX`, for
    loops where each rank must run the same number of forward/backward passes (DDP, FSDP collectives): the
    caller computes on a stand-in row and gives it zero weight, which keeps the result equal to one process.
    """
    start, stop = shard_bounds(n, rank, world)
    indices = list(range(start, stop))
    if pad:
        indices += [PAD_INDEX] * (math.ceil(n / world) - len(indices))
    return indices


def shard(items: Sequence, rank: int | None = None, world: int | None = None) -> list:
    """This process's contiguous share of `items` (the running process group's rank and world by default)."""
    if rank is None or world is None:
        rank, world = rank_and_world()
    start, stop = shard_bounds(len(items), rank, world)
    return list(items[start:stop])


# Columns of a tokenized training row and the value of a row that weighs nothing (no label, no loss, no token
# counted in `num_items_in_batch`; a reward pair of weight 0); a column not named here is an error rather than
# a guess. Token columns hold one pad token.
_TOKEN_COLUMNS = ("input_ids", "chosen_ids", "rejected_ids")
_ZERO_WEIGHT_ROW = {
    "labels": [-100],
    "seq_lengths": [1],
    "position_ids": [0],
    "attention_mask": [1],
    "completion_mask": [0],
    "assistant_masks": [0],
    "weight": 0.0,
    "margin": 0.0,
    "length": 1,
    "chosen_response_tokens": 1,
    "rejected_response_tokens": 1,
}


def pad_dataset_to_multiple(dataset, multiple: int, pad_token_id: int):
    """Append zero-weight rows so len(dataset) is a multiple of `multiple` (the method's global batch).

    accelerate evens out an uneven last batch by repeating samples from the start of the epoch
    (`even_batches`), so a 2-process run would train on rows a 1-process run does not. With the dataset a
    multiple of the global batch (a number that does not depend on the process count) the random order,
    every global batch and every loss are those of one process, provided the added rows weigh nothing:
    - a language-model row (input_ids, labels[, seq_lengths...]) has no label, so adds neither loss nor tokens;
    - a preference pair (chosen_ids, rejected_ids[, margin, length]) has `weight` 0, which the trainer's loss
      and metrics must honour (reward.trainer does); its real pairs carry weight 1.
    """
    if multiple <= 0:
        raise ValueError(f"multiple must be positive, got {multiple}")
    missing = -len(dataset) % multiple
    if missing == 0:
        return dataset
    row = {}
    for name in dataset.column_names:
        if name in _TOKEN_COLUMNS:
            row[name] = [pad_token_id]
        elif name in _ZERO_WEIGHT_ROW:
            value = _ZERO_WEIGHT_ROW[name]
            row[name] = list(value) if isinstance(value, list) else value
        else:
            raise ValueError(f"pad_dataset_to_multiple: no zero-weight value known for column '{name}'")
    if not {"labels", "completion_mask", "assistant_masks", "weight"} & set(row):
        raise ValueError(
            "pad_dataset_to_multiple: the dataset has no 'labels' or 'weight' column (nor a loss mask), "
            "so a padding row could not be told from a real one and would count in the loss"
        )
    # Trainer data only: the GPU check (benchmarks/gpu_check.py) imports this module where datasets is absent.
    from datasets import Dataset, concatenate_datasets  # noqa: PLC0415

    padding = Dataset.from_list([row] * missing, features=dataset.features)
    return concatenate_datasets([dataset, padding])


class GlobalLengthGroupedSampler(torch.utils.data.Sampler):
    """transformers' length-grouped order, grouped by the global batch and seeded per epoch.

    Trainer's own `LengthGroupedSampler` groups by per-device batch x accumulation (which changes with the
    process count) and draws from the global RNG (which accelerate replaces by a fresh generator under several
    processes), so 1 and 2 processes would see different batches. Here the order depends only on the lengths,
    the global batch, the seed and the epoch: every process and every world size get the same index list,
    which accelerate then cuts into per-device batches. Trainer calls `set_epoch` each epoch (resumption too).
    """

    def __init__(self, lengths: Sequence[int], global_batch_size: int, seed: int):
        self.lengths, self.global_batch_size, self.seed, self.epoch = list(lengths), global_batch_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        return iter(get_length_grouped_indices(self.lengths, self.global_batch_size, generator=generator))


def all_gather_objects(items: list) -> list:
    """Concatenate every process's list of picklable items, in rank order (one process: the list itself).

    With `shard` this is the exact inverse: `all_gather_objects(shard(items)) == list(items)` on every rank.
    """
    if not is_distributed():
        return list(items)
    gathered: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, list(items))
    return [item for part in gathered for item in part]


gather_in_order = all_gather_objects


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes (a copy; the input is left alone). The identity without a process group."""
    if not is_distributed():
        return tensor.clone()
    out = tensor.detach().clone()
    if dist.get_backend() == "nccl" and out.device.type == "cpu":
        out = out.cuda()
    dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out.to(tensor.device)


def gather_metrics(metrics: Mapping[str, float | torch.Tensor], weight: float = 1.0) -> dict[str, float]:
    """Global weighted means of per-process metrics: sum_r(w_r * m_r) / sum_r(w_r), the same on every rank.

    `weight` is what each process's values average over (rows, pairs or tokens). A process that saw no data
    passes weight 0 and its values do not count, so an uneven split gives the single-process numbers.
    Every process must pass the same keys (sorted here, so their order does not matter).
    """
    keys = sorted(metrics)
    values = [float(metrics[key]) * weight for key in keys] + [float(weight)]
    totals = all_reduce_sum(torch.tensor(values, dtype=torch.float64)).tolist()
    total_weight = totals[-1]
    if total_weight <= 0:
        raise ValueError("gather_metrics: the total weight over all processes is zero")
    return {key: totals[i] / total_weight for i, key in enumerate(keys)}


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """`obj` as held by process `src` (e.g. a seed or a resume step decided once), on every process."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


# ----------------------------------------------------------------------------------------------------------------
# Which kind of distribution wraps a model


def _is_fsdp1(model) -> bool:
    return any(isinstance(m, FullyShardedDataParallel) for m in model.modules())


def _is_fsdp2(model) -> bool:
    if FSDPModule is None:
        return False
    return any(isinstance(m, FSDPModule) for m in model.modules())


def _deepspeed_zero_stage(model, accelerator) -> int | None:
    plugin = getattr(getattr(accelerator, "state", None), "deepspeed_plugin", None) if accelerator else None
    if plugin is not None:
        return int(getattr(plugin, "zero_stage", 0) or 0)
    # ZeRO-3 marks every partitioned parameter with a `ds_id`; this also catches a model built outside accelerate.
    if any(hasattr(p, "ds_id") for p in model.parameters()):
        return 3
    return None


def distributed_kind(model, accelerator=None) -> str:
    """One of DISTRIBUTED_KINDS for a prepared model (what decides how to get full weights out of it)."""
    stage = _deepspeed_zero_stage(model, accelerator)
    if stage is not None:
        return "deepspeed_zero3" if stage == 3 else "deepspeed"
    if _is_fsdp2(model):
        return "fsdp2"
    if _is_fsdp1(model):
        return "fsdp"
    if isinstance(model, torch.nn.parallel.DistributedDataParallel):
        return "ddp"
    return "single"


def _unwrap(model, accelerator):
    if accelerator is not None:
        return accelerator.unwrap_model(model)
    return getattr(model, "module", model)


# ----------------------------------------------------------------------------------------------------------------
# Generation on consolidated weights (sec. 3.2.3: "20x" faster than generating through sharded layers)


@contextlib.contextmanager
def gathered_full_weights(model, accelerator=None, allow_sharded_generation: bool = False) -> Iterator[Any]:
    """Yield a module whose `generate` runs on full (unsharded) weights; re-shard and free them on exit.

    - single process / DDP: weights are already whole; yields the unwrapped model.
    - FSDP2 (`fully_shard`, fsdp_version 2): unshard every FSDP module and keep them unsharded across the
      forward calls of generation (`set_reshard_after_forward(False)`), then reshard: one all-gather per
      rollout instead of one per layer per generated token.
    - DeepSpeed ZeRO-3: `deepspeed.zero.GatheredParameters` over all parameters, with ZeRO's forward hooks
      removed while generating (TRL's approach), so the gathered weights are used as they are.
    - FSDP1 (`FullyShardedDataParallel`): its forward cannot run inside `summon_full_params`, so there is no
      consolidated path; this is refused unless `allow_sharded_generation=True`, which generates through the
      sharded wrapper (correct but slow, the paper's 20x). Use fsdp_version 2 (recipes/accelerate/fsdp.yaml).

    Every process must enter together (the gathers are collectives), and each generates on its own prompts.
    """
    kind = distributed_kind(model, accelerator)
    if kind in ("single", "ddp", "deepspeed"):
        # ZeRO-1/2 shard optimiser state and gradients only; parameters are whole on every rank.
        yield _unwrap(model, accelerator)
    elif kind == "fsdp2":
        with _fsdp2_unsharded(model):
            yield _unwrap(model, accelerator)
    elif kind == "deepspeed_zero3":
        with _zero3_gathered(model):
            yield _unwrap(model, accelerator)
    elif kind == "fsdp":
        if not allow_sharded_generation:
            raise RecipeError(
                "generation under FSDP v1 cannot use consolidated weights (its forward refuses to run inside "
                "summon_full_params) and would be ~20x slower (Llama 2 sec. 3.2.3); launch with "
                "recipes/accelerate/fsdp.yaml (fsdp_version: 2), or set allow_sharded_generation"
            )
        yield model
    else:  # pragma: no cover - DISTRIBUTED_KINDS is closed
        raise AssertionError(kind)


@contextlib.contextmanager
def _fsdp2_unsharded(model):
    modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for module in modules:
        module.set_reshard_after_forward(False, recurse=False)
        module.unshard()
    try:
        yield
    finally:
        for module in modules:
            module.reshard()
            # Training resumes with the memory-saving default: reshard after each forward.
            module.set_reshard_after_forward(True, recurse=False)


@contextlib.contextmanager
def _zero3_gathered(model):
    if importlib.util.find_spec("deepspeed") is None:
        raise RecipeError("this model is partitioned by DeepSpeed ZeRO-3 but the deepspeed package is not installed")
    # deepspeed is an optional extra (llama2-align[deepspeed]), needed only for a ZeRO-3 model.
    import deepspeed  # noqa: PLC0415

    engine_hooks = _zero3_hook_handles(model)
    with deepspeed.zero.GatheredParameters(list(model.parameters()), modifier_rank=None):
        engine_hooks[0](model)
        try:
            yield
        finally:
            engine_hooks[1](model)


def _zero3_hook_handles(model):
    """(remove, add) for ZeRO-3's parameter-fetching forward hooks: TRL's helpers (TRL's approach)."""
    # Lazy, as deepspeed above: only the optional ZeRO-3 path needs TRL here, and a GPU machine that runs
    # PPO or the GPU check without TRL installed must still import this module.
    from trl.models import utils as trl_model_utils  # noqa: PLC0415

    return trl_model_utils.remove_hooks, trl_model_utils.add_hooks


# ----------------------------------------------------------------------------------------------------------------
# Checkpoints


def full_state_dict(model, accelerator=None) -> dict[str, torch.Tensor]:
    """The complete, unsharded state dict on CPU (a collective under FSDP / ZeRO-3: call on every rank).

    A full state dict, unlike FSDP's sharded one, loads into any number of processes; that is what makes a
    checkpoint written by 8 GPUs resumable on 4.
    """
    if accelerator is not None:
        state = accelerator.get_state_dict(model)
    else:
        state = _unwrap(model, None).state_dict()
    return {k: v.detach().to("cpu") for k, v in (state or {}).items()}


def save_full_model(model, output_dir, accelerator=None, tokenizer=None) -> None:
    """Save a loadable model once (main process, safetensors) from a model under any distribution kind.

    Every rank must call it (gathering the weights is a collective); only rank 0 writes; all ranks leave
    together, so no process reads a half-written checkpoint.
    """
    state = full_state_dict(model, accelerator)
    if is_main_process():
        _unwrap(model, accelerator).save_pretrained(output_dir, state_dict=state, safe_serialization=True)
        if tokenizer is not None:
            tokenizer.save_pretrained(output_dir)
    barrier()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
