"""Would torch.compile speed up PPO's update at the benchmark's size? Forward + backward of the tiny policy
(`builtin:tiny-llama`) on mini-batches of 64 rows of 40-52 tokens, eager against `torch.compile(dynamic=True)`,
1 thread, seconds per step (BENCHMARKS.md, "PPO vs TRL").

    python benchmarks/compile_update_probe.py
"""

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.models import load_causal_lm  # noqa: E402

SHAPES = [(64, width) for width in (40, 44, 48, 52, 47)]


def step(model, ids: torch.Tensor, keep: int) -> None:
    logits = model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False, logits_to_keep=keep).logits
    logits.float().logsumexp(-1).mean().backward()


def seconds_per_step(model, generator: torch.Generator, repeats: int = 3) -> float:
    started = time.perf_counter()
    for _ in range(repeats):
        for rows, width in SHAPES:
            step(model, torch.randint(3, 500, (rows, width), generator=generator), 33)
    return (time.perf_counter() - started) / (repeats * len(SHAPES))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    model = load_causal_lm("builtin:tiny-llama").train()
    generator = torch.Generator().manual_seed(0)
    seconds_per_step(model, generator, repeats=1)  # warm-up
    eager = seconds_per_step(model, generator)
    compiled = torch.compile(model, dynamic=True)
    started = time.perf_counter()
    step(compiled, torch.randint(3, 500, (64, 45), generator=generator), 33)
    compile_seconds = time.perf_counter() - started
    seconds_per_step(compiled, generator, repeats=1)  # shapes not seen yet
    fused = seconds_per_step(compiled, generator)
    print(
        f"eager {eager:.4f} s/step, compiled {fused:.4f} s/step ({eager / fused:.2f}x), "
        f"first compile {compile_seconds:.1f} s"
    )


if __name__ == "__main__":
    main()
