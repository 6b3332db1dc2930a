"""The main job over several seeds: each version's gold figures as the mean over seeds and the seed-to-seed spread.

    python benchmarks/pipeline_seeds.py --seeds 0 1 2                 # runs what is missing, then reports
    python benchmarks/pipeline_seeds.py --reports runs/a/report.json runs/b/report.json   # reports only

Each seed is a from-scratch run of the recipe (`--config`, default the main job) with the pipeline's `seed` set
(the world's prompt draws) in `runs/seeds/seed<N>`; a finished run is skipped by the pipeline itself. The
table gives, per version, the mean over seeds, the standard deviation between seeds and the mean of the
within-run standard errors, so a difference can be read against both kinds of noise.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import REPO_ROOT, markdown_table, write_section

FIGURES = ("gold_helpfulness", "gold_violation_rate", "gold_combined")


def run_seed(config: str, seed: int) -> Path:
    run_dir = REPO_ROOT / "runs" / "seeds" / f"seed{seed}"
    command = [
        sys.executable,
        str(REPO_ROOT / "recipes" / "pipeline.py"),
        "--config",
        config,
        "--seed",
        str(seed),
        "--run_dir",
        str(run_dir),
    ]
    subprocess.run(command, cwd=REPO_ROOT, check=True)
    return run_dir / "report.json"


def summarise(reports: list[dict]) -> list[list[object]]:
    names = [v["name"] for v in reports[0]["versions"]]
    rows = []
    for name in names:
        versions = [next(v for v in r["versions"] if v["name"] == name) for r in reports]
        cells = [name]
        for key in FIGURES:
            values = [v[key] for v in versions if v.get(key) is not None]
            spread = statistics.stdev(values) if len(values) > 1 else float("nan")
            errors = [v[f"{key}_stderr"] for v in versions if v.get(f"{key}_stderr") is not None]
            within = f", s.e. {statistics.mean(errors):.3f}" if errors else ""
            cells.append(f"{statistics.mean(values):.3f} (sd {spread:.3f}{within})")
        cells.append(", ".join(f"{v['gold_helpfulness']:.3f}" for v in versions))
        rows.append(cells)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default="recipes/tiny/pipeline.yaml")
    parser.add_argument("--seeds", type=int, nargs="*", default=[])
    parser.add_argument("--reports", nargs="*", default=[], help="report.json files of finished runs")
    parser.add_argument("--write", action="store_true", help="replace the section in BENCHMARKS.md")
    args = parser.parse_args()
    paths = [Path(p) for p in args.reports] + [run_seed(args.config, seed) for seed in args.seeds]
    if len(paths) < 2:
        parser.error("give at least two seeds or reports")
    reports = [json.loads(p.read_text()) for p in paths]
    header = ["version", *(f"{k.replace('_', ' ')}: mean over seeds" for k in FIGURES), "gold helpfulness per seed"]
    command = "python benchmarks/pipeline_seeds.py " + " ".join(
        [
            *(f"--seeds {' '.join(map(str, args.seeds))}".split() if args.seeds else []),
            *(["--reports", *args.reports] if args.reports else []),
        ]
    )
    body = (
        f"Command: `{command}`; {len(reports)} runs: "
        + ", ".join(str(p) for p in paths)
        + ".\n\n"
        + markdown_table(header, summarise(reports))
    )
    print(body)
    if args.write:
        write_section("Main job over seeds", body)


if __name__ == "__main__":
    main()
