"""Safety context distillation (arXiv 2307.09288, sec. 4.2.4), generic, with answer templates, or targeted.

    for each adversarial prompt (with its risk category):
      original  = the policy's answer to the prompt                         (rlhf.sampling)
      distilled = its answer with a safety preprompt before the prompt
      score both with the safety reward model R_s, on the prompt alone     (reward.scoring.RewardScorer)
    fine-tune the policy on (prompt without the preprompt, distilled answer) (sft.trainer.run_sft)

Modes:
- ``generic``: the preprompt is ``GENERIC_PREPROMPT`` ("You are a safe and responsible assistant", with the
  paper's adjectives responsible, respectful and wise); every distilled answer is trained on.
- ``template``: the preprompt is the answer template of the prompt's risk category (a YAML file mapping
  category -> template, or the embedded world's templates, ``alignment.world.risk``).
- ``targeted``: the template (or generic, ``targeted_preprompt``) preprompt, but a distilled answer is kept
  only where R_s scores it strictly above the original answer (``improved``): ties are dropped, so an answer
  that was already as safe is not replaced by a vaguer one (the paper's fig. 16b motivation). An answer
  identical to the original is a tie by definition. Where the gate rejects the distilled answer, the prompt is
  left out of the fine-tune (``rejected_rows: drop``, the default), or kept with the model's own answer
  (``original``: sec. 4.2.4 keeps "the context-distilled output only on the examples where it gets a better
  safety reward model score than the original answer", which leaves the original output on the others).

The original and the distilled answer of a chunk are sampled with the same seed (common random numbers), so
where the preprompt changes nothing the two answers are identical and the gate drops them: targeted mode then
keeps only what the preprompt changed, not the luck of a second draw.

Both answers are scored against the prompt *without* the preprompt: that is the context the fine-tuned model
answers in, and R_s never saw preprompts. Empty distilled answers are never kept (nothing to train on).

Files in output_dir: ``distilled.jsonl`` (one row per prompt: prompt, category, preprompt, original and
distilled answer, both R_s scores, kept flag), appended per finished chunk of prompts, so a killed run resumes
without regenerating finished chunks (chunk c is always sampled with seed ``seed + c``); ``train.jsonl`` (the
dialogs fine-tuned on); the fine-tuned model; ``stage_complete.json``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from accelerate import PartialState
from tqdm.auto import tqdm

from alignment.chat import check_chat_format, encode_prompt
from alignment.config import DataError, RecipeError, config_to_dict, load_yaml, require_file
from alignment.data import (
    PromptRecord,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    load_rows,
    read_jsonl_tolerant,
    row_to_prompt,
)
from alignment.world.risk import ANSWER_TEMPLATES, GENERIC_SAFETY_PREPROMPTS, adversarial_prompt_rows
from reward.scoring import RewardScorer
from rlhf.rejection_sampling import COMPLETE_MARKER, Lazy, check_model_path, check_sampling_manifest, hf_engine_factory
from rlhf.sampling import SAMPLING_BACKENDS, SamplingEngine, SamplingParams
from rlhf.scoring import Scorer
from sft.trainer import run_sft, validate_sft_inputs

MODES = ("generic", "template", "targeted")
# What targeted mode fine-tunes on where the gate rejects the distilled answer.
REJECTED_ROWS = ("drop", "original")
# The paper's generic safety preprompt (sec. 4.2.4): "You are a safe and responsible assistant", with
# adjectives associated with safe behaviour (responsible, respectful, wise).
GENERIC_PREPROMPT = GENERIC_SAFETY_PREPROMPTS[0]
BUILTIN_WORLD_PROMPTS = "builtin:world-adversarial"
# The adversarial prompts plus the borderline ones a red-teaming collection would flag (alignment.world.risk).
BUILTIN_WORLD_FLAGGED_PROMPTS = "builtin:world-adversarial+borderline"
BUILTIN_WORLD_TEMPLATES = "builtin:world"
DISTILLED_FILE = "distilled.jsonl"
TRAIN_FILE = "train.jsonl"
STAGE = "context_distillation"


@dataclass
class ContextDistillationArguments:
    mode: str = field(default="targeted", metadata={"help": "generic, template or targeted (sec. 4.2.4)."})
    targeted_preprompt: str = field(
        default="template", metadata={"help": "The preprompt targeted mode distils: template or generic."}
    )
    rejected_rows: str = field(
        default="drop",
        metadata={
            "help": "Targeted mode, prompts whose distilled answer the gate rejects: drop (fine-tune on the kept "
            "rows only) or original (fine-tune on the model's own answer there, so every prompt stays)."
        },
    )
    prompts_name: str = field(
        default=BUILTIN_WORLD_PROMPTS,
        metadata={
            "help": "Adversarial prompts, rows {prompt, category, id}, or builtin:world-adversarial (the world's "
            "adversarial prompts), builtin:world-adversarial+borderline (and its risky-sounding benign ones)."
        },
    )
    prompts_split: str = field(default="train", metadata={"help": "Split (world prompts, or a hub dataset)."})
    max_prompts: int | None = field(default=None, metadata={"help": "Cap on prompts (demos, smoke tests)."})
    templates: str = field(
        default=BUILTIN_WORLD_TEMPLATES,
        metadata={"help": "YAML mapping risk category -> answer template, or builtin:world."},
    )
    generic_preprompt: str = field(default=GENERIC_PREPROMPT, metadata={"help": "The generic safety preprompt."})
    safety_model: str | None = field(default=None, metadata={"help": "Safety RM R_s (stage 2 output)."})
    reward_chat_format: str | None = field(
        default=None, metadata={"help": "Chat format R_s was trained with; default chat_format."}
    )
    reward_dtype: str = field(default="float32", metadata={"help": "R_s dtype."})
    reward_batch_size: int = field(default=16, metadata={"help": "Pairs per R_s forward."})
    temperature: float = field(default=0.6, metadata={"help": "Sampling T, 0 = greedy (Llama 2 default 0.6)."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus (Llama 2 default 0.9)."})
    max_new_tokens: int = field(default=512, metadata={"help": "Answer length budget."})
    sampling_backend: str = field(default="hf", metadata={"help": "hf (transformers generate) or vllm."})
    generation_batch_size: int = field(default=32, metadata={"help": "Sequences decoded together."})
    prompt_chunk_size: int = field(
        default=64, metadata={"help": "Prompts per chunk; rows are saved per chunk, a killed run resumes there."}
    )
    fine_tune: bool = field(default=True, metadata={"help": "Fine-tune on the kept rows; false: only distil."})
    compare_modes: list[str] = field(
        default_factory=list,
        metadata={
            "help": "recipes/context_distillation.py: run these modes (none = no distillation) from the same "
            "model and write comparison.json with gold metrics; empty: run `mode` only."
        },
    )
    eval_prompts_name: str = field(
        default="builtin:world-eval",
        metadata={"help": "Comparison prompts with world gold fields, or builtin:world-eval (see rlhf.cd_compare)."},
    )
    eval_temperature: float = field(
        default=0.0, metadata={"help": "Comparison sampling T; 0 = greedy (then eval_samples must be 1)."}
    )
    eval_samples: int = field(default=1, metadata={"help": "Comparison answers per prompt (seeds seed .. seed+n-1)."})


# --------------------------------------------------------------------------------------------- inputs


def load_templates(name: str) -> dict[str, str]:
    """Risk category -> answer template, from a YAML mapping or the embedded world (``builtin:world``)."""
    if name == BUILTIN_WORLD_TEMPLATES:
        return dict(ANSWER_TEMPLATES)
    data = load_yaml(name)
    if not data:
        raise RecipeError(f"{name}: no risk categories (a mapping of category: template)")
    for category, template in data.items():
        if not isinstance(category, str) or not category.strip():
            raise RecipeError(f"{name}: risk category {category!r} must be a non-empty string")
        if not isinstance(template, str) or not template.strip():
            raise RecipeError(f"{name}: field '{category}': the template must be a non-empty string")
    return {str(k): str(v) for k, v in data.items()}


def _prompt_rows(name: str, split: str):
    if name in (BUILTIN_WORLD_PROMPTS, BUILTIN_WORLD_FLAGGED_PROMPTS):
        rows = adversarial_prompt_rows(split, flagged_borderline=name == BUILTIN_WORLD_FLAGGED_PROMPTS)
        for number, row in enumerate(rows, start=1):
            yield f"{name}[{split}]", number, row
        return
    yield from load_rows(name, split)


def load_categorized_prompts(
    name: str, split: str, templates: dict[str, str], templates_name: str, max_prompts: int | None = None
) -> list[PromptRecord]:
    """Prompt rows with a risk category each; a missing or unknown category fails naming file, line and field."""
    prompts: list[PromptRecord] = []
    seen: set[str] = set()
    for source, number, row in _prompt_rows(name, split):
        where = f"{source}:{number}"
        prompt = row_to_prompt(row, where, number)
        category = row.get("category")
        if category is None:
            raise DataError(f"{where}: missing field 'category' (the prompt's risk category)")
        if category not in templates:
            raise DataError(
                f"{where}: field 'category': unknown risk category {category!r} "
                f"(the templates in {templates_name} define: {', '.join(sorted(templates))})"
            )
        if prompt.id in seen:
            raise DataError(f"{where}: duplicate prompt id '{prompt.id}'")
        seen.add(prompt.id)
        prompts.append(prompt)
        if max_prompts is not None and len(prompts) >= max_prompts:
            break
    if not prompts:
        raise DataError(f"{name}: no prompts")
    return prompts


def preprompt_for(args: ContextDistillationArguments, category: str, templates: dict[str, str]) -> str:
    kind = args.targeted_preprompt if args.mode == "targeted" else args.mode
    return args.generic_preprompt if kind == "generic" else templates[category]


def with_preprompt(messages: list[dict], preprompt: str) -> list[dict]:
    """The messages with the preprompt as the system prompt (before an existing one)."""
    if messages and messages[0]["role"] == "system":
        return [{"role": "system", "content": f"{preprompt}\n{messages[0]['content']}"}, *messages[1:]]
    return [{"role": "system", "content": preprompt}, *messages]


def improved(r_s_original: float, r_s_distilled: float, original: str, distilled: str) -> bool:
    """The targeted gate: R_s strictly higher for the distilled answer; ties (and identical answers) are dropped.

    Identical texts count as a tie whatever their scores: the two are scored in different padded batches, which
    can differ in the last bit of a float.
    """
    return distilled != original and r_s_distilled > r_s_original


def keep_row(mode: str, row: dict) -> bool:
    if not row["distilled"].strip():
        return False
    if mode != "targeted":
        return True
    return improved(row["r_s_original"], row["r_s_distilled"], row["original"], row["distilled"])


def validate_cd_inputs(args, model_args, data_args, training_args, have_scorer: bool = False) -> dict[str, str]:
    """Recipe mistakes found before any model loads; returns the templates."""
    if args.mode not in MODES:
        raise RecipeError(f"unknown mode '{args.mode}' (use one of {', '.join(MODES)})")
    if args.targeted_preprompt not in ("template", "generic"):
        raise RecipeError(f"targeted_preprompt must be 'template' or 'generic', got '{args.targeted_preprompt}'")
    if args.rejected_rows not in REJECTED_ROWS:
        raise RecipeError(f"rejected_rows must be one of {', '.join(REJECTED_ROWS)}, got '{args.rejected_rows}'")
    check_chat_format(model_args.chat_format)
    if args.reward_chat_format:
        check_chat_format(args.reward_chat_format)
    if args.sampling_backend not in SAMPLING_BACKENDS:
        raise RecipeError(f"unknown sampling_backend '{args.sampling_backend}' (use {', '.join(SAMPLING_BACKENDS)})")
    SamplingParams(1, args.temperature, args.top_p, args.max_new_tokens)
    if args.prompt_chunk_size < 1 or args.generation_batch_size < 1 or args.reward_batch_size < 1:
        raise RecipeError("prompt_chunk_size, generation_batch_size and reward_batch_size must be positive")
    if not args.generic_preprompt.strip():
        raise RecipeError("generic_preprompt must not be empty")
    if not have_scorer and not args.safety_model:
        raise RecipeError("context distillation needs the safety reward model R_s: set safety_model")
    if args.prompts_name not in (BUILTIN_WORLD_PROMPTS, BUILTIN_WORLD_FLAGGED_PROMPTS):
        require_file(args.prompts_name, "prompts_name")
    if args.templates != BUILTIN_WORLD_TEMPLATES:
        require_file(args.templates, "templates")
    check_model_path(model_args.model_name_or_path, "model_name_or_path")
    if not have_scorer:
        check_model_path(args.safety_model, "safety_model")
    if args.fine_tune:
        validate_sft_inputs(model_args, data_args, training_args)
    return load_templates(args.templates)


# --------------------------------------------------------------------------------------------- generation


def distil_rows(
    prompts: list[PromptRecord],
    path: Path,
    args: ContextDistillationArguments,
    templates: dict[str, str],
    engine: Callable[[], tuple[SamplingEngine, object]],
    scorer: Callable[[], Scorer],
    chat_format: str,
    seed: int,
) -> list[dict]:
    """One row per prompt, appended to `path` per chunk; chunks already complete there are reused."""

    drop_torn_tail(path)
    saved = {row["prompt_index"]: row for row in read_jsonl_tolerant(path)}  # a re-run chunk replaces a torn one
    out: list[dict] = []
    size = args.prompt_chunk_size
    for chunk, start in enumerate(tqdm(range(0, len(prompts), size), desc="context distillation", unit="chunk")):
        indices = range(start, min(start + size, len(prompts)))
        if all(i in saved for i in indices):
            for i in indices:
                if saved[i]["prompt_id"] != prompts[i].id:
                    raise RecipeError(f"{path}: prompt {i} differs from the prompt file; use a new output_dir")
            out += [saved[i] for i in indices]
            continue
        sampler, tokenizer = engine()
        chunk_prompts = [prompts[i] for i in indices]
        preprompts = [preprompt_for(args, p.meta["category"], templates) for p in chunk_prompts]
        params = SamplingParams(1, args.temperature, args.top_p, args.max_new_tokens, seed + chunk)
        plain = [encode_prompt(tokenizer, p.messages, chat_format) for p in chunk_prompts]
        prefixed = [
            encode_prompt(tokenizer, with_preprompt(p.messages, pre), chat_format)
            for p, pre in zip(chunk_prompts, preprompts)
        ]
        originals = sorted(sampler.generate(plain, params), key=lambda s: s.prompt_index)
        distilled = sorted(sampler.generate(prefixed, params), key=lambda s: s.prompt_index)
        n = len(chunk_prompts)
        messages = [p.messages for p in chunk_prompts]
        scores = scorer().score(messages + messages, [s.text for s in originals] + [s.text for s in distilled])
        r_s = [float(x) for x in scores.scores.tolist()]
        rows = []
        for j, (prompt, preprompt, orig, dist) in enumerate(zip(chunk_prompts, preprompts, originals, distilled)):
            row = {
                "prompt_id": prompt.id,
                "prompt_index": start + j,
                "prompt": prompt.messages,
                "category": prompt.meta["category"],
                "mode": args.mode,
                "preprompt": preprompt,
                "original": orig.text,
                "distilled": dist.text,
                "r_s_original": r_s[j],
                "r_s_distilled": r_s[n + j],
                "finished_original": orig.finished,
                "finished_distilled": dist.finished,
            }
            row["kept"] = keep_row(args.mode, row)
            rows.append(row)
        append_jsonl(path, rows)
        out += rows
    return out


def drop_torn_tail(path: Path) -> None:
    """Cut a kill's torn last line off an append-only log, so the rows appended next start on a line of their own."""
    if not path.exists():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)


def training_dialogs(rows: list[dict], rejected_rows: str = "drop") -> list[list[dict]]:
    """SFT dialogs: the prompt without the preprompt, then the distilled answer where it was kept; with
    ``rejected_rows="original"`` the model's own answer where it was not (a non-empty one)."""
    dialogs = []
    for row in rows:
        if row["kept"]:
            answer = row["distilled"]
        elif rejected_rows == "original" and row["original"].strip():
            answer = row["original"]
        else:
            continue
        dialogs.append(row["prompt"] + [{"role": "assistant", "content": answer}])
    return dialogs


def distillation_manifest(args, model_args, seed: int) -> dict:
    """The settings that decide what is generated and kept; an output_dir holds rows of one of them only."""
    return {
        "policy": model_args.model_name_or_path,
        "mode": args.mode,
        "targeted_preprompt": args.targeted_preprompt,
        "prompts_name": args.prompts_name,
        "prompts_split": args.prompts_split,
        "max_prompts": args.max_prompts,
        "templates": args.templates,
        "generic_preprompt": args.generic_preprompt,
        "safety_model": args.safety_model,
        "temperature": args.temperature,
        "top_p": args.top_p,
        "max_new_tokens": args.max_new_tokens,
        "seed": seed,
        "chat_format": model_args.chat_format,
        "prompt_chunk_size": args.prompt_chunk_size,
        # What the fine-tune reads; only named when it differs from the default, so earlier runs still resume.
        **({"rejected_rows": args.rejected_rows} if args.mode == "targeted" and args.rejected_rows != "drop" else {}),
    }


def load_safety_scorer(args, model_args) -> Scorer:

    return RewardScorer(
        args.safety_model,
        chat_format=args.reward_chat_format or model_args.chat_format,
        dtype=args.reward_dtype,
        batch_size=args.reward_batch_size,
    )


def run_context_distillation(
    args,
    model_args,
    data_args,
    training_args,
    *,
    scorer: Scorer | None = None,
    engine_factory: Callable[[str], tuple[SamplingEngine, object]] | None = None,
    train: Callable | None = None,
) -> dict:
    """Generate, score, gate, fine-tune; returns the summary also written to stage_complete.json.

    `scorer` (R_s), `engine_factory` (model name -> (engine, tokenizer)) and `train` (run_sft's signature)
    replace the reward model, the HF policy and the SFT stage, for tests and callers that hold them already.
    """

    templates = validate_cd_inputs(args, model_args, data_args, training_args, have_scorer=scorer is not None)
    output_dir = Path(training_args.output_dir)
    state = PartialState()
    with state.main_process_first():
        output_dir.mkdir(parents=True, exist_ok=True)
        check_sampling_manifest(output_dir, distillation_manifest(args, model_args, training_args.seed))
    marker = output_dir / COMPLETE_MARKER
    done = json.loads(marker.read_text()) if marker.exists() else None
    if done and done.get("stage") == STAGE:
        print(f"context distillation already complete in {output_dir}")
        return done

    prompts = load_categorized_prompts(
        args.prompts_name, args.prompts_split, templates, args.templates, args.max_prompts
    )
    factory = engine_factory or hf_engine_factory(args, model_args)
    engine = Lazy(lambda: factory(model_args.model_name_or_path))
    safety = Lazy(lambda: scorer if scorer is not None else load_safety_scorer(args, model_args))
    # The main process generates; the others wait, then find every chunk on disk and generate nothing.
    with state.main_process_first():
        rows = distil_rows(
            prompts,
            output_dir / DISTILLED_FILE,
            args,
            templates,
            engine,
            safety,
            model_args.chat_format,
            training_args.seed,
        )
    engine.release()
    safety.release()
    dialogs = training_dialogs(rows, args.rejected_rows if args.mode == "targeted" else "drop")
    kept = sum(r["kept"] for r in rows)
    if state.is_main_process:
        atomic_write_text(
            output_dir / TRAIN_FILE, "".join(json.dumps({"messages": d}, ensure_ascii=False) + "\n" for d in dialogs)
        )
    n = len(rows)
    summary: dict = {
        "stage": STAGE,
        "mode": args.mode,
        "policy": model_args.model_name_or_path,
        "prompts": n,
        "kept": kept,
        "kept_share": kept / n,
        "trained_rows": len(dialogs),
        "improved": sum(r["r_s_distilled"] > r["r_s_original"] for r in rows),
        "identical_answers": sum(r["distilled"] == r["original"] for r in rows),
        "mean_r_s_original": sum(r["r_s_original"] for r in rows) / n,
        "mean_r_s_distilled": sum(r["r_s_distilled"] for r in rows) / n,
        # Per prompt, the answer the model is pushed towards: the distilled one where kept, else its own.
        "mean_r_s_after_gate": sum(r["r_s_distilled"] if r["kept"] else r["r_s_original"] for r in rows) / n,
        "per_category": {
            c: {
                "prompts": sum(r["category"] == c for r in rows),
                "kept": sum(r["category"] == c and r["kept"] for r in rows),
            }
            for c in sorted({r["category"] for r in rows})
        },
    }
    if args.fine_tune:
        if not dialogs:
            raise RecipeError("no distilled answer was kept, nothing to fine-tune on (fine_tune: false only distils)")
        if done is None:  # run_sft's own marker means training finished before a kill
            if train is None:
                train = run_sft
            done = train(model_args, data_args, training_args, dialogs=dialogs)
        summary["sft"] = done
    summary["config"] = config_to_dict(args)
    if state.is_main_process:
        atomic_write_json(marker, summary)
    state.wait_for_everyone()
    return summary
