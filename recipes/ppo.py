"""Stage 4: PPO on the safety-gated reward R_c - beta * KL (Llama 2, sec. 3.2.3).

    accelerate launch recipes/ppo.py --config recipes/tiny/ppo.yaml [--key value ...]
    python recipes/ppo.py --config recipes/tiny/ppo.yaml

A killed run resumes from its last complete iteration when re-run with the same output_dir.
"""

import os
import sys

# Python puts this script's folder first on sys.path, where the other recipes/<stage>.py scripts would shadow
# the packages of the same name (recipes/sft.py -> sft) that this stage imports indirectly.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from rlhf.ppo import NonFiniteError, run_ppo  # noqa: E402
from rlhf.ppo_config import PPOConfig  # noqa: E402


def main() -> None:
    (config,) = parse_recipe((PPOConfig,), description=__doc__)
    try:
        summary = run_ppo(config)
    except NonFiniteError as error:
        print(f"error: {error}", file=sys.stderr)
        raise SystemExit(1) from None
    final = summary["final_metrics"]
    print(
        f"PPO done: {summary['iterations']} iterations"
        + (" (stopped early)" if summary["stopped_early"] else "")
        + (f", R_c {final['reward/combined']:.3f}, KL {final['kl']:.3f}" if final else "")
        + f", best held-out R_c {summary['best_heldout_combined']} at iteration {summary['best_iteration']}"
        + f", model in {config.output_dir}"
    )


if __name__ == "__main__":
    run_cli(main)
