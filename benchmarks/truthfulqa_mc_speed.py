"""TruthfulQA MC1/MC2 speed: our scorer (the 6-shot prompt computed once per question, every choice scored from
its KV cache) against lm-eval itself (prompt + choice for every choice), same questions, same process.

    python benchmarks/truthfulqa_mc_speed.py --model builtin:smollm2-135m-instruct --questions 10

Prints seconds per question of each and their ratio, and checks both give the same MC1 and MC2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from alignment.models import load_causal_lm, load_tokenizer, resolve_model_path  # noqa: E402
from evals.data import load_truthfulqa  # noqa: E402
from evals.truthfulqa import run_lm_eval_mc, score_mc  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:tiny-llama")
    parser.add_argument("--truthfulqa_file", default="data/truthfulqa/truthfulqa.sample.jsonl")
    parser.add_argument("--questions", type=int, default=10)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = resolve_model_path(args.model)
    questions = load_truthfulqa(args.truthfulqa_file, args.questions, seed=0)
    model, tokenizer = load_causal_lm(path).eval(), load_tokenizer(path)

    start = time.perf_counter()
    ours = score_mc(model, tokenizer, questions, args.batch_size)
    ours_s = time.perf_counter() - start
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        theirs = run_lm_eval_mc(path, questions, Path(tmp), batch_size=args.batch_size)
        theirs_s = time.perf_counter() - start  # includes lm-eval's model load (a few seconds)
    mc2_gap = max(abs(a["mc2"] - b["mc2"]) for a, b in zip(ours, theirs))
    same_mc1 = all(a["mc1"] == b["mc1"] for a, b in zip(ours, theirs))
    print(
        json.dumps(
            {
                "model": args.model,
                "questions": len(questions),
                "ours_s": round(ours_s, 1),
                "lm_eval_s": round(theirs_s, 1),
                "speedup": round(theirs_s / ours_s, 2),
                "max_mc2_gap": mc2_gap,
                "same_mc1": same_mc1,
            }
        )
    )


if __name__ == "__main__":
    main()
