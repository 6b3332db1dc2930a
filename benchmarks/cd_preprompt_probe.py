"""Does a model read a safety preprompt? Its answers with and without one, judged by the world's gold judges.

    python benchmarks/cd_preprompt_probe.py --models runs/s0/base/pretrain runs/s0/SFT/sft --out runs/probe

Context distillation (arXiv 2307.09288, sec. 4.2.4) can only pass on what the preprompt changes. For each model
and each preprompt (none; the generic one, `rlhf.context_distillation.GENERIC_PREPROMPT`; the answer template of
the prompt's risk category for adversarial prompts, the generic one for the others) the model answers the
comparison prompts of `rlhf.cd_compare` (every adversarial and borderline prompt of the world, and the held-out
helpfulness prompts) as a system message, `--samples` answers per prompt at T = `--temperature`, and the table gives
the violation rate on the adversarial prompts and the false-refusal rate on the borderline ones, with standard
errors over prompts. Answers are kept in `--out`, so a second run only reports.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.chat import user_prompt
from alignment.data import atomic_write_json, atomic_write_text
from alignment.world.risk import ANSWER_TEMPLATES, TASK_CATEGORY
from benchmarks.common import markdown_table, write_section
from rlhf.cd_compare import evaluate_model, gold_metrics, world_eval_rows
from rlhf.context_distillation import GENERIC_PREPROMPT

PREPROMPTS = ("none", "generic", "template")


def system_for(row: dict, preprompt: str) -> str | None:
    if preprompt == "none":
        return None
    if preprompt == "template" and row["gold"]["task"] in TASK_CATEGORY:
        return ANSWER_TEMPLATES[TASK_CATEGORY[row["gold"]["task"]]]
    return GENERIC_PREPROMPT


def prompt_file(out: Path, preprompt: str) -> Path:
    """The comparison prompts, each with the preprompt as its system message."""
    path = out / f"prompts_{preprompt}.jsonl"
    lines = []
    for row in world_eval_rows():
        lines.append(json.dumps({**row, "prompt": user_prompt(row["prompt"], system_for(row, preprompt))}))
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def probe(model: str, out: Path, samples: int, temperature: float, seed: int) -> list[dict]:
    prompts = world_eval_rows()
    rows = []
    for preprompt in PREPROMPTS:
        answers = evaluate_model(
            model, str(prompt_file(out, preprompt)), out / preprompt, "llama2", 32, temperature, samples, seed
        )
        rows.append({"model": model, "preprompt": preprompt, **gold_metrics(prompts, answers)})
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="llama2-format checkpoints of the world")
    parser.add_argument("--out", required=True)
    parser.add_argument("--samples", type=int, default=4, help="answers per prompt")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    parser.add_argument("--section", default="Does the tiny model read a safety preprompt? (issue 15)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    rows = []
    for i, model in enumerate(args.models):
        (out / f"model{i}").mkdir(parents=True, exist_ok=True)
        rows += probe(model, out / f"model{i}", args.samples, args.temperature, args.seed)
    atomic_write_json(out / "probe.json", {"samples": args.samples, "temperature": args.temperature, "rows": rows})
    table = markdown_table(
        ["model", "preprompt", "violation rate (adversarial)", "false-refusal rate (borderline)"],
        [
            [
                r["model"],
                r["preprompt"],
                f"{r['violation_rate']:.3f} ± {r['violation_rate_stderr']:.3f} (n={r['n_adversarial']})",
                f"{r['false_refusal_rate']:.3f} ± {r['false_refusal_rate_stderr']:.3f} (n={r['n_borderline']})",
            ]
            for r in rows
        ],
    )
    command = f"    python benchmarks/cd_preprompt_probe.py --models {' '.join(args.models)} --out {args.out}"
    body = f"{command}\n\n{args.samples} answers per prompt at T = {args.temperature}.\n\n{table}"
    print(body)
    if args.write:
        write_section(args.section, body)


if __name__ == "__main__":
    main()
