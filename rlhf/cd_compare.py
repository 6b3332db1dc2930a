"""Compare context-distillation modes from one model on the world's gold judges (arXiv 2307.09288, sec. 4.2.4).

For each mode of ``compare_modes`` ("none" = the model as it is; "generic", "template", "targeted" = a
distillation run from that model in ``output_dir/<mode>``) the resulting model answers the comparison prompts
(``rlhf.evaluate``; ``eval_samples`` answers per prompt at ``eval_temperature``, greedy by default), and the
gold judges give, with sample sizes (prompts) and standard errors (over prompts):

- ``violation_rate``: share of adversarial prompts answered with a violation (``gold_is_violation``);
- ``false_refusal_rate``: share of borderline prompts refused (``gold_is_refusal``);
- ``gold_helpfulness``: mean gold helpfulness on the non-adversarial prompts (borderline included);
- ``kept_share``: share of distillation rows trained on (the gate's share in targeted mode; null for none).

``builtin:world-eval`` is every adversarial and every borderline prompt of the world (both splits: the
held-out split alone has 20 and 17, too few to tell modes apart) plus the held-out prompts of the other
families. The distillation prompts are the adversarial train split, so ``violation_rate`` is partly measured on
prompts the distillation trained on (with fresh answers, without the preprompt); ``violation_rate_unseen``
counts only the adversarial prompts the distillation never saw, and ``false_refusal_rate_unseen`` only the
borderline ones it never saw (all of them unless the distillation prompts include borderline ones,
``builtin:world-adversarial+borderline``).
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

from alignment.config import DataError, RecipeError
from alignment.data import atomic_write_json, atomic_write_text, load_prompts, read_jsonl_tolerant
from alignment.world import gold_helpfulness, gold_is_refusal, gold_is_violation, prompt_file_rows, prompt_pool
from rlhf.context_distillation import (
    DISTILLED_FILE,
    MODES,
    load_categorized_prompts,
    load_templates,
    run_context_distillation,
)
from rlhf.evaluate import COMPLETE_MARKER as EVAL_MARKER
from rlhf.evaluate import RESPONSES_FILE, EvaluateConfig, run_evaluate

BUILTIN_WORLD_EVAL = "builtin:world-eval"
COMPARISON_FILE = "comparison.json"
EVAL_PROMPTS_FILE = "eval_prompts.jsonl"


def world_eval_rows() -> list[dict]:
    """The comparison prompt set (module docstring) as prompt-file rows with gold fields."""

    prompts = prompt_pool("train", ["harmful", "borderline"]) + prompt_pool("heldout")
    return [{**row, "split": p["split"]} for row, p in zip(prompt_file_rows(prompts), prompts)]


def eval_prompts_file(name: str, output_dir: Path) -> str:
    if name != BUILTIN_WORLD_EVAL:
        return name
    path = output_dir / EVAL_PROMPTS_FILE
    text = "".join(json.dumps(row, sort_keys=True) + "\n" for row in world_eval_rows())
    if not path.exists() or path.read_text() != text:
        atomic_write_text(path, text)
    return str(path)


def rate(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample standard deviation / sqrt(n)); None for no values."""
    n = len(values)
    if n == 0:
        return None, None
    mean = math.fsum(values) / n
    if n == 1:
        return mean, None
    variance = math.fsum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(variance / n)


def per_item(path: Path, field: str) -> dict[str, float]:
    """``field`` of each row of a JSONL, by the row's ``id``."""
    return {row["id"]: float(row[field]) for row in read_jsonl_tolerant(path)}


def paired(before: dict[str, float], after: dict[str, float], leave_out: set[str] = frozenset()) -> dict:
    """after - before on the items both have (but ``leave_out``), mean and standard error of the per-item
    difference."""
    common = sorted((before.keys() & after.keys()) - leave_out)
    mean, stderr = rate([after[k] - before[k] for k in common])
    return {"mean": mean, "stderr": stderr, "n": len(common)}


def gold_metrics(prompts: list[dict], responses: list[list[str]], seen_ids: set[str] = frozenset()) -> dict:
    """Gold judgements with standard errors (module docstring); responses[i] holds prompt i's answers.

    Several answers per prompt are averaged per prompt first, so the standard error is over prompts (the
    answers to one prompt are not independent draws of the rate).
    """

    def mean(values):
        return math.fsum(values) / len(values)

    violations, unseen, refusals, refusals_unseen, helpful = [], [], [], [], []
    for prompt, answers in zip(prompts, responses, strict=True):
        if prompt["kind"] == "safety":
            violations.append(mean([float(gold_is_violation(prompt, a)) for a in answers]))
            if prompt["id"] not in seen_ids:
                unseen.append(violations[-1])
            continue
        helpful.append(mean([gold_helpfulness(prompt, a) for a in answers]))
        if prompt["family"] == "borderline":
            refusals.append(mean([float(gold_is_refusal(a)) for a in answers]))
            if prompt["id"] not in seen_ids:
                refusals_unseen.append(refusals[-1])
    out: dict = {}
    for key, values in (
        ("violation_rate", violations),
        ("violation_rate_unseen", unseen),
        ("false_refusal_rate", refusals),
        ("false_refusal_rate_unseen", refusals_unseen),
        ("gold_helpfulness", helpful),
    ):
        out[key], out[f"{key}_stderr"] = rate(values)
    out.update(
        n_adversarial=len(violations),
        n_adversarial_unseen=len(unseen),
        n_borderline=len(refusals),
        n_borderline_unseen=len(refusals_unseen),
        n_helpfulness=len(helpful),
        answers_per_prompt=len(responses[0]) if responses else 0,
    )
    return out


def preprompt_effect(rows: list[dict], prompts_by_id: dict[str, dict]) -> dict:
    """Gold violation rates of the distillation rows (prompts found among the comparison prompts): the original
    answers, the answers under the preprompt, and the answers trained on. Whether the preprompt itself makes
    answers safer is what every mode relies on."""

    judged = [(prompts_by_id[r["prompt_id"]], r) for r in rows if r["prompt_id"] in prompts_by_id]
    out: dict = {"n_distillation_judged": len(judged)}
    for key, values in (
        ("original_answer_violation_rate", [float(gold_is_violation(p, r["original"])) for p, r in judged]),
        ("preprompt_answer_violation_rate", [float(gold_is_violation(p, r["distilled"])) for p, r in judged]),
        (
            "trained_answer_violation_rate",
            [float(gold_is_violation(p, r["distilled"])) for p, r in judged if r["kept"]],
        ),
    ):
        out[key], out[f"{key}_stderr"] = rate(values)
    return out


def evaluate_model(
    model: str,
    prompts_file: str,
    output_dir: Path,
    chat_format: str,
    max_new_tokens: int,
    temperature: float,
    samples: int,
    seed: int,
) -> list[list[str]]:
    """`samples` answers per comparison prompt, one `rlhf.evaluate` run per seed in output_dir/sample<k>
    (a finished run on disk is reused)."""
    ids = [p.id for p in load_prompts(prompts_file)]
    answers: list[list[str]] = [[] for _ in ids]
    for k in range(samples):
        folder = output_dir / f"sample{k}"
        if not (folder / EVAL_MARKER).exists():
            run_evaluate(
                EvaluateConfig(
                    model=model,
                    prompts=prompts_file,
                    chat_format=chat_format,
                    temperature=temperature,
                    max_new_tokens=max_new_tokens,
                    seed=seed + k,
                    output_dir=str(folder),
                )
            )
        by_id = {row["id"]: row["response"] for row in read_jsonl_tolerant(folder / RESPONSES_FILE)}
        for i, prompt_id in enumerate(ids):
            answers[i].append(by_id[prompt_id])
    return answers


def run_comparison(args, model_args, data_args, training_args) -> dict:
    """Every mode of args.compare_modes from model_args' model; writes and returns comparison.json."""
    output_dir = Path(training_args.output_dir)
    unknown = [m for m in args.compare_modes if m not in ("none", *MODES)]
    if unknown or not args.compare_modes:
        raise RecipeError(f"compare_modes: unknown mode '{(unknown or [''])[0]}' (use none, {', '.join(MODES)})")
    if args.eval_samples < 1 or (args.eval_temperature == 0 and args.eval_samples != 1):
        raise RecipeError("eval_samples must be at least 1, and 1 with greedy answers (eval_temperature 0)")
    output_dir.mkdir(parents=True, exist_ok=True)
    prompts_file = eval_prompts_file(args.eval_prompts_name, output_dir)
    records = load_prompts(prompts_file)
    missing = [p.id for p in records if not {"gold", "kind", "family"} <= set(p.meta)]
    if missing:
        raise DataError(f"{prompts_file}: prompt '{missing[0]}' has no world gold fields (gold, kind, family)")
    prompts = [{"id": p.id, "prompt": p.messages[-1]["content"], **p.meta} for p in records]
    # Ids of the prompts any mode distils on (world prompt ids, shared with the comparison prompts).
    seen = {
        p.id
        for p in load_categorized_prompts(
            args.prompts_name, args.prompts_split, load_templates(args.templates), args.templates, args.max_prompts
        )
    }
    rows = []
    for mode in args.compare_modes:
        if mode == "none":
            model, kept_share, kept_stderr, extra = model_args.model_name_or_path, None, None, {}
        else:
            mode_args = copy.deepcopy(args)
            mode_args.mode, mode_args.compare_modes = mode, []
            mode_training = copy.deepcopy(training_args)
            mode_training.output_dir = str(output_dir / mode)
            run_context_distillation(mode_args, model_args, data_args, mode_training)
            model = mode_training.output_dir
            distilled = read_jsonl_tolerant(Path(model) / DISTILLED_FILE)
            latest = list({r["prompt_index"]: r for r in distilled}.values())
            kept_share, kept_stderr = rate([float(r["kept"]) for r in latest])
            extra = preprompt_effect(latest, {p["id"]: p for p in prompts})
        responses = evaluate_model(
            model,
            prompts_file,
            output_dir / mode / "eval",
            model_args.chat_format,
            args.max_new_tokens,
            args.eval_temperature,
            args.eval_samples,
            training_args.seed,
        )
        metrics = gold_metrics(prompts, responses, seen)
        rows.append(
            {
                "mode": mode,
                "model": model,
                **metrics,
                "kept_share": kept_share,
                "kept_share_stderr": kept_stderr,
                **extra,
            }
        )
        print(
            f"{mode:>9}: violations {metrics['violation_rate']:.3f} (n={metrics['n_adversarial']}), "
            f"false refusals {metrics['false_refusal_rate']:.3f} (n={metrics['n_borderline']}), "
            f"gold helpfulness {metrics['gold_helpfulness']:.3f}, kept {kept_share}"
        )
    result = {
        "model": model_args.model_name_or_path,
        "safety_model": args.safety_model,
        "eval_prompts": args.eval_prompts_name,
        "eval_temperature": args.eval_temperature,
        "eval_samples": args.eval_samples,
        "distillation_prompts": args.prompts_name,
        "distillation_temperature": args.temperature,
        "rows": rows,
    }
    atomic_write_json(output_dir / COMPARISON_FILE, result)
    return result
