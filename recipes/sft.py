"""Stage 1: supervised fine-tuning with the loss on answer tokens only.

accelerate launch recipes/sft.py --config recipes/tiny/sft.yaml [--key value ...]
python recipes/sft.py --config recipes/tiny/sft.yaml
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/sft.py would shadow the `sft` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments  # noqa: E402
from sft.trainer import run_sft  # noqa: E402


def main() -> None:
    model_args, data_args, training_args = parse_recipe(
        (ModelArguments, DataArguments, Llama2SFTConfig), description=__doc__
    )
    summary = run_sft(model_args, data_args, training_args)
    print(
        f"SFT done: {summary['train_dialogs']} dialogs, train loss {summary['metrics'].get('train_loss'):.4f}, "
        f"model in {training_args.output_dir}"
    )


if __name__ == "__main__":
    run_cli(main)
