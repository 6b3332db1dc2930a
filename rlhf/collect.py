"""Preference collection, following the paper's protocol (arXiv 2307.09288, sec. 3.2.1).

Per prompt, two responses are sampled from two model variants at different temperatures and an annotator
returns the preferred one, a four-level rating and, for safety prompts, each response's safety label.
Annotators:
- "world": the embedded world's programmatic annotator (gold scores plus human-like noise);
- "file": import of a file of human labels (rows in the project's comparison schema, see reward/data.py),
  validated row by row and copied into the collection.

Comparisons are appended per finished batch to an append-only JSONL, so a killed run keeps every
comparison it wrote and resumes with the next prompt.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from alignment.chat import encode_prompt
from alignment.config import AT_LEAST_ONE, NON_NEGATIVE, POSITIVE, TOP_P, RecipeError, require_file
from alignment.data import (
    PromptRecord,
    SkipCounter,
    append_jsonl,
    atomic_write_json,
    load_prompts,
    read_jsonl_tolerant,
)
from alignment.models import load_causal_lm, load_tokenizer
from alignment.stages import COMPLETE_MARKER
from alignment.world import annotate
from reward.data import load_comparisons
from rlhf.sampling import HFSamplingEngine, SamplingParams

ANNOTATORS = ("world", "file")
COMPARISONS_FILE = "comparisons.jsonl"
SKIPPED_FILE = "skipped_prompts.jsonl"


@dataclass
class CollectConfig:
    model_a: str = field(default="", metadata={"help": "Latest model (variant A)."})
    model_b: str | None = field(
        default=None, metadata={"help": "Second variant (e.g. the previous model); A if unset."}
    )
    temperature_a: float = field(
        default=0.7, metadata={"range": POSITIVE, "help": "Sampling temperature of variant A (varied, sec. 3.2.1)."}
    )
    temperature_b: float = field(
        default=1.0, metadata={"range": POSITIVE, "help": "Sampling temperature of variant B."}
    )
    top_p: float = field(default=0.9, metadata={"range": TOP_P, "help": "Nucleus sampling."})
    max_new_tokens: int = field(default=48, metadata={"range": AT_LEAST_ONE, "help": "Answer length cap."})
    chat_format: str = field(default="llama2", metadata={"help": "Chat template of the models."})
    prompts: str = field(default="", metadata={"help": "JSONL of prompts ({id, prompt, is_safety_prompt, ...})."})
    annotator: str = field(default="world", metadata={"help": "world (programmatic) or file (human labels)."})
    labels_file: str | None = field(default=None, metadata={"help": "Human labels to import (annotator: file)."})
    noise: float = field(
        default=0.2, metadata={"range": NON_NEGATIVE, "help": "Annotator noise (world): disagreement as among humans."}
    )
    batch_size: int = field(default=32, metadata={"range": AT_LEAST_ONE, "help": "Prompts per generation batch."})
    seed: int = field(default=0, metadata={"help": "Seed for sampling and annotation noise."})
    output_dir: str = field(default="runs/collect", metadata={"help": "Where comparisons.jsonl goes."})


def world_prompt(record: PromptRecord) -> dict:
    """The world's prompt dict (judges need family, kind and gold) from a prompt file row.

    A row's optional ``annotation_kind`` names the guidelines the annotator judges it under (the prompt's own
    kind by default): the paper annotates helpfulness and safety separately (sec. 3.2.1), and a prompt a
    red-teamer wrote is judged under the safety guidelines even when it turns out to be benign.
    """
    missing = [key for key in ("kind", "family", "gold") if key not in record.meta]
    if missing:
        raise RecipeError(f"prompt '{record.id}' lacks {', '.join(missing)}: the world annotator needs world prompts")
    if record.meta.get("annotation_kind", "helpfulness") not in ("helpfulness", "safety"):
        raise RecipeError(
            f"prompt '{record.id}': field 'annotation_kind' must be helpfulness or safety, "
            f"got {record.meta['annotation_kind']!r}"
        )
    return {"id": record.id, "prompt": record.messages[-1]["content"], **record.meta}


def import_labels(config: CollectConfig) -> dict:
    require_file(config.labels_file, "labels_file")
    skipped = SkipCounter()
    comparisons = load_comparisons(config.labels_file, skipped=skipped)
    output = Path(config.output_dir)
    rows = [c.to_row() for c in comparisons]
    (output / COMPARISONS_FILE).unlink(missing_ok=True)
    append_jsonl(output / COMPARISONS_FILE, rows)
    return {"comparisons": len(rows), "skipped": dict(skipped.reasons)}


def run_collect(config: CollectConfig) -> dict:
    if config.annotator not in ANNOTATORS:
        raise RecipeError(f"unknown annotator '{config.annotator}' (use one of {', '.join(ANNOTATORS)})")
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    if config.annotator == "file":
        summary = import_labels(config)
        atomic_write_json(output / COMPLETE_MARKER, summary)
        return summary

    require_file(config.prompts, "prompts")
    prompts = load_prompts(config.prompts)
    done = {
        row["prompt_id"] for name in (COMPARISONS_FILE, SKIPPED_FILE) for row in read_jsonl_tolerant(output / name)
    }
    todo = [p for p in prompts if p.id not in done]
    tokenizer = load_tokenizer(config.model_a)
    engine_a = HFSamplingEngine(load_causal_lm(config.model_a), tokenizer, batch_size=config.batch_size)
    engine_b = (
        HFSamplingEngine(load_causal_lm(config.model_b), tokenizer, batch_size=config.batch_size)
        if config.model_b and config.model_b != config.model_a
        else engine_a
    )
    progress = tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc="collecting comparisons")
    for start in range(0, len(todo), config.batch_size):
        batch = todo[start : start + config.batch_size]
        # Seeds derive from the batch's first prompt, so a resumed run draws what the first run would have.
        batch_seed = config.seed * 100_003 + prompts.index(batch[0])
        ids = [encode_prompt(tokenizer, p.messages, config.chat_format) for p in batch]
        common = dict(top_p=config.top_p, max_new_tokens=config.max_new_tokens)
        answers_a = engine_a.generate(ids, SamplingParams(temperature=config.temperature_a, seed=batch_seed, **common))
        answers_b = engine_b.generate(
            ids, SamplingParams(temperature=config.temperature_b, seed=batch_seed + 1, **common)
        )
        rng = random.Random(batch_seed)
        rows, skipped = [], []
        for record, a, b in zip(batch, answers_a, answers_b):
            if not a.text or not b.text or a.text == b.text:
                # Nothing to compare: an empty answer, or both variants said the same thing (a label on an
                # identical pair would be pure annotator noise). Logged so a resume skips the prompt.
                reason = "identical responses" if a.text and a.text == b.text else "empty response"
                skipped.append({"prompt_id": record.id, "reason": reason})
                continue
            kind = record.meta.get("annotation_kind")
            row = annotate(world_prompt(record), a.text, b.text, rng, noise=config.noise, kind=kind)
            row["prompt"] = record.messages
            row["prompt_id"] = record.id
            rows.append(row)
        append_jsonl(output / SKIPPED_FILE, skipped)
        append_jsonl(output / COMPARISONS_FILE, rows)
        progress.update(len(batch))
    progress.close()
    rows = read_jsonl_tolerant(output / COMPARISONS_FILE)
    summary = {
        "comparisons": len(rows),
        "skipped": dict(Counter(row["reason"] for row in read_jsonl_tolerant(output / SKIPPED_FILE))),
        "by_kind": {k: sum(r["kind"] == k for r in rows) for k in ("helpfulness", "safety")},
        "by_rating": {r: sum(row["rating"] == r for row in rows) for r in sorted({row["rating"] for row in rows})},
        "flipped_by_noise": sum(bool(r.get("flipped")) for r in rows),
    }
    atomic_write_json(output / COMPLETE_MARKER, summary)
    return summary
