"""Can the two cores train the main job's reward models faster without changing what they learn? (issue 14)

    python benchmarks/reward_train_speed.py --run runs/e2-s0 [--pairs 3200] [--no_write]

R_h training was the main job's largest stage on a 2-core AVX2 machine (545 of 1,369 s). Each case below trains the
run's RLHF-V5 reward models from their own recipes (`recipes/reward.py --config <run>/RLHF-V5/reward_*/recipe.yaml`)
on the same `--pairs` comparisons (`max_steps` = pairs / pairs per step) in a subprocess, one case at a time, and
reads the training loop's seconds (`train_runtime`, model loading and evaluation left out):

- ``baseline``: one process, two threads, 8 pairs per step: the pipeline's R_h stage alone on 2 cores;
- ``one thread``: the same on one core;
- ``16 pairs per step``: half the steps, twice the rows per matmul;
- ``DDP, 2 x 1 thread``: two processes (gloo, `recipes/accelerate/ddp-cpu.yaml`), one thread and 4 pairs each;
- ``R_h beside R_s``: R_h and R_s at one thread each, at the same time, as a scheduler running the two reward stages
  of an iteration together would; their wall time (the later of the two) against the two trained one after the
  other at two threads each (``R_s baseline``).

MFU is 6 x parameters x tokens per second against the fp32 matmul peak measured in this run at the case's threads per
process (times its processes); tokens per pair are the baseline's logged `num_tokens` over its pairs, the same pairs
in every case. Results go to BENCHMARKS.md ("Reward-model training on two cores"), replacing that section.
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors import safe_open

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, markdown_table, measure_matmul_peak, write_section

REWARD_SCRIPT = REPO_ROOT / "recipes" / "reward.py"
DDP_CONFIG = REPO_ROOT / "recipes" / "accelerate" / "ddp-cpu.yaml"
METRICS_LINE = re.compile(r"\{'train_runtime'[^}]*\}")
TOKENS = re.compile(r"'num_tokens': '([0-9.e+]+)'")


def reward_command(run: Path, model: str, out: Path, steps: int, batch: int, processes: int) -> list[str]:
    args = [
        str(REWARD_SCRIPT),
        "--config",
        str(run / "RLHF-V5" / f"reward_{model}" / "recipe.yaml"),
        "--output_dir",
        str(out),
        "--max_steps",
        str(steps),
        "--global_batch_size",
        str(batch),
        "--per_device_train_batch_size",
        str(batch // processes),
        "--report_to",
        "none",
    ]
    if processes == 1:
        return [sys.executable, *args]
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        str(DDP_CONFIG),
        "--num_processes",
        str(processes),
        "--num_cpu_threads_per_process",
        "1",
        *args,
    ]


def start(command: list[str], threads: int, log: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    print("$", " ".join(command[1:]), f"(OMP_NUM_THREADS={threads})", flush=True)
    return subprocess.Popen(command, cwd=REPO_ROOT, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)


def finish(process: subprocess.Popen, log: Path) -> dict:
    text = log.read_text(errors="replace") if process.wait() == 0 else None
    if text is None:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-20:])
        raise SystemExit(f"a benchmark case failed; the end of its log:\n{tail}")
    metrics = ast.literal_eval(METRICS_LINE.findall(text)[-1])
    tokens = TOKENS.findall(text)
    return {"seconds": float(metrics["train_runtime"]), "tokens": float(tokens[-1]) if tokens else None}


def parameters(model_dir: Path) -> int:
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as weights:
        return sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", required=True, help="a finished main-job run directory")
    parser.add_argument("--pairs", type=int, default=3200, help="comparisons each case trains on")
    parser.add_argument("--no_write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    run = Path(args.run)
    for model in ("helpfulness", "safety"):
        if not (run / "RLHF-V5" / f"reward_{model}" / "recipe.yaml").is_file():
            raise SystemExit(f"{run}: no RLHF-V5/reward_{model}/recipe.yaml; is it a finished main-job run?")
    with tempfile.TemporaryDirectory(prefix="reward_train_speed_") as scratch:

        def launch(name: str, model: str, threads: int, batch: int = 8, processes: int = 1) -> dict:
            slug = name.replace(" ", "_")
            log, out = Path(scratch) / f"{slug}.log", Path(scratch) / slug
            command = reward_command(run, model, out, args.pairs // batch, batch, processes)
            return {"process": start(command, threads, log), "log": log, "threads": threads, "processes": processes}

        def case(*spec, **options) -> dict:
            launched = launch(*spec, **options)
            return {**finish(launched["process"], launched["log"]), **launched}

        results = {
            "baseline": case("baseline", "helpfulness", 2),
            "one thread": case("one thread", "helpfulness", 1),
            "16 pairs per step": case("16 pairs per step", "helpfulness", 2, batch=16),
            "DDP, 2 x 1 thread": case("ddp", "helpfulness", 1, processes=2),
            "R_s baseline": case("safety baseline", "safety", 2),
        }
        began = time.perf_counter()
        side_by_side = {model: launch(f"beside {model}", model, 1) for model in ("helpfulness", "safety")}
        beside = {model: finish(job["process"], job["log"]) for model, job in side_by_side.items()}
        beside_wall = time.perf_counter() - began
        size = parameters(Path(scratch) / "baseline")

    peaks = {}
    for threads in (1, 2):
        torch.set_num_threads(threads)
        peaks[threads] = measure_matmul_peak()
    tokens_per_pair = results["baseline"]["tokens"] / args.pairs
    base_seconds = results["baseline"]["seconds"]

    def mfu(seconds: float, threads: int, processes: int) -> str:
        return f"{6 * size * tokens_per_pair * args.pairs / seconds / (peaks[threads] * processes):.1%}"

    rows = [
        [
            name,
            f"{r['processes']} x {r['threads']}",
            f"{r['seconds']:.1f}",
            f"{args.pairs / r['seconds']:.0f}",
            f"{base_seconds / r['seconds']:.2f}x",
            mfu(r["seconds"], r["threads"], r["processes"]),
        ]
        for name, r in results.items()
        if name != "R_s baseline"
    ]
    sequential = base_seconds + results["R_s baseline"]["seconds"]
    slowest = max(r["seconds"] for r in beside.values())
    rows.append(
        [
            "R_h beside R_s (both models' pairs)",
            "2 x 1",
            f"{slowest:.1f} (R_h {beside['helpfulness']['seconds']:.1f}, R_s {beside['safety']['seconds']:.1f})",
            f"{2 * args.pairs / slowest:.0f}",
            f"{sequential / slowest:.2f}x against R_h then R_s at 2 threads ({sequential:.1f} s)",
            "",
        ]
    )
    command = f"python benchmarks/reward_train_speed.py --run {args.run} --pairs {args.pairs}"
    body = (
        f"Command: `{command}` ({os.cpu_count()} cores, one case at a time). The run's V5 R_h "
        f"({size:,} parameters, {tokens_per_pair:.1f} tokens per pair) trained on {args.pairs} comparisons per case; "
        f"seconds are the training loop's. fp32 matmul peak measured in this run: {peaks[1] / 1e9:.0f} GFLOP/s at "
        f"one thread, {peaks[2] / 1e9:.0f} at two. The two processes side by side took {beside_wall:.1f} s of wall "
        "time from start to exit, start-up included.\n\n"
        + markdown_table(
            ["case", "processes x threads", "seconds", "pairs / s", "against baseline", "MFU"],
            rows,
        )
    )
    print(body)
    if not args.no_write:
        write_section("Reward-model training on two cores (issue 14, 2026-12-01, fifth session)", body)


if __name__ == "__main__":
    main()
