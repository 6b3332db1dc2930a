"""Control for a context-distillation comparison: fine-tune on the model's own answers WITHOUT any preprompt.

Run after `recipes/context_distillation.py` with compare_modes: it reads `<comparison dir>/template/distilled.jsonl`,
fine-tunes the compared model on the *original* answers with the same recipe, and judges it like the modes
(same comparison prompts, temperature, answers per prompt and seeds). If this control lowers violations as much
as a mode does, that mode's gain came from training on the model's own samples, not from the preprompt.

    python benchmarks/cd_self_distillation_control.py --config recipes/tiny/context_distillation.yaml \\
        --comparison_dir DIR [--key value ...]            # writes DIR/control/control.json
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.config import parse_recipe, run_cli  # noqa: E402
from alignment.data import atomic_write_json, load_prompts, read_jsonl_tolerant  # noqa: E402
from rlhf.cd_compare import eval_prompts_file, evaluate_model, gold_metrics  # noqa: E402
from rlhf.context_distillation import DISTILLED_FILE, ContextDistillationArguments  # noqa: E402
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments  # noqa: E402
from sft.trainer import run_sft


def main() -> None:
    argv = sys.argv[1:]
    if "-h" in argv or "--help" in argv:
        print(__doc__)
        return
    if "--comparison_dir" not in argv:
        raise SystemExit("--comparison_dir DIR is required (a finished recipes/context_distillation.py comparison)")
    at = argv.index("--comparison_dir")
    comparison = Path(argv[at + 1])
    argv = argv[:at] + argv[at + 2 :] + ["--output_dir", str(comparison / "control" / "model")]
    args, model_args, data_args, training_args = parse_recipe(
        (ContextDistillationArguments, ModelArguments, DataArguments, Llama2SFTConfig), argv
    )
    rows = list({r["prompt_index"]: r for r in read_jsonl_tolerant(comparison / "template" / DISTILLED_FILE)}.values())
    if not (Path(training_args.output_dir) / "stage_complete.json").exists():
        run_sft(
            model_args,
            data_args,
            training_args,
            dialogs=[
                r["prompt"] + [{"role": "assistant", "content": r["original"]}] for r in rows if r["original"].strip()
            ],
        )
    prompts_file = eval_prompts_file(args.eval_prompts_name, comparison)
    prompts = [{"id": p.id, "prompt": p.messages[-1]["content"], **p.meta} for p in load_prompts(prompts_file)]
    answers = evaluate_model(
        training_args.output_dir,
        prompts_file,
        comparison / "control" / "eval",
        model_args.chat_format,
        args.max_new_tokens,
        args.eval_temperature,
        args.eval_samples,
        training_args.seed,
    )
    result = {
        "mode": "self-distillation control",
        "model": model_args.model_name_or_path,
        **gold_metrics(prompts, answers, {r["prompt_id"] for r in rows}),
    }
    atomic_write_json(comparison / "control" / "control.json", result)
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    run_cli(main)
