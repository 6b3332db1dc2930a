"""The main job's wall time, stage by stage, under two ways of running its stages, from scratch, in one run.

    python benchmarks/pipeline_wall.py --iterations 1 --out runs/bench/pipeline_wall

`before` is how the pipeline ran its stages until now: one `accelerate launch` process per stage with one
thread (`--launcher accelerate --threads_per_process 1`, what accelerate launch sets by default). `after` is
the default: single-process stages forked from the pipeline with its libraries already imported, every core
used (`--launcher auto`). Both run the same recipe (`--config`, default the main job) from an empty run
directory, one after the other; `--iterations` shortens both alike. The figures are seconds of wall time per
stage from each run's manifest, and their ratio; the section in BENCHMARKS.md is replaced.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, markdown_table, write_section

MODES = {
    "before": ["--launcher", "accelerate", "--threads_per_process", "1"],
    "after": ["--launcher", "auto"],
}


def run_mode(config: str, run_dir: Path, extra: list[str], overrides: list[str]) -> dict:
    if run_dir.exists():
        shutil.rmtree(run_dir)  # from scratch: nothing to skip
    command = [
        sys.executable,
        str(REPO_ROOT / "recipes" / "pipeline.py"),
        "--config",
        config,
        "--run_dir",
        str(run_dir),
        *extra,
        *overrides,
    ]
    print("$", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    wall = time.perf_counter() - started
    manifest = json.loads((run_dir / "manifest.json").read_text())
    return {"wall_seconds": wall, "stages": {name: r["seconds"] for name, r in manifest["stages"].items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/tiny/pipeline.yaml")
    parser.add_argument("--iterations", type=int, default=None, help="RLHF iterations (default: the recipe's)")
    parser.add_argument("--out", default="runs/bench/pipeline_wall")
    parser.add_argument("--no_write", action="store_true", help="do not update BENCHMARKS.md")
    args = parser.parse_args()
    overrides = []
    if args.iterations is not None:
        overrides = ["--iterations", str(args.iterations), "--ppo_from_iteration", str(args.iterations)]
    out = Path(args.out)
    results = {mode: run_mode(args.config, out / mode, extra, overrides) for mode, extra in MODES.items()}
    (out / "pipeline_wall.json").write_text(json.dumps(results, indent=1))

    before, after = results["before"], results["after"]
    rows = [
        [
            name,
            f"{before['stages'][name]:.1f}",
            f"{after['stages'].get(name, float('nan')):.1f}",
            f"{before['stages'][name] / after['stages'][name]:.2f}x",
        ]
        for name in before["stages"]
    ]
    rows.append(
        [
            "**whole run (wall)**",
            f"{before['wall_seconds']:.1f}",
            f"{after['wall_seconds']:.1f}",
            f"**{before['wall_seconds'] / after['wall_seconds']:.2f}x**",
        ]
    )
    command = f"python benchmarks/pipeline_wall.py --config {args.config}" + (
        f" --iterations {args.iterations}" if args.iterations is not None else ""
    )
    body = (
        f"Command: `{command}` ({os.cpu_count()} cores). Both runs from an empty run directory, one after the "
        "other, on the same machine. before: one `accelerate launch` per stage, 1 thread each (the old default). "
        "after: single-process stages forked from the pipeline (libraries imported once), cores / processes "
        "threads each (the new default).\n\n"
        + markdown_table(["stage", "before (s)", "after (s)", "before / after"], rows)
    )
    print(body)
    if not args.no_write:
        write_section("Main job wall time: stage start-up and threads", body)


if __name__ == "__main__":
    main()
