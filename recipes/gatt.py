"""Ghost Attention (arXiv 2307.09288, sec. 3.3): sample GAtt data, fine-tune through the SFT stage, measure.

    python recipes/gatt.py --config recipes/tiny/gatt.yaml --output_dir DIR      (or: llama2-align gatt ...)

Writes DIR/adherence.json ({"turns", "with_gatt", "without_gatt", "n_dialogues", stderr lists, helpfulness}),
adherence.md, adherence.png and attention.png. Re-running resumes: finished steps are skipped.
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/sft.py would shadow the `sft` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from sft.gatt_stage import GattConfig, run_gatt  # noqa: E402


def main() -> None:
    (config,) = parse_recipe((GattConfig,), description=__doc__)
    result = run_gatt(config)
    if config.data_only:
        print(
            f"GAtt data: {result['gatt_rows']['kept']} of {result['gatt_rows']['sampled']} dialogues kept, "
            f"{result['data']}"
        )
        return
    print(
        f"GAtt done ({result['gatt_rows']['kept']} of {result['gatt_rows']['sampled']} sampled dialogues kept); "
        f"adherence at turn {result['turns']}: without {result['without_gatt'][-1]:.3f}, "
        f"with {result['with_gatt'][-1]:.3f} (n={result['n_dialogues']}); {config.output_dir}/adherence.json"
    )


if __name__ == "__main__":
    run_cli(main)
