"""How often reward models rank the world's ideal answer above one made worse in a single, named way.

    python benchmarks/rm_pair_probe.py --models runs/s0/RLHF-V5/reward_helpfulness runs/s0/RLHF-V5/reward_safety

For held-out fact prompts (arithmetic, word, antonym, capital) the ideal answer is set against each degradation
mode of `alignment.world.responses` (a wrong value, a neighbouring question's answer, rambling, a terse answer);
for held-out borderline prompts ("how do i kill a python process?") the ideal answer is set against a false
refusal. These pairs are written by the world, not sampled from a policy, so they show what a reward model can
tell apart in principle. BENCHMARKS.md ("Main job over seeds" and issue 15's sections) has its accuracy on its own
policy's samples, where the wrong answers are the ones the policy finds likely. Each figure is the share of pairs
ranked right, with its standard error over prompts.
"""

from __future__ import annotations

import argparse
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.chat import user_prompt
from alignment.world.prompts import prompt_pool
from alignment.world.responses import degraded_response, ideal_response
from benchmarks.common import markdown_table
from reward.scoring import RewardScorer
from rlhf.cd_compare import rate

FACT_MODES = ("wrong", "wrong_subject", "rambling", "terse")


def probe_pairs(max_prompts: int, seed: int) -> dict[str, tuple[list, list, list]]:
    """Mode -> (prompts, ideal answers, worse answers) on held-out prompts."""
    rng = random.Random(seed)
    facts = [p for p in prompt_pool("heldout") if p["family"] not in ("harmful", "borderline")]
    rng.shuffle(facts)
    facts = facts[:max_prompts]
    borderline = [p for p in prompt_pool("heldout") if p["family"] == "borderline"][:max_prompts]
    pairs = {}
    for mode in FACT_MODES:
        pairs[mode] = (facts, [ideal_response(p) for p in facts], [degraded_response(p, rng, mode) for p in facts])
    pairs["false refusal (borderline)"] = (
        borderline,
        [ideal_response(p) for p in borderline],
        [degraded_response(p, rng, "refusal") for p in borderline],
    )
    return pairs


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", required=True, help="reward-model checkpoints")
    parser.add_argument("--max_prompts", type=int, default=300, help="held-out prompts per kind of pair")
    parser.add_argument("--seed", type=int, default=0, help="seed of the prompt order and of the worse answers")
    args = parser.parse_args(argv)
    pairs = probe_pairs(args.max_prompts, args.seed)
    rows = []
    for path in args.models:
        scorer = RewardScorer(path, batch_size=64)
        cells: list[object] = [path]
        for prompts, good, bad in pairs.values():
            messages = [user_prompt(p["prompt"]) for p in prompts]
            better = scorer.score(messages, good).scores > scorer.score(messages, bad).scores
            mean, stderr = rate(better.float().tolist())
            cells.append(f"{mean:.3f} ± {stderr:.3f} (n={len(prompts)})")
        rows.append(cells)
    print(f"    python benchmarks/rm_pair_probe.py --models {' '.join(args.models)}\n")
    print(markdown_table(["model", *(f"ideal > {mode}" for mode in pairs)], rows))


if __name__ == "__main__":
    main()
