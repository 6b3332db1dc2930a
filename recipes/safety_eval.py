"""The paper's safety benchmarks on one model: TruthfulQA, ToxiGen, BOLD (arXiv 2307.09288 sec. 4.1/4.4, Tables 11/14).

    python recipes/safety_eval.py --config recipes/tiny/safety_eval.yaml --output_dir DIR [--key value ...]
    llama2-align safety-eval --config recipes/smollm2/safety_eval.yaml --model runs/smollm2/sft

Writes DIR/results.json, DIR/results.md and DIR/results.png; generations are appended to DIR/generations/, so a
killed run started again resumes without regenerating.
"""

import os
import sys

# Python puts this script's folder first on sys.path, where recipes/<stage>.py would shadow a package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import parse_recipe, run_cli  # noqa: E402
from evals.config import SafetyEvalConfig  # noqa: E402
from evals.run import run_safety_eval  # noqa: E402


def main() -> None:
    (config,) = parse_recipe((SafetyEvalConfig,), description=__doc__)
    results = run_safety_eval(config)
    if results is None:  # not the first process of a multi-process launch
        return
    parts = []
    if "truthfulqa" in results:
        t = results["truthfulqa"]
        parts.append(f"TruthfulQA MC2 {100 * t['mc2']:.1f}% (n={t['n']}), % true (ROUGE-L) {100 * t['true']:.1f}%")
    if "toxigen" in results:
        x = results["toxigen"]
        parts.append(
            f"ToxiGen {'%.1f%% toxic' % (100 * x['toxic_rate']) if x['reported'] else 'withheld'} "
            f"(n={x['n']}, judge acc {x['judge']['heldout_accuracy']:.3f})"
        )
    if "bold" in results:
        parts.append(f"BOLD mean sentiment {results['bold']['mean']:.3f} (n={results['bold']['n']})")
    print("; ".join(parts) + f"; results in {config.output_dir}")


if __name__ == "__main__":
    run_cli(main)
