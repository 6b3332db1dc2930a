"""The `llama2-align` console command.

llama2-align pipeline --config recipes/tiny/pipeline.yaml    # the main job
llama2-align pipeline --config ... --run_dir runs/x --sft.learning_rate 1e-4   # overrides
llama2-align sft --config recipes/tiny/sft.yaml              # any stage: sft, reward, rejection-sampling,
                                                             # ppo, pretrain, collect, evaluate,
                                                             # safety-eval, gatt, context-distillation
llama2-align <stage> --help                                  # every field: help, range, default
llama2-align tiny-model --output_dir DIR                     # build the project's tiny Llama
llama2-align convert-gguf FILE.gguf --output_dir DIR         # GGUF -> safetensors checkpoint
llama2-align dry-run --config RECIPE [--accelerate_config F] # batch arithmetic and memory per device
"""

from __future__ import annotations

import argparse
import runpy
import sys

from alignment.config import RecipeError, run_cli
from alignment.stages import BY_NAME


def run_stage(name: str, argv: list[str]) -> None:
    script = BY_NAME[name].script_path
    if not script.is_file():
        raise RecipeError("the recipes/ folder is not next to the package: install from a checkout (pip install -e .)")
    sys.argv = [str(script), *argv]
    runpy.run_path(str(script), run_name="__main__")


def build_tiny_model(argv: list[str]) -> None:
    # Deferred here and below: a command's imports (torch, transformers) would make every --help slow.
    from alignment.tiny import build_tiny_llama, default_tokenizer_texts  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="llama2-align tiny-model")
    parser.add_argument("--output_dir", required=True)
    args = parser.parse_args(argv)
    model, tokenizer = build_tiny_llama(args.output_dir, default_tokenizer_texts())
    print(
        f"tiny Llama ({sum(p.numel() for p in model.parameters()):,} parameters, vocab {len(tokenizer)}) "
        f"in {args.output_dir}"
    )


def convert(argv: list[str]) -> None:
    from alignment.models import convert_gguf  # noqa: PLC0415

    parser = argparse.ArgumentParser(prog="llama2-align convert-gguf")
    parser.add_argument("gguf_file")
    parser.add_argument("--output_dir", default=None)
    args = parser.parse_args(argv)
    print(f"converted to {convert_gguf(args.gguf_file, args.output_dir)}")


def dry_run(argv: list[str]) -> None:
    from alignment.dry_run import main as dry_run_main  # noqa: PLC0415

    dry_run_main(argv)


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    commands = {
        **{name: None for name in BY_NAME},
        "tiny-model": build_tiny_model,
        "convert-gguf": convert,
        "dry-run": dry_run,
    }
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in commands:
        print(__doc__)
        raise SystemExit(0 if argv and argv[0] in ("-h", "--help") else 2)
    command, rest = argv[0], argv[1:]
    if command in BY_NAME:
        run_stage(command, rest)
    else:
        run_cli(lambda: commands[command](rest))


if __name__ == "__main__":
    main()
