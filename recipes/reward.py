"""Stage 2: the helpfulness (R_h) and safety (R_s) reward models.

accelerate launch recipes/reward.py --config recipes/tiny/reward.yaml [--key value ...]
python recipes/reward.py --config recipes/tiny/reward.yaml --reward_model safety --output_dir runs/tiny/rs
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/reward.py would shadow the `reward` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from reward.config import Llama2RewardConfig  # noqa: E402
from reward.trainer import run_reward  # noqa: E402


def main() -> None:
    (config,) = parse_recipe((Llama2RewardConfig,), description=__doc__)
    summary = run_reward(config)
    overall = summary.get("eval", {}).get("accuracy", {}).get("overall", {})
    accuracy = "n/a" if overall.get("accuracy") is None else f"{100 * overall['accuracy']:.1f}%"
    print(
        f"{config.reward_model} RM done: {summary['data']['train_pairs']} train pairs, held-out accuracy "
        f"{accuracy} on {overall.get('count', 0)} pairs, model in {config.output_dir}"
    )


if __name__ == "__main__":
    run_cli(main)
