"""Stage 3: rejection-sampling fine-tuning (best-of-K by R_c, pooled across iterations, then SFT on the pool).

accelerate launch recipes/rejection_sampling.py --config recipes/tiny/rejection_sampling.yaml [--key value ...]
python recipes/rejection_sampling.py --config recipes/tiny/rejection_sampling.yaml
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/<stage>.py would shadow a package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from rlhf.rejection_sampling import RejectionSamplingArguments, run_rejection_sampling  # noqa: E402
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments  # noqa: E402


def main() -> None:
    rs_args, model_args, data_args, training_args = parse_recipe(
        (RejectionSamplingArguments, ModelArguments, DataArguments, Llama2SFTConfig), description=__doc__
    )
    summary = run_rejection_sampling(rs_args, model_args, data_args, training_args)
    evaluation = summary.get("eval", {})
    gain = ""
    if "start" in evaluation and "tuned" in evaluation:
        gain = f", held-out mean R_c {evaluation['start']['mean_r_c']:.3f} -> {evaluation['tuned']['mean_r_c']:.3f}"
    print(
        f"rejection sampling done: pool of {summary['pool_size']} answers at T={summary['temperature']}{gain}, "
        f"output in {training_args.output_dir}"
    )


if __name__ == "__main__":
    run_cli(main)
