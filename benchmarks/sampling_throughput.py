"""Sampling throughput: our engine (one prefill per prompt, KV cache copied K times) against plain
`generate(num_return_sequences=K)`, which repeats every prompt K times before the prefill.

    python benchmarks/sampling_throughput.py --model builtin:tiny-llama --prompts 32 --max_new_tokens 32

Reports generated tokens/s and best-of-K samples/s (prompts finished per second, each giving one best-of-K
answer) for K in {1, 4, 16}, on short prompts (the demo questions) and long ones (the same behind a
~300-token system prompt), both paths in the same process on the same prompts.

    python benchmarks/sampling_throughput.py --model builtin:smollm2-135m-instruct --dtypes float32,bfloat16

compares weight dtypes instead, in one process: our engine, greedy, on the short prompts and on 20-turn dialogues
(GAtt evaluation's shape, data/gatt-truthfulqa), seconds per batch and the ratio to the first dtype.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from alignment.chat import encode_prompt, user_prompt  # noqa: E402
from alignment.data import load_prompts  # noqa: E402
from alignment.models import load_causal_lm, load_tokenizer  # noqa: E402
from alignment.paths import DEMO_SFT_DATA  # noqa: E402
from rlhf.sampling import HFSamplingEngine, SamplingParams  # noqa: E402

GATT_DIALOGUES = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "gatt-truthfulqa", "eval.jsonl"
)
SYSTEM = " ".join(
    ["You are a helpful, respectful and honest assistant. Always answer as helpfully as possible, while being safe."]
    * 4
)


def measure(engine, prompt_ids, params, repeats: int) -> dict:
    best = None
    for _ in range(repeats):
        started = time.perf_counter()
        samples = engine.generate(prompt_ids, params)
        seconds = time.perf_counter() - started
        tokens = sum(len(s.response_ids) for s in samples)
        if best is None or seconds < best["seconds"]:
            best = {"seconds": seconds, "tokens": tokens}
    best["tokens_per_s"] = best["tokens"] / best["seconds"]
    best["best_of_k_per_s"] = len(prompt_ids) / best["seconds"]
    return best


def dialogue_prompts(tokenizer, n: int, turns: int = 20) -> list[list[int]]:
    """n dialogues of `turns` held-out GAtt questions with a fixed 30-token answer to each earlier one."""
    rows = [json.loads(line) for line in open(GATT_DIALOGUES, encoding="utf-8")][:n]
    answer = "Ahoy! The short answer is that it depends on the details, and most sources agree on the main point."
    prompts = []
    for row in rows:
        messages = [{"role": "system", "content": row["system"]}]
        for t, message in enumerate(row["messages"][:turns]):
            messages.append({"role": "user", "content": message["content"]})
            if t < turns - 1:
                messages.append({"role": "assistant", "content": answer})
        prompts.append(encode_prompt(tokenizer, messages))
    return prompts


def compare_dtypes(args, tokenizer, questions: list[str]) -> None:
    prompt_sets = {
        "short": [encode_prompt(tokenizer, user_prompt(q)) for q in questions],
        "20-turn": dialogue_prompts(tokenizer, args.prompts),
    }
    params = SamplingParams(num_samples=1, temperature=0.0, max_new_tokens=args.max_new_tokens)
    dtypes = args.dtypes.split(",")
    seconds = {}
    for dtype in dtypes:
        engine = HFSamplingEngine(load_causal_lm(args.model, dtype), tokenizer, batch_size=args.batch_size)
        for name, prompt_ids in prompt_sets.items():
            engine.generate(prompt_ids[:2], params)  # warm-up
            seconds[dtype, name] = measure(engine, prompt_ids, params, args.repeats)["seconds"]
    print(f"model {args.model}, {torch.get_num_threads()} threads, {args.prompts} prompts, greedy, "
          f"max_new_tokens {args.max_new_tokens}")  # fmt: skip
    for name, prompt_ids in prompt_sets.items():
        mean_len = sum(map(len, prompt_ids)) / len(prompt_ids)
        cells = [f"{dtype} {seconds[dtype, name]:.1f} s ({seconds[dtypes[0], name] / seconds[dtype, name]:.2f}x)"
                 for dtype in dtypes]  # fmt: skip
        print(f"{name:>8} prompts (mean {mean_len:.0f} tokens): " + ", ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="builtin:tiny-llama")
    parser.add_argument("--prompts", type=int, default=32)
    parser.add_argument("--max_new_tokens", type=int, default=32)
    parser.add_argument("--batch_size", type=int, default=64, help="sequences (prompts x K) per generate call")
    parser.add_argument("--ks", default="1,4,16")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--dtypes", default=None, help="e.g. float32,bfloat16: compare weight dtypes instead")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    tokenizer = load_tokenizer(args.model)
    questions = [p.messages[-1]["content"] for p in load_prompts(str(DEMO_SFT_DATA))][: args.prompts]
    if args.dtypes:
        compare_dtypes(args, tokenizer, questions)
        return
    model = load_causal_lm(args.model, args.dtype).to(device)
    prompt_sets = {
        "short": [encode_prompt(tokenizer, user_prompt(q)) for q in questions],
        "long": [encode_prompt(tokenizer, user_prompt(q, system=SYSTEM)) for q in questions],
    }
    results = []
    print(
        f"model {args.model} on {device} ({torch.get_num_threads()} threads), {len(questions)} prompts, "
        f"max_new_tokens {args.max_new_tokens}, batch {args.batch_size} sequences"
    )
    print(
        f"{'prompts':>7} {'len':>5} {'K':>3} | {'ours tok/s':>10} {'ours bestK/s':>12} | "
        f"{'base tok/s':>10} {'base bestK/s':>12} | {'speedup':>7}"
    )
    for name, prompt_ids in prompt_sets.items():
        mean_len = sum(map(len, prompt_ids)) / len(prompt_ids)
        for k in [int(k) for k in args.ks.split(",")]:
            params = SamplingParams(
                num_samples=k, temperature=1.0, top_p=1.0, max_new_tokens=args.max_new_tokens, seed=0
            )
            row = {"prompts": name, "mean_prompt_tokens": mean_len, "k": k}
            for label, share in (("ours", True), ("baseline", False)):
                engine = HFSamplingEngine(model, tokenizer, batch_size=args.batch_size, share_prefill=share)
                engine.generate(prompt_ids[:2], params)  # warm-up
                row[label] = measure(engine, prompt_ids, params, args.repeats)
            # The two runs draw different answers, of different lengths: compare per generated token.
            row["speedup"] = row["ours"]["tokens_per_s"] / row["baseline"]["tokens_per_s"]
            results.append(row)
            print(
                f"{name:>7} {mean_len:5.0f} {k:3d} | {row['ours']['tokens_per_s']:10.0f} "
                f"{row['ours']['best_of_k_per_s']:12.2f} | {row['baseline']['tokens_per_s']:10.0f} "
                f"{row['baseline']['best_of_k_per_s']:12.2f} | {row['speedup']:6.2f}x",
                flush=True,
            )
    if args.json:
        with open(args.json, "w") as handle:
            json.dump({"args": vars(args), "device": device, "results": results}, handle, indent=2)


if __name__ == "__main__":
    main()
