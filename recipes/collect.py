"""Preference collection: two model variants answer each prompt, an annotator picks and rates.

accelerate launch recipes/collect.py --config <recipe>.yaml --output_dir DIR
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/<stage>.py would shadow a package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from rlhf.collect import CollectConfig, run_collect  # noqa: E402


def main() -> None:
    (config,) = parse_recipe((CollectConfig,), description=__doc__)
    summary = run_collect(config)
    print(f"collected {summary['comparisons']} comparisons in {config.output_dir}")


if __name__ == "__main__":
    run_cli(main)
