"""Safety context distillation (arXiv 2307.09288, sec. 4.2.4): generic, answer templates, or targeted by R_s.

    python recipes/context_distillation.py --config recipes/tiny/context_distillation.yaml --output_dir DIR
    accelerate launch recipes/context_distillation.py --config RECIPE [--key value ...]

With `compare_modes` set (the tiny preset), runs each mode from the same model and writes DIR/comparison.json
(violation rate, false-refusal rate, gold helpfulness, kept share, with n and standard errors).
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/<stage>.py would shadow a package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from rlhf.cd_compare import run_comparison  # noqa: E402
from rlhf.context_distillation import ContextDistillationArguments, run_context_distillation  # noqa: E402
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments  # noqa: E402

DATACLASSES = (ContextDistillationArguments, ModelArguments, DataArguments, Llama2SFTConfig)


def main() -> None:
    cd_args, model_args, data_args, training_args = parse_recipe(DATACLASSES, description=__doc__)
    if cd_args.compare_modes:
        result = run_comparison(cd_args, model_args, data_args, training_args)
        print(f"comparison of {len(result['rows'])} modes in {training_args.output_dir}/comparison.json")
        return
    summary = run_context_distillation(cd_args, model_args, data_args, training_args)
    print(
        f"context distillation ({summary['mode']}) done: kept {summary['kept']} of {summary['prompts']} "
        f"distilled answers, mean R_s {summary['mean_r_s_original']:.3f} -> {summary['mean_r_s_after_gate']:.3f}, "
        f"output in {training_args.output_dir}"
    )


if __name__ == "__main__":
    run_cli(main)
