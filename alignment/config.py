"""Recipes: a YAML file read into typed dataclasses, with `--key value` overrides on the command line.

A stage script calls `parse_recipe((ScriptArgs, SFTConfig), argv)`. The YAML is checked against the
dataclasses' fields before anything heavy happens, so a typo or a wrong type fails in one line that names
the key, instead of surfacing later as a confusing error deep inside a trainer.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import sys
import types
import typing
from pathlib import Path
from typing import Any, Literal, Union

import yaml


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
        return Union[tuple(args)], optional
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
    if origin in (list, typing.List):
        if not isinstance(value, list):
            wrong("a list")
        (item_type,) = typing.get_args(tp) or (Any,)
        return [coerce_value(v, item_type, f"{key}[{i}]", source) for i, v in enumerate(value)]
    if origin in (dict, typing.Dict) or tp is dict:
        if not isinstance(value, dict):
            wrong("a mapping")
        return value
    return value


def _fields(dataclass_types) -> dict[str, tuple[type, dataclasses.Field]]:
    known: dict[str, tuple[type, dataclasses.Field]] = {}
    for dc in dataclass_types:
        hints = typing.get_type_hints(dc)
        for field in dataclasses.fields(dc):
            if field.init:
                known.setdefault(field.name, (hints.get(field.name, Any), field))
    return known


def check_recipe_keys(data: dict, dataclass_types, source: str) -> dict:
    """Reject unknown keys (with the closest known key) and wrong types; return coerced values."""
    known = _fields(dataclass_types)
    checked = {}
    for key, value in data.items():
        if key not in known:
            close = difflib.get_close_matches(str(key), list(known), n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise RecipeError(f"{source}: unknown key '{key}'{hint}")
        checked[key] = coerce_value(value, known[key][0], key, source)
    return checked


def _split_config_arg(argv: list[str]) -> tuple[str | None, list[str]]:
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


def parse_recipe(dataclass_types, argv: list[str] | None = None, recipe: dict | None = None):
    """Build the dataclasses from `--config recipe.yaml` then `--key value` overrides (CLI wins).

    `recipe` passes an already loaded mapping (the pipeline runner uses it for embedded stage configs).
    Returns a tuple with one instance per dataclass type.
    """
    from transformers import HfArgumentParser

    argv = list(sys.argv[1:] if argv is None else argv)
    config_path, rest = _split_config_arg(argv)
    data: dict = {}
    source = "recipe"
    if config_path is not None:
        data = load_yaml(config_path)
        source = str(config_path)
    if recipe:
        data = {**data, **recipe}
    values = check_recipe_keys(data, dataclass_types, source)

    parser = HfArgumentParser(dataclass_types)

    def one_line_error(message: str) -> typing.NoReturn:
        # argparse would print the whole usage (hundreds of TrainingArguments options) before the one useful line.
        raise RecipeError(f"command line: {message}")

    parser.error = one_line_error
    # Argparse turns list defaults into strings for some field kinds; setting defaults keeps YAML types intact.
    parser.set_defaults(**values)
    unknown_cli = [a[2:].split("=", 1)[0] for a in rest if a.startswith("--")]
    known = _fields(dataclass_types)
    for key in unknown_cli:
        if key not in known:
            close = difflib.get_close_matches(key, list(known), n=1)
            hint = f" (did you mean '--{close[0]}'?)" if close else ""
            raise RecipeError(f"command line: unknown option '--{key}'{hint}")
    try:
        return parser.parse_args_into_dataclasses(args=rest, look_for_args_file=False)
    except RecipeError:
        raise
    except ValueError as error:
        raise RecipeError(f"{source}: {error}") from None


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
