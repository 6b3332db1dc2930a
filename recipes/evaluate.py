"""Judge a model version on held-out prompts by gold judges and reward models.

accelerate launch recipes/evaluate.py --config <recipe>.yaml --output_dir DIR
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/<stage>.py would shadow a package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from rlhf.evaluate import EvaluateConfig, run_evaluate  # noqa: E402


def main() -> None:
    (config,) = parse_recipe((EvaluateConfig,), description=__doc__)
    result = run_evaluate(config)
    print({k: v for k, v in result.items() if k != "per_family"})


if __name__ == "__main__":
    run_cli(main)
