"""The main job: base pretraining (embedded world), SFT and RLHF-V1..V5 from one YAML recipe.

    python recipes/pipeline.py --config recipes/tiny/pipeline.yaml
    python recipes/pipeline.py --config recipes/tiny/pipeline.yaml --run_dir runs/lr-test --sft.learning_rate 1e-4
Re-running the same command skips finished stages and resumes an interrupted one.

Any field below can be overridden with --key value, and any key of a stage section with a dotted key:
--<section>.<key> value, for the sections pretrain, sft, collect, reward_helpfulness, reward_safety,
rejection_sampling, ppo, evaluate (the keys of recipes/<stage>.py --help), world and data_files.
"""

import os
import sys
from dataclasses import dataclass, field

# Python puts this script's folder first on sys.path, where recipes/sft.py would shadow the `sft` package.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != os.path.dirname(os.path.abspath(__file__))]

from alignment.config import HELP_FLAGS, RecipeError, recipe_help, run_cli, split_config_arg  # noqa: E402
from alignment.pipeline.runner import PipelineConfig, run_pipeline  # noqa: E402


@dataclass
class RunArguments:
    stop_after: str | None = field(default=None, metadata={"help": "Stop after this stage, e.g. RLHF-V1/collect."})


def split_stop_after(argv: list[str]) -> tuple[str | None, list[str]]:
    stop_after, rest = None, []
    i = 0
    while i < len(argv):
        if argv[i] == "--stop_after":
            if i + 1 >= len(argv):
                raise RecipeError("command line: option '--stop_after' needs a value")
            stop_after = argv[i + 1]
            i += 2
            continue
        if argv[i].startswith("--stop_after="):
            stop_after = argv[i].split("=", 1)[1]
        else:
            rest.append(argv[i])
        i += 1
    return stop_after, rest


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP_FLAGS for arg in argv):
        print(recipe_help((PipelineConfig, RunArguments), description=__doc__))
        raise SystemExit(0)
    config_path, rest = split_config_arg(argv)
    if config_path is None:
        raise RecipeError("command line: --config needs a pipeline recipe (YAML), e.g. recipes/tiny/pipeline.yaml")
    stop_after, overrides = split_stop_after(rest)
    report = run_pipeline(config_path, stop_after=stop_after, overrides=overrides)
    for version in report.get("versions", []):
        print(version["name"], {k: round(v, 3) for k, v in version.items() if isinstance(v, float)})


if __name__ == "__main__":
    run_cli(main)
