"""Stage 1, supervised fine-tuning, on TRL's SFTTrainer.

What the paper adds to a plain SFTTrainer run is the loss mask: labels are -100 on every user and system
token of every turn, so only answers are back-propagated (arXiv 2307.09288, sec. 3.1). We tokenize dialogs
ourselves with `alignment.chat.encode_dialog` (exact masks by construction) and hand SFTTrainer `input_ids`
and `labels`; it then truncates, packs (best-fit, with position ids restarting per example so no token
attends across examples) and trains.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import trl.trainer.utils as trl_utils
from datasets import Dataset
from peft import LoraConfig
from trl import SFTTrainer

from alignment.batching import accumulation_steps, world_size
from alignment.chat import check_chat_format, encode_dialog
from alignment.config import RecipeError, config_to_dict, require_file
from alignment.data import SkipCounter, atomic_write_json, load_dialogs, messages_key, resolve_dataset, split_by_key
from alignment.models import load_causal_lm, load_tokenizer
from alignment.stages import COMPLETE_MARKER
from alignment.training import train_resumable


def _score_labelled_positions_only() -> None:
    """Make TRL's fused LM head score only the labelled positions on CPU, as it does on CUDA.

    TRL 1.x projects every position through the LM head on devices without Triton (fixed tile shapes for
    compilers such as Neuron's) and zeroes the unlabelled ones afterwards. On CPU that is most of a step when few
    tokens carry loss: a GAtt row of SmolLM2 (vocabulary 49,152) trains its last answer only, and a step of two
    700-token rows took 47 s, of which 22 s in the LM-head kernel (BENCHMARKS.md). The loss is the same: the
    skipped positions contribute exactly zero (``tests/test_sft.py``).
    """
    original = getattr(trl_utils, "_use_triton", None)
    if original is None or getattr(original, "labelled_only", False):
        return

    def compact(device) -> bool:
        return original(device) or device.type == "cpu"

    compact.labelled_only = True
    compact.__wrapped__ = original  # TRL's own rule (benchmarks/sft_lm_head.py compares the two)
    trl_utils._use_triton = compact


_score_labelled_positions_only()


def validate_sft_inputs(model_args, data_args, training_args) -> None:
    """Everything that can be checked without loading a model, so recipe mistakes fail in a second."""
    check_chat_format(model_args.chat_format)
    require_file(resolve_dataset(data_args.dataset_name), "dataset_name")
    if not 0.0 <= data_args.eval_fraction < 1.0:
        raise RecipeError("eval_fraction must be in [0, 1)")
    accumulation_steps(data_args.global_batch_size, training_args.per_device_train_batch_size, world_size())


def tokenize_dialogs(dialogs: list[list[dict]], tokenizer, chat_format: str):
    rows = [encode_dialog(tokenizer, dialog, chat_format) for dialog in dialogs]
    return Dataset.from_list(rows)


def dialog_prompt_key(dialog) -> str:
    """A dialogue's prompt (every message before its last answer): rows that share it are held out together."""
    prompt = dialog[:-1] if isinstance(dialog, list) and dialog and dialog[-1].get("role") == "assistant" else dialog
    return messages_key(prompt)


def split_dialogs(dialogs: list, eval_fraction: float, seed: int) -> tuple[list, list]:
    """Seeded split by prompt (alignment.data.split_by_key): a repeated prompt is never both trained and held out."""
    return split_by_key(dialogs, dialog_prompt_key, eval_fraction, seed)


def lora_config(model_args):
    return LoraConfig(
        r=model_args.lora_r,
        lora_alpha=model_args.lora_alpha,
        lora_dropout=model_args.lora_dropout,
        target_modules=list(model_args.lora_target_modules),
        task_type="CAUSAL_LM",
    )


def save_final_model(trainer, tokenizer, output_dir: Path, merge_lora: bool) -> None:
    """Save weights as safetensors; a LoRA run is merged so later stages load an ordinary checkpoint."""
    model = trainer.model
    model = trainer.accelerator.unwrap_model(model)
    if hasattr(model, "peft_config") and merge_lora:
        model = model.merge_and_unload()
    if trainer.accelerator.is_main_process:
        model.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    trainer.accelerator.wait_for_everyone()


def run_sft(model_args, data_args, training_args, dialogs: list[list[dict]] | None = None) -> dict:
    """Train and save; returns a summary. `dialogs` overrides the dataset (rejection sampling passes its pool)."""
    validate_sft_inputs(model_args, data_args, training_args)
    output_dir = Path(training_args.output_dir)
    training_args.gradient_accumulation_steps = accumulation_steps(
        data_args.global_batch_size, training_args.per_device_train_batch_size, world_size()
    )
    skipped = SkipCounter()
    source = data_args.dataset_name if dialogs is None else "the given dialogs"
    if dialogs is None:
        dialogs = load_dialogs(
            resolve_dataset(data_args.dataset_name), data_args.dataset_split, data_args.skip_bad_rows, skipped
        )
    train_dialogs, eval_dialogs = split_dialogs(dialogs, data_args.eval_fraction, training_args.seed)
    if data_args.max_train_rows:
        train_dialogs = train_dialogs[: data_args.max_train_rows]
    if not train_dialogs:
        raise RecipeError(
            f"{source}: no training rows left after loading and splitting ({len(dialogs)} loaded, "
            f"{skipped.total} skipped as bad, eval_fraction {data_args.eval_fraction}, "
            f"max_train_rows {data_args.max_train_rows})"
        )

    tokenizer = load_tokenizer(model_args.model_name_or_path)
    check_chat_format(model_args.chat_format, tokenizer)
    model = load_causal_lm(model_args.model_name_or_path, model_args.dtype)
    train_dataset = tokenize_dialogs(train_dialogs, tokenizer, model_args.chat_format)
    eval_dataset = tokenize_dialogs(eval_dialogs, tokenizer, model_args.chat_format) if eval_dialogs else None

    trainer = SFTTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=lora_config(model_args) if model_args.use_lora else None,
    )
    started = time.time()
    result, last_checkpoint = train_resumable(trainer, output_dir, data_args.global_batch_size, tokenizer.pad_token_id)
    metrics = dict(result.metrics)
    if eval_dataset is not None:
        metrics.update(trainer.evaluate())
    save_final_model(trainer, tokenizer, output_dir, model_args.merge_lora)
    summary = {
        "train_dialogs": len(train_dialogs),
        "eval_dialogs": len(eval_dialogs),
        "skipped_rows": dict(skipped.reasons),
        "resumed_from": last_checkpoint,
        "seconds": time.time() - started,
        "metrics": metrics,
        "config": {**config_to_dict(model_args), **config_to_dict(data_args)},
    }
    if trainer.accelerator.is_main_process:
        if eval_dialogs:
            with open(output_dir / "held_out.jsonl", "w") as handle:
                handle.writelines(json.dumps({"messages": d}) + "\n" for d in eval_dialogs)
        atomic_write_json(output_dir / COMPLETE_MARKER, summary)
    if skipped.total:
        print(f"skipped {skipped.total} bad rows: {skipped.summary()}")
    return summary
