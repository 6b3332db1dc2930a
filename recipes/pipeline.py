"""The main job: base pretraining (embedded world), SFT and RLHF-V1..V5 from one YAML recipe.

    python recipes/pipeline.py --config recipes/tiny/pipeline.yaml
Re-running the same command skips finished stages and resumes an interrupted one.
"""

import argparse
import os
import sys

# Python puts this script's folder first on sys.path, where recipes/sft.py would shadow the `sft` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import run_cli  # noqa: E402
from rlhf.pipeline import run_pipeline  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True, help="pipeline recipe (YAML)")
    parser.add_argument("--stop_after", default=None, help="stop after this stage, e.g. RLHF-V1/collect")
    args = parser.parse_args()
    report = run_pipeline(args.config, stop_after=args.stop_after)
    for version in report.get("versions", []):
        print(version["name"], {k: round(v, 3) for k, v in version.items() if isinstance(v, float)})


if __name__ == "__main__":
    run_cli(main)
