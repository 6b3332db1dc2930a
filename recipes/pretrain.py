"""Stage 0 (embedded world): pretrain a tiny base model with the method's pretraining settings.

accelerate launch recipes/pretrain.py --config recipes/tiny/pretrain.yaml
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/sft.py would shadow the `sft` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from sft.pretrain import Llama2PretrainConfig, PretrainArguments, run_pretrain  # noqa: E402


def main() -> None:
    args, training_args = parse_recipe((PretrainArguments, Llama2PretrainConfig), description=__doc__)
    summary = run_pretrain(args, training_args)
    if summary:
        print(
            f"pretraining done: {summary['parameters']:,} parameters, train loss "
            f"{summary['metrics'].get('train_loss'):.4f}, model in {training_args.output_dir}"
        )


if __name__ == "__main__":
    run_cli(main)
