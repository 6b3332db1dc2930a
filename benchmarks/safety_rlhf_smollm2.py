"""Safety RLHF on a real model: SmolLM2-135M-Instruct, best-of-K by a safety RM on Anthropic HH harmless prompts,
then the paper's safety benchmarks before and after (arXiv 2307.09288 sec. 3.2.3, 4.2.3; Tables 11 and 14).

The safety RM R_s is the head trained on SmolLM2's frozen features by `benchmarks/reward_hh_smollm2.py`; its
`held_out.jsonl` fixes the split by prompt. Prompts for sampling are the first user turns of the HH harmless
pairs R_s trained on (a first turn that also opens a held-out pair is left out); the held-out first turns are
the evaluation's adversarial prompts, never sampled on. Every sampling prompt is a safety prompt, so R_c = R_s.

Models evaluated (each in SmolLM2's own chat format):
- `shipped`: SmolLM2-135M-Instruct as shipped;
- `rs`: after rejection sampling: K answers per prompt, the best by R_s kept, fine-tuned on them;
- `control`: fine-tuned the same way on a random answer per prompt (the first finished sample of the same K),
  which separates R_s's choice from fine-tuning on the model's own answers.

For each: refusal rate and mean sigmoid(R_s) of greedy answers to the held-out HH prompts, refusal rate on
benign prompts (TruthfulQA questions), and the safety-eval preset (TruthfulQA MC1/MC2 and % true, ToxiGen
% toxic, BOLD sentiment), all with n and standard errors. A killed run started again resumes: sampling and
safety-eval generations are append-only, finished fine-tunes and answer sets are kept.

    python benchmarks/reward_hh_smollm2.py --skip throughput --train_pairs 1725 --eval_fraction 0.25 \\
        --max_length 64 --train_top_layers 0 --learning_rate 3e-3 --epochs 2 --global_batch_size 16 \\
        --per_device_batch 16 --out runs/bench/reward_hh_head64
    python benchmarks/safety_rlhf_smollm2.py --safety_model runs/bench/reward_hh_head64/safety_rm \\
        --out runs/bench/safety_rlhf2 --chat_toxigen
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.config import parse_recipe  # noqa: E402
from alignment.data import atomic_write_json, atomic_write_text, read_jsonl_tolerant, read_records  # noqa: E402
from benchmarks.cd_smollm2_hh import (  # noqa: E402
    MODEL,
    SAFETY_EVAL_PRESET,
    TRUTHFULQA,
    cached_answers,
    hh_prompts,
    is_refusal,
    preset_toxigen,
)
from evals.config import SafetyEvalConfig  # noqa: E402
from evals.run import run_safety_eval  # noqa: E402
from reward.scoring import RewardScorer  # noqa: E402
from rlhf.cd_compare import paired, per_item, rate  # noqa: E402
from rlhf.rejection_sampling import SAMPLES_FILE, RejectionSamplingArguments, run_rejection_sampling  # noqa: E402
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments  # noqa: E402
from sft.trainer import run_sft  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
HH_HARMLESS = REPO.parent / "shared" / "data" / "hh-rlhf" / "harmless-base-test.jsonl.gz"
RS_CLASSES = (RejectionSamplingArguments, ModelArguments, DataArguments, Llama2SFTConfig)
SFT_CLASSES = (ModelArguments, DataArguments, Llama2SFTConfig)
SFT_COMPLETE = "sft_complete.json"


def fine_tune_options(args, output_dir: Path) -> list[str]:
    """The same fine-tuning for the RS model and its control, so only the choice of answers differs."""
    return [
        "--model_name_or_path", MODEL, "--chat_format", "model", "--global_batch_size", "16",
        "--per_device_train_batch_size", "8", "--learning_rate", str(args.learning_rate), "--num_train_epochs",
        str(args.epochs), "--max_length", "256", "--packing", "false", "--bf16", "false", "--save_steps", "1000",
        "--logging_steps", "5", "--seed", str(args.seed), "--output_dir", str(output_dir),
    ]  # fmt: skip


def split_prompts(hh_file: Path, held_out_file: Path, n_train: int, n_held: int) -> tuple[list[str], list[str]]:
    """(sampling prompts, held-out prompts): first user turns; a first turn that opens any held-out pair of
    R_s is never sampled on, so the policy is fine-tuned on none of the held-out prompts."""
    held = hh_prompts(held_out_file)
    held_set = set(held)
    return [p for p in hh_prompts(hh_file) if p not in held_set][:n_train], held[:n_held]


def write_prompts(path: Path, prompts: list[str], prefix: str) -> None:
    rows = [json.dumps({"id": f"{prefix}{i}", "prompt": p, "is_safety_prompt": True}) for i, p in enumerate(prompts)]
    atomic_write_text(path, "\n".join(rows) + "\n")


def random_pick(samples: Path, drop_unfinished: bool) -> list[list[dict]]:
    """Per prompt, the lowest-numbered sample (samples are i.i.d., so this is a random one), under the same
    finished-answer filter as best-of-K."""
    first: dict[str, dict] = {}
    for row in read_jsonl_tolerant(samples):
        if drop_unfinished and not row.get("finished", True):
            continue
        if not row["response"].strip():
            continue
        held = first.get(row["prompt_id"])
        if held is None or row["sample_index"] < held["sample_index"]:
            first[row["prompt_id"]] = row
    return [row["messages"] + [{"role": "assistant", "content": row["response"]}] for row in first.values()]


def evaluate(name: str, model: str, args, out: Path, held: list[str], benign: list[str], scorer) -> dict:
    harmful_answers, benign_answers = cached_answers(
        out / f"answers_{name}.json", model, held, benign, args.max_new_tokens, args.batch_size
    )
    r_s = scorer.score([[{"role": "user", "content": p}] for p in held], harmful_answers).probs.tolist()
    row: dict = {"model": name, "checkpoint": model, "n_heldout_hh": len(held), "n_benign": len(benign)}
    for key, values in (
        ("refusal_rate_heldout_hh", [float(is_refusal(a)) for a in harmful_answers]),
        ("refusal_rate_benign", [float(is_refusal(a)) for a in benign_answers]),
        ("mean_sigmoid_r_s_heldout_hh", r_s),
    ):
        row[key], row[f"{key}_stderr"] = rate(values)
    if not args.skip_safety_eval:
        (config,) = parse_recipe(
            (SafetyEvalConfig,),
            ["--config", str(args.safety_eval_config), "--model", model, "--model_name", name,
             "--benchmarks", *args.benchmarks, "--output_dir", str(out / f"safety_eval_{name}")],
        )  # fmt: skip
        results = run_safety_eval(config)
        row["safety_eval"] = {k: results[k] for k in ("truthfulqa", "toxigen", "bold") if k in results}
    if args.chat_toxigen:
        # A chat model is used through its chat format; the preset continues ToxiGen's text as plain text.
        row["toxigen_chat_format"] = preset_toxigen(
            model, name, out / f"safety_eval_chat_{name}", "--prompt_format", "model", preset=args.safety_eval_config
        )
    if args.replicate_toxigen:
        # More ToxiGen prompts of the same seeded draw, as the preset measures it (plain continuation); the
        # differences below are also reported on the prompts the preset did not use, a fresh sample.
        per_group = args.replicate_toxigen
        row[f"toxigen_{per_group}_per_group"] = preset_toxigen(
            model, name, out / f"safety_eval_toxigen{per_group}_{name}", "--toxigen_per_group", str(per_group),
            preset=args.safety_eval_config,
        )  # fmt: skip
    row["example"] = {"prompt": held[0], "answer": harmful_answers[0]}
    return row


def paired_differences(out: Path, name: str, baseline: str = "shipped") -> dict:
    """Each figure of `name` minus the baseline's, paired per prompt (same prompts, same judge)."""
    refusals = {}
    for model in (baseline, name):
        harmful, benign = json.loads((out / f"answers_{model}.json").read_text())
        refusals[model] = [{str(i): float(is_refusal(a)) for i, a in enumerate(part)} for part in (harmful, benign)]
    result = {
        "refusal_rate_heldout_hh": paired(refusals[baseline][0], refusals[name][0]),
        "refusal_rate_benign": paired(refusals[baseline][1], refusals[name][1]),
    }
    files = {
        "truthfulqa_mc2": ("safety_eval", "generations/truthfulqa_mc.jsonl", "mc2"),
        "toxigen_toxic_rate": ("safety_eval", "toxigen_scored.jsonl", "toxic"),
        "toxigen_chat_format_toxic_rate": ("safety_eval_chat", "toxigen_scored.jsonl", "toxic"),
    }
    for key, (folder, file, field) in files.items():
        before, after = out / f"{folder}_{baseline}" / file, out / f"{folder}_{name}" / file
        if before.exists() and after.exists():
            result[key] = paired(per_item(before, field), per_item(after, field))
    preset = out / f"safety_eval_{baseline}" / "toxigen_scored.jsonl"
    for folder in sorted(out.glob(f"safety_eval_toxigen*_{baseline}")):
        per_group = folder.name.removeprefix("safety_eval_toxigen").removesuffix(f"_{baseline}")
        after = out / f"safety_eval_toxigen{per_group}_{name}" / "toxigen_scored.jsonl"
        if not after.exists():
            continue
        before, after = per_item(folder / "toxigen_scored.jsonl", "toxic"), per_item(after, "toxic")
        result[f"toxigen_{per_group}_per_group_toxic_rate"] = paired(before, after)
        if preset.exists():
            result[f"toxigen_{per_group}_per_group_fresh_toxic_rate"] = paired(
                before, after, leave_out=set(per_item(preset, "toxic"))
            )
    return result


def differences_table(rows: list[dict]) -> str:
    keys = ["refusal_rate_heldout_hh", "refusal_rate_benign", "truthfulqa_mc2", "toxigen_toxic_rate",
            "toxigen_chat_format_toxic_rate"]  # fmt: skip
    keys += sorted({k for row in rows for k in row.get("minus_shipped", {}) if k not in keys})
    lines = ["", "Minus SmolLM2 as shipped, paired per prompt (points; mean ± standard error, n):", "",
             "| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]  # fmt: skip
    for row in rows:
        diff = row.get("minus_shipped")
        if diff:
            cells = [
                f"{percent(diff[k]['mean'], diff[k]['stderr'])} (n={diff[k]['n']})" if k in diff else "-" for k in keys
            ]
            lines.append(f"| {row['model']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def percent(value, stderr) -> str:
    return "-" if value is None else f"{100 * value:.1f} ± {100 * (stderr or 0):.1f}"


def table(rows: list[dict]) -> str:
    lines = [
        "| model | refusals, held-out HH | sigmoid(R_s), held-out HH | refusals, benign | TruthfulQA MC2 | "
        "% true (ROUGE-L) | ToxiGen % toxic | ... after hateful prompts | ToxiGen, chat format | BOLD sentiment |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        s = row.get("safety_eval", {})
        t, x, b = s.get("truthfulqa", {}), s.get("toxigen", {}), s.get("bold", {})
        hate = x.get("per_prompt_kind", {}).get("hate", {})
        chat = row.get("toxigen_chat_format", {})
        lines.append(
            f"| {row['model']} | {percent(row['refusal_rate_heldout_hh'], row['refusal_rate_heldout_hh_stderr'])} | "
            f"{row['mean_sigmoid_r_s_heldout_hh']:.3f} ± {row['mean_sigmoid_r_s_heldout_hh_stderr']:.3f} | "
            f"{percent(row['refusal_rate_benign'], row['refusal_rate_benign_stderr'])} | "
            f"{percent(t.get('mc2'), t.get('mc2_stderr'))} | {percent(t.get('true'), t.get('true_stderr'))} | "
            f"{percent(x.get('toxic_rate'), x.get('stderr'))} | "
            f"{percent(hate.get('toxic_rate'), hate.get('stderr'))} | "
            f"{percent(chat.get('toxic_rate'), chat.get('stderr'))} | "
            + (f"{b['mean']:.3f} ± {b['stderr']:.3f}" if b else "-")
            + " |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--safety_model", required=True, help="SmolLM2 safety RM (reward_hh_smollm2.py output).")
    parser.add_argument("--hh_file", default=str(HH_HARMLESS), help="Anthropic HH harmless pairs (raw rows).")
    parser.add_argument("--out", required=True)
    parser.add_argument("--n_prompts", type=int, default=192, help="Sampling prompts (R_s's training split).")
    parser.add_argument("--num_samples", type=int, default=4, help="K answers per prompt.")
    parser.add_argument("--temperature", type=float, default=0.7, help="Sampling T (at 1.0 SmolLM2 rambles).")
    parser.add_argument("--top_p", type=float, default=1.0, help="1.0: temperature only, as the paper's RS.")
    parser.add_argument("--sample_max_new_tokens", type=int, default=128, help="Cut answers are not kept.")
    parser.add_argument("--n_eval", type=int, default=100, help="Held-out HH prompts and benign prompts each.")
    parser.add_argument("--max_new_tokens", type=int, default=48, help="Greedy answers of the evaluation.")
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--epochs", type=float, default=2.0)
    parser.add_argument("--learning_rate", type=float, default=5e-5)
    parser.add_argument("--models", nargs="+", default=["shipped", "rs", "control"])
    parser.add_argument("--safety_eval_config", default=str(SAFETY_EVAL_PRESET))
    parser.add_argument("--skip_safety_eval", action="store_true", help="Only the HH refusal figures.")
    parser.add_argument("--benchmarks", nargs="+", default=["truthfulqa", "toxigen", "bold"], help="Of the preset.")
    parser.add_argument("--seed", type=int, default=0, help="Sampling and fine-tuning seed.")
    parser.add_argument(
        "--chat_toxigen", action="store_true", help="Also ToxiGen with each prompt as a user turn (chat format)."
    )
    parser.add_argument(
        "--replicate_toxigen",
        type=int,
        default=0,
        help="Also the preset's ToxiGen with this many prompts per group; differences also on the prompts the "
        "preset did not use.",
    )
    parser.add_argument("--report", default="safety_rlhf", help="Name of the JSON and markdown written in --out.")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)

    train, held = split_prompts(
        Path(args.hh_file), Path(args.safety_model) / "held_out.jsonl", args.n_prompts, args.n_eval
    )
    benign = [row["question"] for _, row in read_records(TRUTHFULQA)][: args.n_eval]
    write_prompts(out / "rs_prompts.jsonl", train, "hh")
    write_prompts(out / "eval_prompts.jsonl", held, "heldout")
    print(f"{len(train)} sampling prompts, {len(held)} held-out HH prompts, {len(benign)} benign", flush=True)

    checkpoints = {"shipped": MODEL}
    if "rs" in args.models or "control" in args.models:
        rs_dir = out / "rs"
        summary = run_rejection_sampling(
            *parse_recipe(
                RS_CLASSES,
                [
                    "--prompts_name",
                    str(out / "rs_prompts.jsonl"),
                    "--helpfulness_model",
                    args.safety_model,
                    "--safety_model",
                    args.safety_model,
                    "--reward_chat_format",
                    "model",
                    "--num_samples",
                    str(args.num_samples),
                    "--temperature",
                    str(args.temperature),
                    "--top_p",
                    str(args.top_p),
                    "--max_new_tokens",
                    str(args.sample_max_new_tokens),
                    "--generation_batch_size",
                    str(args.batch_size),
                    "--prompt_chunk_size",
                    "64",
                    *fine_tune_options(args, rs_dir),
                ],
            )  # fmt: skip
        )
        print(f"rejection sampling: pool of {summary['pool_size']} answers", flush=True)
        checkpoints["rs"] = str(rs_dir)
    if "control" in args.models:
        control_dir = out / "control"
        if not (control_dir / SFT_COMPLETE).exists():
            dialogs = random_pick(out / "rs" / SAMPLES_FILE, drop_unfinished=True)
            model_args, data_args, training_args = parse_recipe(SFT_CLASSES, fine_tune_options(args, control_dir))
            done = run_sft(model_args, data_args, training_args, dialogs=dialogs)
            atomic_write_json(control_dir / SFT_COMPLETE, {"rows": len(dialogs), "sft": done})
        checkpoints["control"] = str(control_dir)

    scorer = RewardScorer(args.safety_model, chat_format="model", batch_size=32)
    rows = []
    for name in args.models:
        row = evaluate(name, checkpoints[name], args, out, held, benign, scorer)
        rows.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "safety_eval"}), flush=True)
    for row in rows:
        if row["model"] != "shipped" and "shipped" in args.models:
            row["minus_shipped"] = paired_differences(out, row["model"])
    atomic_write_json(
        out / f"{args.report}.json", {"safety_model": args.safety_model, "n_prompts": len(train), "rows": rows}
    )
    atomic_write_text(out / f"{args.report}.md", table(rows) + differences_table(rows))
    print(table(rows) + differences_table(rows))


if __name__ == "__main__":
    main()
