"""Stage 2, the helpfulness (R_h) and safety (R_s) reward models, on TRL's RewardTrainer.

`run_reward(config)` loads the comparisons, holds out a seeded share of each source's prompts, mixes the rest
as sec. 3.2.2 prescribes, tokenizes every (prompt, response) with `reward.scoring.encode_scored` (the
tokens RewardScorer will score later), and trains with TRL's RewardTrainer, whose loss with a `margin` column
is exactly -log sigmoid(r_c - r_r - m(rating)) (verified in tests/test_reward_trainer.py). The model is saved
as a sequence classifier (safetensors) with its tokenizer, then evaluated on the held-out pairs
(`eval.json`, `eval.md`). A killed run resumes from its last checkpoint; a finished one is not redone.

Under N processes (torchrun / accelerate launch) a run takes the steps of one process on the same data
(tests/test_reward_distributed.py): the pairs are padded to a multiple of the global batch with pairs of
weight 0, the loss and logged metrics count real pairs of the global batch only, and batches are drawn in
an order independent of N (`Llama2RewardTrainer`). The held-out pairs are split over the processes without
duplicates, scored, and gathered in order, so eval.json is that of one process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from datasets import Dataset
from peft import LoraConfig
from transformers import set_seed
from trl import RewardTrainer
from trl.trainer.reward_trainer import DataCollatorForPreference

from alignment.batching import accumulation_steps, world_size
from alignment.chat import check_chat_format
from alignment.config import RecipeError, config_to_dict, require_file
from alignment.data import SkipCounter, append_jsonl, atomic_write_json, atomic_write_text, held_out_share
from alignment.distributed import GlobalLengthGroupedSampler
from alignment.models import load_tokenizer
from alignment.stages import COMPLETE_MARKER
from alignment.training import train_resumable
from reward.config import DEFAULT_MIXTURES, REWARD_MODELS, Llama2RewardConfig
from reward.data import FORMATS, Comparison, load_comparisons, mix_comparisons, split_comparisons
from reward.evaluate import calibrate_safety_offset, evaluate_reward_model, report_markdown
from reward.loss import MARGIN_TABLES, margin_for, ranking_loss
from reward.scoring import (
    RewardScorer,
    encode_scored,
    load_reward_model,
    prepare_reward_tokenizer,
    reward_scores,
)

SOURCE_KEYS = {"path", "format", "kind", "rating", "pool", "limit"}
# Fields that define what a finished run in output_dir computed: a match means "already done".
RUN_IDENTITY = (
    "model_name_or_path",
    "reward_model",
    "comparison_files",
    "sources",
    "eval_files",
    "eval_fraction",
    "mixture_ratios",
    "mixture_anchor",
    "mixture_seed",
    "max_train_pairs",
    "max_eval_pairs",
    "margin",
    "learning_rate",
    "num_train_epochs",
    "global_batch_size",
    "max_length",
    "use_lora",
    "train_top_layers",
    "seed",
    "calibrate_unsafe_precision",
    "likelihood_feature",
)


def mixture_of(config: Llama2RewardConfig) -> tuple[dict, str]:
    ratios = dict(config.mixture_ratios or DEFAULT_MIXTURES[config.reward_model])
    anchor = config.mixture_anchor or config.reward_model
    return ratios, anchor


def source_specs(config: Llama2RewardConfig) -> list[dict]:
    """comparison_files and sources as one list of {path, format, ...} specs, checked."""
    specs = [{"path": path, "format": "llama2-align"} for path in config.comparison_files]
    for i, spec in enumerate(config.sources):
        if not isinstance(spec, dict) or "path" not in spec:
            raise RecipeError(f"sources[{i}] must be a mapping with at least 'path'")
        unknown = set(spec) - SOURCE_KEYS
        if unknown:
            raise RecipeError(f"sources[{i}]: unknown key(s) {sorted(unknown)} (known: {sorted(SOURCE_KEYS)})")
        if spec.get("format", "llama2-align") not in FORMATS:
            raise RecipeError(f"sources[{i}]: unknown format '{spec['format']}' (use one of {', '.join(FORMATS)})")
        specs.append({"format": "llama2-align", **spec})
    return specs


def validate_reward_inputs(config: Llama2RewardConfig, check_data: bool = True) -> None:
    """Everything that can be checked before a model loads, so recipe mistakes fail in a second."""
    check_chat_format(config.chat_format)
    if config.reward_model not in REWARD_MODELS:
        raise RecipeError(f"reward_model must be one of {', '.join(REWARD_MODELS)}, got '{config.reward_model}'")
    if config.margin not in MARGIN_TABLES:
        raise RecipeError(f"margin must be one of {', '.join(MARGIN_TABLES)}, got '{config.margin}'")
    accumulation_steps(config.global_batch_size, config.per_device_train_batch_size, world_size())
    if config.likelihood_feature and (config.use_lora or config.train_top_layers is not None):
        raise RecipeError("likelihood_feature trains the whole model: unset use_lora and train_top_layers")
    if config.likelihood_feature and world_size() > 1:
        # reward_scores calls the model's submodules, which a DDP/FSDP wrapper would not synchronise.
        raise RecipeError("likelihood_feature trains in a single process only (launch without torchrun/accelerate)")
    if config.calibrate_unsafe_precision is not None:
        if config.reward_model != "safety":
            raise RecipeError("calibrate_unsafe_precision applies to the safety RM only (reward_model: safety)")
        if not 0.0 < config.calibrate_unsafe_precision <= 1.0:
            raise RecipeError(
                f"calibrate_unsafe_precision must lie in (0, 1], got {config.calibrate_unsafe_precision}"
            )
    if not check_data:
        return
    specs = source_specs(config)
    if not specs:
        raise RecipeError("no training data: set comparison_files or sources")
    for i, spec in enumerate(specs):
        require_file(spec["path"], f"sources[{i}].path")
    for path in config.eval_files:
        require_file(path, "eval_files")
    ratios, anchor = mixture_of(config)
    if anchor not in ratios:
        raise RecipeError(f"mixture_anchor '{anchor}' is not a key of mixture_ratios {sorted(ratios)}")


def load_reward_data(
    config: Llama2RewardConfig, skipped: SkipCounter | None = None
) -> tuple[list[Comparison], list[Comparison], dict]:
    """(train mix, held-out comparisons, data report) from the recipe's sources."""
    skipped = skipped if skipped is not None else SkipCounter()
    train_pool, test = [], []
    per_source = {}
    for spec in source_specs(config):
        counter = SkipCounter()
        comparisons = load_comparisons(
            spec["path"],
            spec["format"],
            kind=spec.get("kind"),
            rating=spec.get("rating"),
            pool=spec.get("pool"),
            skip_bad_rows=config.skip_bad_rows,
            skipped=counter,
            limit=spec.get("limit"),
        )
        train, held_out = split_comparisons(comparisons, config.eval_fraction, config.mixture_seed)
        train_pool += train
        test += held_out
        skipped.reasons.update(counter.reasons)
        per_source[spec["path"]] = {
            "loaded": len(comparisons),
            "train": len(train),
            "held_out": len(held_out),
            "skipped": dict(counter.reasons),
        }
    for path in config.eval_files:
        counter = SkipCounter()
        # Its own test set in the evaluation report, named after the file.
        test += load_comparisons(path, skip_bad_rows=config.skip_bad_rows, skipped=counter, pool=Path(path).stem)
        skipped.reasons.update(counter.reasons)
    ratios, anchor = mixture_of(config)
    train, mix = mix_comparisons(train_pool, ratios, anchor, config.mixture_seed)
    if config.max_train_pairs is not None:
        train = train[: config.max_train_pairs]
    if config.max_eval_pairs is not None and len(test) > config.max_eval_pairs:
        # By prompt rank, not a fresh sample: the capped set stays the same prompts as later files add more.
        test = sorted(test, key=lambda c: held_out_share(c.prompt_key(), config.mixture_seed))[: config.max_eval_pairs]
    report = {
        "sources": per_source,
        "mixture": {"ratios": ratios, "anchor": anchor, **vars(mix)},
        "train_pairs": len(train),
        "eval_pairs": len(test),
    }
    return train, test, report


def tokenize_comparisons(
    comparisons: list[Comparison], tokenizer, chat_format: str, margin: str, max_length: int | None
) -> tuple[list[dict], int]:
    """Rows for RewardTrainer: chosen_ids, rejected_ids, margin m(rating) (unless margin is none), length, weight,
    and chosen/rejected_response_tokens (how many of the ids are the answer: the likelihood feature's span).

    `weight` is 1: the pairs `pad_dataset_to_multiple` adds for a distributed run have weight 0.

    Over-long sequences keep their last max_length tokens: the score is read at the end (RewardTrainer would
    silently drop them instead). Returns the rows and how many sequences were cut.
    """
    rows, truncated = [], 0
    margins = margin_for([c.rating for c in comparisons], margin).tolist()
    for comparison, m in zip(comparisons, margins):
        row = {}
        for side in ("chosen", "rejected"):
            ids, response_tokens, cut = encode_scored(
                tokenizer, comparison.prompt, getattr(comparison, side), chat_format, max_length
            )
            truncated += cut
            row[f"{side}_ids"] = ids
            row[f"{side}_response_tokens"] = response_tokens
        if margin != "none":
            row["margin"] = m
        row["length"] = max(len(row["chosen_ids"]), len(row["rejected_ids"]))
        row["weight"] = 1.0
        rows.append(row)
    return rows, truncated


class WeightedPreferenceCollator(DataCollatorForPreference):
    """TRL's preference collator, plus each pair's `weight` (0 for a padding pair, 1 when absent) and each row's
    `response_tokens` (chosen rows first, as the ids)."""

    def torch_call(self, examples):
        batch = super().torch_call(examples)
        batch["weight"] = torch.tensor([float(e.get("weight", 1.0)) for e in examples])
        if "chosen_response_tokens" in examples[0]:
            batch["response_tokens"] = torch.tensor(
                [e[f"{side}_response_tokens"] for side in ("chosen", "rejected") for e in examples]
            )
        return batch


class Llama2RewardTrainer(RewardTrainer):
    """RewardTrainer whose steps are those of one process on any number of processes.

    - The loss of an optimizer step is the mean of -log sigmoid(r_c - r_r - m) over the real pairs of the
      global batch: each micro-batch adds its weighted sum divided by that count (`_get_num_items_in_batch`,
      all micro-batches, all processes), times the process count that DDP's gradient averaging divides by.
      TRL instead averages per micro-batch, so an uneven last step and padding pairs would skew it.
    - The logged metrics are over the real pairs of the logging window, gathered from every process:
      accuracy, margin and mean reward are per-pair means, min/max reward the window's extremes (TRL
      averages per-micro-batch values, which depend on how the batch is split), num_tokens counts real
      sequences only.
    - Length-grouped batching groups by the global batch (`GlobalLengthGroupedSampler`), and the `length`
      and `weight` columns are kept.
    """

    loss_is_scaled_for_ga = True  # normalised over the global batch in compute_loss

    def __init__(self, model, args, processing_class, data_collator=None, **kwargs):
        if data_collator is None:
            data_collator = WeightedPreferenceCollator(
                pad_token_id=processing_class.pad_token_id, pad_to_multiple_of=args.pad_to_multiple_of
            )
        super().__init__(
            model=model, args=args, processing_class=processing_class, data_collator=data_collator, **kwargs
        )

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        self._signature_columns = [
            *self._signature_columns,
            *(
                c
                for c in ("length", "weight", "chosen_response_tokens", "rejected_response_tokens")
                if c not in self._signature_columns
            ),
        ]

    def _get_train_sampler(self, train_dataset=None):
        dataset = train_dataset if train_dataset is not None else self.train_dataset
        columns = getattr(dataset, "column_names", None) or ()
        if self.args.train_sampling_strategy != "group_by_length" or "length" not in columns:
            return super()._get_train_sampler(train_dataset)
        global_batch = (
            self.args.per_device_train_batch_size
            * self.args.gradient_accumulation_steps
            * self.accelerator.num_processes
        )
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed
        return GlobalLengthGroupedSampler(dataset["length"], global_batch, seed)

    def _get_num_items_in_batch(self, batch_samples, device):
        """Real pairs in this optimizer step: every micro-batch of every process (the loss divisor)."""
        if not batch_samples:
            return None
        pairs = sum(float(b["weight"].sum()) if "weight" in b else b["input_ids"].shape[0] / 2 for b in batch_samples)
        pairs = torch.tensor([pairs], device=device)
        if self.accelerator.num_processes > 1:
            pairs = self.accelerator.gather(pairs)
        return pairs.sum()

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        mode = "train" if self.model.training else "eval"
        weight = inputs.pop("weight", None)
        margin = inputs.pop("margin", None)
        response_tokens = inputs.pop("response_tokens", None)
        scores = reward_scores(model, inputs["input_ids"], inputs["attention_mask"], response_tokens)
        outputs = {"logits": scores[:, None]}
        chosen, rejected = torch.chunk(scores, chunks=2)
        if weight is None:
            weight = torch.ones_like(chosen)
        weight = weight.to(device=chosen.device, dtype=torch.float32)
        if mode == "train" and num_items_in_batch is not None:
            divisor, scale = num_items_in_batch, self.accelerator.num_processes
        else:  # a batch on its own (evaluate, direct calls): the mean over its real pairs
            divisor, scale = weight.sum().clamp(min=1), 1
        loss = ranking_loss(chosen.float(), rejected.float(), margin, weight, num_pairs=divisor)
        if self.args.center_rewards_coefficient is not None:
            centre = (weight * (chosen.float() + rejected.float()) ** 2).sum() / divisor
            loss = loss + self.args.center_rewards_coefficient * centre
        self._record_metrics(mode, chosen, rejected, weight, inputs["attention_mask"])
        loss = loss * scale
        return (loss, outputs) if return_outputs else loss

    @torch.no_grad()
    def _record_metrics(self, mode, chosen, rejected, weight, attention_mask):
        metrics = self._metrics[mode]
        if mode == "train":
            tokens = (attention_mask.sum(-1).float() * weight.repeat(2)).sum().reshape(1)
            self._total_train_tokens += int(self.accelerator.gather(tokens).sum().item()) // self._tp_size
        metrics["num_tokens"] = [self._total_train_tokens]
        pairs = self.accelerator.gather_for_metrics(torch.stack([chosen.float(), rejected.float(), weight], -1))
        pairs = pairs[pairs[:, 2] > 0]
        if not len(pairs):
            return
        chosen, rejected = pairs[:, 0], pairs[:, 1]
        rewards = torch.cat([chosen, rejected])
        metrics["accuracy"] += (chosen > rejected).float().tolist()
        metrics["margin"] += (chosen - rejected).tolist()
        metrics["mean_reward"] += rewards.tolist()
        metrics["min_reward"] = [min(metrics["min_reward"] + [rewards.min().item()])]
        metrics["max_reward"] = [max(metrics["max_reward"] + [rewards.max().item()])]


def lora_config(config: Llama2RewardConfig):
    # SEQ_CLS makes peft train and save the new scalar head in full alongside the adapters.
    return LoraConfig(
        r=config.lora_r,
        lora_alpha=config.lora_alpha,
        lora_dropout=config.lora_dropout,
        target_modules=list(config.lora_target_modules),
        task_type="SEQ_CLS",
    )


def freeze_lower_layers(model, top_layers: int) -> int:
    """Freeze embeddings and all decoder layers but the top `top_layers` (and the final norm with them);
    0 freezes the whole transformer: only the scalar head trains, a linear probe of the chat model's last-token
    features, which suits a few thousand pairs on a CPU. Returns the number of trainable parameters."""
    layers = model.base_model.layers
    if not 0 <= top_layers <= len(layers):
        raise RecipeError(f"train_top_layers must be in 0..{len(layers)}, got {top_layers}")
    for parameter in model.base_model.parameters():
        parameter.requires_grad_(False)
    if top_layers:
        for module in (*layers[len(layers) - top_layers :], model.base_model.norm):
            module.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _finished_summary(config: Llama2RewardConfig, output_dir: Path) -> dict | None:
    marker = output_dir / COMPLETE_MARKER
    if not marker.exists():
        return None
    summary = json.loads(marker.read_text())
    identity = {key: config_to_dict(config).get(key) for key in RUN_IDENTITY}
    if summary.get("identity") != identity:
        raise RecipeError(
            f"{output_dir} holds a finished reward model trained with a different recipe; "
            "use another output_dir or delete it"
        )
    return summary


def run_reward(config: Llama2RewardConfig, comparisons: list[Comparison] | None = None) -> dict:
    """Train, save and evaluate one reward model; returns the summary also written to stage_complete.json.

    `comparisons` (already loaded) replaces the recipe's files, e.g. for a pipeline holding them in memory;
    they are split and mixed like loaded ones.
    """
    validate_reward_inputs(config, check_data=comparisons is None)
    output_dir = Path(config.output_dir)
    done = _finished_summary(config, output_dir)
    if done is not None:
        print(f"reward model already trained in {output_dir}; nothing to do")
        return done
    config.gradient_accumulation_steps = accumulation_steps(
        config.global_batch_size, config.per_device_train_batch_size, world_size()
    )

    skipped = SkipCounter()
    if comparisons is None:
        train, test, data_report = load_reward_data(config, skipped)
    else:
        train, test = split_comparisons(comparisons, config.eval_fraction, config.mixture_seed)
        train, mix = mix_comparisons(train, *mixture_of(config), config.mixture_seed)
        data_report = {"mixture": vars(mix), "train_pairs": len(train), "eval_pairs": len(test)}
    if not train:
        raise RecipeError("no training pairs left after loading, splitting and mixing")

    tokenizer = prepare_reward_tokenizer(load_tokenizer(config.model_name_or_path))
    check_chat_format(config.chat_format, tokenizer)
    set_seed(config.seed)  # the fresh scalar head is drawn here
    model = load_reward_model(config.model_name_or_path, config.dtype, likelihood_feature=config.likelihood_feature)
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.train_top_layers is not None:
        if config.use_lora:
            raise RecipeError("train_top_layers and use_lora are alternatives; set one")
        freeze_lower_layers(model, config.train_top_layers)
    max_length = min(
        filter(None, (config.max_length, getattr(model.config, "max_position_embeddings", None))), default=None
    )
    rows, truncated = tokenize_comparisons(train, tokenizer, config.chat_format, config.margin, max_length)
    trainer = Llama2RewardTrainer(
        model=model,
        args=config,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=lora_config(config) if config.use_lora else None,
    )
    started = time.time()
    result, last_checkpoint = train_resumable(trainer, output_dir, config.global_batch_size, tokenizer.pad_token_id)
    seconds = time.time() - started

    model = trainer.accelerator.unwrap_model(trainer.model)
    if hasattr(model, "peft_config"):
        model = model.merge_and_unload()
    summary = {
        "reward_model": config.reward_model,
        "data": data_report,
        "skipped_rows": dict(skipped.reasons),
        "truncated_sequences": truncated,
        "resumed_from": last_checkpoint,
        "train_seconds": seconds,
        "train_pairs_per_second": len(rows) * config.num_train_epochs / seconds if not last_checkpoint else None,
        "metrics": dict(result.metrics),
        "identity": {key: config_to_dict(config).get(key) for key in RUN_IDENTITY},
    }
    main = trainer.accelerator.is_main_process
    distributed = trainer.accelerator.num_processes > 1
    # Held-out pairs are scored as the training pairs were cut: their last max_length tokens.
    scorer = RewardScorer(
        str(output_dir),
        chat_format=config.chat_format,
        batch_size=config.eval_batch_size,
        model=model.float(),
        tokenizer=tokenizer,
        max_length=max_length,
    )
    if config.calibrate_unsafe_precision is not None:
        # On the training pairs: the held-out ones stay an unbiased measure of the calibrated gate.
        summary["calibration"] = calibrate_safety_offset(
            scorer, train, config.calibrate_unsafe_precision, config.safety_threshold, distributed
        )
    # Every scorer that loads this model reads the window it was trained on (reward.scoring.RewardScorer).
    model.config.training_max_length = max_length
    if main:
        model.save_pretrained(output_dir, safe_serialization=True)
        tokenizer.save_pretrained(output_dir)
    if test:
        # Every process scores its share of the held-out pairs and all get the report of the whole set.
        summary["eval"] = evaluate_reward_model(
            scorer, test, config.safety_threshold, progress=main, distributed=distributed
        )
    if main:
        if test:
            report = summary["eval"]
            atomic_write_json(output_dir / "eval.json", report)
            title = (
                f"{'Safety' if config.reward_model == 'safety' else 'Helpfulness'} RM on {len(test)} held-out pairs"
            )
            atomic_write_text(output_dir / "eval.md", report_markdown(report, title))
            (output_dir / "held_out.jsonl").unlink(missing_ok=True)
            append_jsonl(output_dir / "held_out.jsonl", [c.to_row() for c in test])
        atomic_write_json(output_dir / COMPLETE_MARKER, summary)
    trainer.accelerator.wait_for_everyone()
    if skipped.total:
        print(f"skipped {skipped.total} comparisons: {skipped.summary()}")
    return summary
