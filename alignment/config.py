"""Recipes: a YAML file read into typed dataclasses, with `--key value` overrides on the command line.

A stage script calls `parse_recipe((ScriptArgs, SFTConfig), argv)`. The YAML is checked against the
dataclasses' fields before anything heavy happens, so a typo or a wrong type fails in one line that names
the key, instead of surfacing later as a confusing error deep inside a trainer.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import difflib
import enum
import functools
import math
import re
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


@dataclasses.dataclass(frozen=True)
class Range:
    """The values a numeric recipe field allows, declared in its metadata: `metadata={"help": ..., "range": POSITIVE}`.

    Checked when a recipe is parsed (YAML, command line and pipeline stage sections alike), so a negative learning
    rate or a top_p of 2 fails in one line before any model loads. A list field's range applies to each item;
    None (an optional field left unset) is always allowed.
    """

    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False

    def __contains__(self, value: float) -> bool:
        if not math.isfinite(value):  # nan passes every comparison test; inf is no rate or size either
            return False
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or (value < self.high if self.high_open else value <= self.high)

    def __str__(self) -> str:
        if self.high is None:
            return f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if self.low is None:
            return f"{'<' if self.high_open else '<='} {_number(self.high)}"
        return (
            f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}"
            f"{')' if self.high_open else ']'}"
        )


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


POSITIVE = Range(0, low_open=True)  # rates, temperatures, clip ranges, epochs
NON_NEGATIVE = Range(0)  # coefficients (beta), penalties' sizes, warmup, "0 = off" counters
AT_LEAST_ONE = Range(1)  # sizes, batch sizes, K, counts
PROBABILITY = Range(0, 1)  # thresholds, noise, shares where both ends mean something
FRACTION = Range(0, 1, high_open=True)  # held-out shares (1 would leave nothing to train on), AdamW betas
OPEN_UNIT = Range(0, 1, low_open=True, high_open=True)  # sigmoid thresholds: 0 or 1 would gate nothing or all
TOP_P = Range(0, 1, low_open=True)  # nucleus mass: 0 keeps no token

# Ranges of transformers' TrainingArguments fields that the SFT, reward and pretraining configs inherit without
# redeclaring them (their metadata is transformers' own). A field's own "range" metadata wins.
TRAINING_ARGUMENT_RANGES: dict[str, Range] = {
    "learning_rate": POSITIVE,
    "weight_decay": NON_NEGATIVE,
    "adam_beta1": FRACTION,
    "adam_beta2": FRACTION,
    "adam_epsilon": POSITIVE,
    "max_grad_norm": NON_NEGATIVE,  # 0 turns clipping off in the Trainer
    "num_train_epochs": POSITIVE,
    "warmup_steps": NON_NEGATIVE,  # below 1: a share of the steps
    "warmup_ratio": PROBABILITY,
    "per_device_train_batch_size": AT_LEAST_ONE,
    "per_device_eval_batch_size": AT_LEAST_ONE,
    "gradient_accumulation_steps": AT_LEAST_ONE,
    "save_steps": POSITIVE,  # below 1: a share of the steps
    "logging_steps": POSITIVE,
    "eval_steps": POSITIVE,
    "save_total_limit": AT_LEAST_ONE,
    "max_length": AT_LEAST_ONE,
    "dataloader_num_workers": NON_NEGATIVE,
    "label_smoothing_factor": FRACTION,
    "center_rewards_coefficient": NON_NEGATIVE,
}


class RecipeError(ValueError):
    """A recipe or its inputs are wrong; the message is meant for the user, one line, no traceback."""


class DataError(ValueError):
    """A data file is wrong; the message names the file, the line and the field."""


def fail(message: str, code: int = 2) -> typing.NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(code)


def run_cli(main: typing.Callable[[], Any]) -> Any:
    """Run a stage's main; user errors print one line and exit 2 instead of a traceback."""
    try:
        return main()
    except (RecipeError, DataError, FileNotFoundError) as error:
        fail(str(error))


def load_yaml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"recipe file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        raise RecipeError(f"{path}{where}: not valid YAML ({getattr(error, 'problem', error)})") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise RecipeError(f"{path}: a recipe must be a mapping of key: value, got {type(data).__name__}")
    return data


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        optional = len(args) < len(typing.get_args(tp))
        if len(args) == 1:
            return args[0], optional
        return Union[tuple(args)], optional  # noqa: UP007 - built at run time from a tuple of types
    return tp, False


def coerce_value(value: Any, tp: Any, key: str, source: str) -> Any:
    """Check a YAML value against a field type; returns the value, converted where YAML is ambiguous.

    PyYAML reads `2e-5` as a string (YAML 1.1 wants `2.0e-5`), so numeric strings are accepted for floats.
    Types this function does not know are passed through for the dataclass to judge.
    """
    tp, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise RecipeError(f"{source}: key '{key}' cannot be null")

    def wrong(expected: str) -> typing.NoReturn:
        raise RecipeError(f"{source}: key '{key}' expects {expected}, got {value!r} ({type(value).__name__})")

    origin = typing.get_origin(tp)
    if tp is bool:
        if not isinstance(value, bool):
            wrong("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            wrong("an integer")
        return value
    if tp is float:
        if isinstance(value, bool):
            wrong("a number")
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                wrong("a number")
        wrong("a number")
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            wrong("a string")
        return str(value)
    if origin is Literal:
        if value not in typing.get_args(tp):
            wrong("one of " + ", ".join(repr(a) for a in typing.get_args(tp)))
        return value
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        choices = [m.value for m in tp]
        if value not in choices:
            wrong("one of " + ", ".join(repr(c) for c in choices))
        return value
    if origin in (list, list):
        if not isinstance(value, list):
            wrong("a list")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [coerce_value(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, dict) or tp is dict:
        if not isinstance(value, dict):
            wrong("a mapping")
        return value
    return value


def field_range(dataclass_type: type, field: dataclasses.Field) -> Range | None:
    """A field's declared range; transformers' TrainingArguments fields get theirs from TRAINING_ARGUMENT_RANGES."""
    if "range" in field.metadata:
        return field.metadata["range"]
    if any(base.__name__ == "TrainingArguments" for base in dataclass_type.__mro__):
        return TRAINING_ARGUMENT_RANGES.get(field.name)
    return None


def _fields(dataclass_types) -> dict[str, tuple[Any, dataclasses.Field, Range | None]]:
    known: dict[str, tuple[Any, dataclasses.Field, Range | None]] = {}
    for dc in dataclass_types:
        hints = typing.get_type_hints(dc)
        for field in dataclasses.fields(dc):
            if field.init:
                known.setdefault(field.name, (hints.get(field.name, Any), field, field_range(dc, field)))
    return known


def check_range(value: Any, allowed: Range | None, key: str, source: str) -> None:
    """One line naming the source, the field, the value and the allowed range when a number is out of range."""
    if allowed is None or value is None:
        return
    if isinstance(value, (list, tuple)):
        for item in value:
            check_range(item, allowed, key, source)
        return
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value not in allowed:
        raise RecipeError(f"{source}: {key} must be {allowed}, got {value!r}")


def unknown_key_error(key: str, known, source: str, prefix: str = "") -> RecipeError:
    """`source: unknown key 'x' (did you mean 'y'?)`; prefix '--' words it as a command-line option."""
    close = difflib.get_close_matches(str(key), list(known), n=1)
    hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
    what = "option" if prefix else "key"
    return RecipeError(f"{source}: unknown {what} '{prefix}{key}'{hint}")


def check_recipe_keys(data: dict, dataclass_types, source: str) -> dict:
    """Reject unknown keys (with the closest known key), wrong types and out-of-range values; return coerced values."""
    known = _fields(dataclass_types)
    checked = {}
    for key, value in data.items():
        if key not in known:
            raise unknown_key_error(key, known, source)
        tp, _, allowed = known[key]
        checked[key] = coerce_value(value, tp, key, source)
        check_range(checked[key], allowed, key, source)
    return checked


def parse_cli_value(text: str, tp: Any, key: str, source: str = "command line") -> Any:
    """A `--key value` string read as the field's type: YAML syntax for numbers, booleans, lists and null."""
    inner, optional = _unwrap_optional(tp)
    if optional and text in ("null", "None"):
        return None
    if inner is str:
        return text
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        value = text
    return coerce_value(value, tp, key, source)


def split_config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
    rest, config = [], None
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--config":
            if i + 1 >= len(argv):
                raise RecipeError("--config needs a path to a YAML recipe")
            config = argv[i + 1]
            i += 2
            continue
        if arg.startswith("--config="):
            config = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return config, rest


HELP_FLAGS = ("-h", "--help")


def section_fields(dataclass_types) -> dict[str, tuple[Any, Range | None]]:
    """Each field's type and range: what `parse_overrides` checks a `--section.key value` against."""
    return {name: (tp, allowed) for name, (tp, _, allowed) in _fields(dataclass_types).items()}


def parse_overrides(
    argv: list[str],
    dataclass_types,
    sections: dict[str, dict[str, tuple[Any, Range | None]]],
    source: str = "command line",
) -> tuple[dict, dict[str, dict]]:
    """`--key value` for the fields of `dataclass_types` and `--section.key value` for the keys of a section (a
    mapping field, such as a pipeline recipe's `sft:`), typed and range-checked as a recipe's keys are.

    Returns (top-level values, {section: values}); unknown keys fail in one line with the closest known key.
    """
    known = _fields(dataclass_types)
    dotted = [f"{section}.{name}" for section, names in sections.items() for name in names]
    top: dict = {}
    nested: dict[str, dict] = {}
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("--") or arg == "--":
            raise RecipeError(f"{source}: unexpected argument '{arg}' (use --key value or --section.key value)")
        key, has_value, text = arg[2:].partition("=")
        key = key.replace("-", "_")
        section, is_dotted, name = key.partition(".")
        if is_dotted:
            if section not in sections or name not in sections[section]:
                raise unknown_key_error(key, dotted, source, prefix="--")
            tp, allowed = sections[section][name]
        else:
            if key not in known:
                raise unknown_key_error(key, [*known, *dotted], source, prefix="--")
            tp, _, allowed = known[key]
        if not has_value:
            if i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                i += 1
                text = argv[i]
            elif _unwrap_optional(tp)[0] is bool:
                text = "true"
            else:
                raise RecipeError(f"{source}: option '--{key}' needs a value")
        value = parse_cli_value(text, tp, key, source)
        check_range(value, allowed, key, source)
        if is_dotted:
            nested.setdefault(section, {})[name] = value
        else:
            top[key] = value
        i += 1
    return top, nested


def merge_overrides(data: dict, top: dict, nested: dict[str, dict]) -> dict:
    """A recipe mapping with command-line values on top (a section's other keys are kept)."""
    merged = {**data, **top}
    for section, values in nested.items():
        merged[section] = {**(merged.get(section) or {}), **values}
    return merged


@functools.cache
def _parser_class() -> type:
    """transformers' HfArgumentParser, with each field's declared range added to its help line.

    HfArgumentParser hands a field's metadata to argparse as keyword arguments, so "range" is taken out (and
    written into the help) first. transformers is imported here, not at module level: it takes about 2 s, which
    `llama2-align --help` and the light modules that import this one should not pay.
    """
    # transformers loads torch (~2 s): --help of the console entry point and light importers stay instant.
    from transformers import HfArgumentParser  # noqa: PLC0415

    class RecipeArgumentParser(HfArgumentParser):
        @staticmethod
        def _parse_dataclass_field(parser, field):
            return HfArgumentParser._parse_dataclass_field(parser, _for_argparse(field))

    return RecipeArgumentParser


def _for_argparse(field: dataclasses.Field) -> dataclasses.Field:
    """A copy of the field whose metadata argparse accepts: the range joins the help, and a lone % (help texts
    such as "3% of steps"; transformers' own come escaped) is escaped, as argparse %-formats help to show defaults."""
    metadata = {k: v for k, v in field.metadata.items() if k != "range"}
    help_text = metadata.get("help", "")
    if "range" in field.metadata:
        help_text = f"{help_text} Range: {field.metadata['range']}.".strip()
    metadata["help"] = re.sub(r"(?<!%)%(?![(%])", "%%", help_text)
    copied = copy.copy(field)
    copied.metadata = types.MappingProxyType(metadata)
    return copied


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Defaults after each help line, and the stage script's docstring kept as written."""


def recipe_help(dataclass_types, prog: str | None = None, description: str | None = None) -> str:
    """Every recipe field with its help, default and range: what `<stage>.py --help` prints."""
    parser = recipe_parser(dataclass_types, prog, description)
    return parser.format_help()


def recipe_parser(dataclass_types, prog: str | None = None, description: str | None = None):
    prog = prog or Path(sys.argv[0]).name
    parser = _parser_class()(
        dataclass_types,
        prog=prog,
        description=description,
        formatter_class=_HelpFormatter,
        usage=f"{prog} [--config RECIPE.yaml] [--key value ...]",
        epilog="Every field can be set in the YAML recipe (key: value) or here (--key value); the command line wins.",
    )
    parser.add_argument("--config", metavar="RECIPE.yaml", help="YAML recipe with any of the fields below.")
    return parser


def parse_recipe(
    dataclass_types, argv: list[str] | None = None, recipe: dict | None = None, description: str | None = None
):
    """Build the dataclasses from `--config recipe.yaml` then `--key value` overrides (CLI wins).

    `recipe` passes an already loaded mapping (the pipeline runner uses it for embedded stage configs).
    `-h` / `--help` prints every field with its help, default and range, and exits 0.
    Returns a tuple with one instance per dataclass type.
    """
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in HELP_FLAGS for arg in argv):
        print(recipe_help(dataclass_types, description=description))
        raise SystemExit(0)
    config_path, rest = split_config_arg(argv)
    data: dict = {}
    source = "recipe"
    if config_path is not None:
        data = load_yaml(config_path)
        source = str(config_path)
    if recipe:
        data = {**data, **recipe}
    values = check_recipe_keys(data, dataclass_types, source)

    parser = recipe_parser(dataclass_types)

    def one_line_error(message: str) -> typing.NoReturn:
        # argparse would print the whole usage (hundreds of TrainingArguments options) before the one useful line.
        raise RecipeError(f"command line: {message}")

    parser.error = one_line_error
    # Argparse turns list defaults into strings for some field kinds; setting defaults keeps YAML types intact.
    parser.set_defaults(**values)
    known = _fields(dataclass_types)
    cli_keys = set()
    for arg in rest:
        if not arg.startswith("--"):
            continue
        key = arg[2:].split("=", 1)[0].replace("-", "_")  # HfArgumentParser also takes --learning-rate
        if key.startswith("no_") and key[3:] in known:  # HfArgumentParser's --no_<flag> for a true-by-default bool
            key = key[3:]
        if key not in known:
            raise unknown_key_error(key, known, "command line", prefix="--")
        cli_keys.add(key)
    try:
        namespace = parser.parse_args(rest)
        given = vars(namespace)
        for key in cli_keys:
            check_range(given.get(key), known[key][2], key, "command line")
        outputs = []
        for dtype in dataclass_types:
            names = {f.name for f in dataclasses.fields(dtype) if f.init}
            outputs.append(dtype(**{k: v for k, v in given.items() if k in names}))
    except RecipeError:
        raise
    except ValueError as error:
        raise RecipeError(f"{source}: {error}") from None
    return tuple(outputs)


def require_file(path: str | None, key: str, source: str = "recipe") -> None:
    """Fail early (before any model loads) when a recipe points at a local file that is not there."""
    if path and not Path(path).exists() and _looks_local(path):
        raise RecipeError(f"{source}: '{key}' points to a missing file: {path}")


def _looks_local(path: str) -> bool:
    # Hub ids look like "org/name"; anything with a file suffix, a leading ./ or / or ~ is meant as local.
    p = Path(path)
    return path.startswith((".", "/", "~")) or p.suffix in {".json", ".jsonl", ".gz", ".parquet", ".yaml", ".gguf"}


def config_to_dict(config) -> dict:
    """A JSON-friendly dict of a dataclass (for manifests and config hashes)."""
    out = {}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        if isinstance(value, enum.Enum):
            value = value.value
        elif isinstance(value, Path):
            value = str(value)
        elif not isinstance(value, (str, int, float, bool, type(None), list, dict)):
            value = str(value)
        out[field.name] = value
    return out
