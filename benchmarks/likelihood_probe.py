"""Does a chat model's own likelihood tell a better answer from a worse one? Measured on a run's fixed R_h test set.

    python benchmarks/likelihood_probe.py --run runs/tiny-pipeline [--models runs/tiny-pipeline/SFT/sft ...]

For each model (default: the run's SFT model and its pretrained base), every pair of the run's fixed test set
(`data/rm_test.jsonl`, off-policy world answers to held-out prompts) whose gold grades differ is ranked by the
sum, the mean and the minimum of the answer tokens' log-probabilities under the model, and the share ranked as
gold ranks them is reported per pair kind (`benchmarks/iteration_diagnostics.py` `pair_group`). This is what the
reward models' likelihood feature (`likelihood_feature`, reward/scoring.py) hands their scalar head (the sum).
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.chat import encode_prompt_response
from alignment.data import read_jsonl_tolerant
from alignment.models import load_tokenizer
from benchmarks.common import markdown_table
from benchmarks.iteration_diagnostics import TEST_SET_GROUPS, gold_ordered_pairs
from rlhf.ppo import token_logprobs

STATISTICS = ("sum", "mean", "min")


@torch.no_grad()
def answer_logprobs(model, tokenizer, messages: list[dict], response: str) -> torch.Tensor:
    """log p(token | earlier tokens) of each answer token (the chat template's end token included)."""
    ids, prompt_length = encode_prompt_response(tokenizer, messages, response, "llama2")
    input_ids = torch.tensor([ids])
    answer = torch.arange(1, len(ids))[None] >= prompt_length  # action t predicts token t + 1
    return token_logprobs(model, input_ids, torch.ones_like(input_ids), positions=answer)[answer]


def probe(model_dir: str, rows: list[dict]) -> dict[str, dict[str, tuple[int, int]]]:
    """{statistic: {pair group: (ranked as gold ranks them, pairs)}}."""
    tokenizer, model = load_tokenizer(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    right, pairs = {s: Counter() for s in STATISTICS}, Counter()
    for index, chosen_better, group in gold_ordered_pairs(rows):
        row = rows[index]
        pairs[group] += 1
        lp_chosen = answer_logprobs(model, tokenizer, row["prompt"], row["chosen"])
        lp_rejected = answer_logprobs(model, tokenizer, row["prompt"], row["rejected"])
        for statistic in STATISTICS:
            reduce = getattr(torch.Tensor, statistic)
            right[statistic][group] += bool(reduce(lp_chosen) > reduce(lp_rejected)) == chosen_better
    return {s: {g: (right[s][g], pairs[g]) for g in pairs} for s in STATISTICS}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished main-job run directory")
    parser.add_argument("--models", nargs="*", help="causal LMs to probe (default: the run's SFT and base models)")
    args = parser.parse_args()
    run = Path(args.run)
    test_file = run / "data" / "rm_test.jsonl"
    if not test_file.exists():
        sys.exit(f"error: {test_file} not found: --run must be a main-job run directory")
    rows = [r for r in read_jsonl_tolerant(test_file) if r.get("kind") == "helpfulness"]
    # A run started from another run's base model (--base_model) has no base/ of its own.
    models = args.models or [str(d) for d in (run / "SFT" / "sft", run / "base" / "pretrain") if d.is_dir()]
    missing = [m for m in models if not (Path(m) / "config.json").exists()]
    if missing:
        sys.exit(f"error: no model checkpoint (config.json) in {', '.join(missing)}")
    table = []
    for model_dir in models:
        figures = probe(model_dir, rows)
        for statistic in STATISTICS:
            cells = []
            for group in TEST_SET_GROUPS:
                hits, total = figures[statistic].get(group, (0, 0))
                cells.append(f"{hits / total:.2f} ({total})" if total else "-")
            table.append([model_dir, statistic, *cells])
    print(f"Command: `python benchmarks/likelihood_probe.py {' '.join(sys.argv[1:])}`\n")
    print(markdown_table(["model", "log-likelihood", *TEST_SET_GROUPS], table))


if __name__ == "__main__":
    main()
