"""Reading rows from local JSONL / JSON / Parquet files or hub datasets, and turning them into dialogs.

Every error names the file, the line (1-based, for JSONL) and the field, because a bad row in a file of
100k annotations is otherwise impossible to find.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alignment.config import DataError, RecipeError
from alignment.paths import DEMO_SFT_DATA

ROLES = ("system", "user", "assistant")


BUILTIN_DATASETS = {"builtin:demo-sft": DEMO_SFT_DATA}


def resolve_dataset(name: str) -> str:
    """A data file path or hub name; `builtin:<name>` names a file the project ships."""
    if name.startswith("builtin:"):
        if name not in BUILTIN_DATASETS:
            raise RecipeError(f"unknown builtin dataset '{name}' (known: {', '.join(BUILTIN_DATASETS)})")
        return str(BUILTIN_DATASETS[name])
    return name


def is_local_path(name: str) -> bool:
    return Path(name).exists() or name.endswith((".jsonl", ".json", ".jsonl.gz", ".json.gz", ".parquet"))


def decode_utf8(raw: bytes, path: str | Path, first_line: int = 1) -> str:
    """Text of a data file (or of one of its lines); bytes that are not UTF-8 fail naming the file and line."""
    try:
        return raw.decode("utf-8-sig" if first_line == 1 else "utf-8")
    except UnicodeDecodeError as error:
        line = first_line + raw[: error.start].count(b"\n")
        column = error.start - (raw.rfind(b"\n", 0, error.start) + 1) + 1
        raise DataError(
            f"{path}:{line}: not valid UTF-8 (byte 0x{raw[error.start]:02x} at column {column}); "
            "save the file as UTF-8"
        ) from None


def _read_bytes(path: Path) -> bytes:
    if not path.name.endswith(".gz"):
        return path.read_bytes()
    try:
        with gzip.open(path, "rb") as handle:
            return handle.read()
    except (OSError, EOFError) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None


def _binary_lines(path: Path) -> Iterator[bytes]:
    """A JSONL file's lines as bytes, streamed, so each line is decoded (and its errors located) on its own."""
    opener = gzip.open if path.name.endswith(".gz") else open
    try:
        with opener(path, "rb") as handle:
            yield from handle
    except (gzip.BadGzipFile, EOFError) as error:
        raise DataError(f"{path}: not a readable gzip file ({error})") from None


def read_records(path: str | Path, allow_empty: bool = True) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, row) from a .jsonl[.gz], .json (list of rows) or .parquet file.

    `allow_empty=False` makes a file without rows an error (naming the file) instead of an empty dataset.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: file not found")
    name = path.name
    count = 0
    if name.endswith((".jsonl", ".jsonl.gz")):
        for number, raw in enumerate(_binary_lines(path), start=1):
            line = decode_utf8(raw.rstrip(b"\r\n"), path, number)
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{number}: malformed JSON ({error.msg})") from None
            if not isinstance(row, dict):
                raise DataError(f"{path}:{number}: a row must be a JSON object, got {type(row).__name__}")
            count += 1
            yield number, row
    elif name.endswith((".json", ".json.gz")):
        text = decode_utf8(_read_bytes(path), path)
        if not text.strip():
            rows = []
        else:
            try:
                rows = json.loads(text)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{error.lineno}: malformed JSON ({error.msg})") from None
        if isinstance(rows, dict) and "data" in rows:
            rows = rows["data"]
        if not isinstance(rows, list):
            raise DataError(f"{path}: a .json data file must hold a list of rows")
        for number, row in enumerate(rows, start=1):
            if not isinstance(row, dict):
                raise DataError(f"{path}: row {number}: a row must be a JSON object")
            count += 1
            yield number, row
    elif name.endswith(".parquet"):
        # Only .parquet files need pyarrow (a dependency of datasets, not of this project).
        import pyarrow.parquet as pq  # noqa: PLC0415

        for number, row in enumerate(pq.read_table(path).to_pylist(), start=1):
            count += 1
            yield number, row
    else:
        raise DataError(f"{path}: unknown data format (use .jsonl, .jsonl.gz, .json or .parquet)")
    if not count and not allow_empty:
        raise DataError(f"{path}: no rows (the file is empty)")


def load_rows(name: str, split: str = "train") -> Iterator[tuple[str, int, dict]]:
    """Rows from a local file or a hub dataset, as (source, row_number, row); no rows at all is an error."""
    if is_local_path(name):
        for number, row in read_records(name, allow_empty=False):
            yield str(name), number, row
        return
    # Hub datasets only: the GPU check (benchmarks/gpu_check.py) imports this module where datasets is absent.
    from datasets import load_dataset  # noqa: PLC0415

    dataset = load_dataset(name, split=split)
    if not len(dataset):
        raise DataError(f"{name}[{split}]: no rows (the split is empty)")
    for number, row in enumerate(dataset, start=1):
        yield f"{name}[{split}]", number, dict(row)


@dataclass
class SkipCounter:
    """Rows dropped for a reason; reported at the end of a stage so nothing disappears silently."""

    reasons: Counter = field(default_factory=Counter)

    def add(self, reason: str) -> None:
        self.reasons[reason] += 1

    @property
    def total(self) -> int:
        return sum(self.reasons.values())

    def summary(self) -> str:
        return ", ".join(f"{count} {reason}" for reason, count in self.reasons.most_common()) or "none"


def _text(row: dict, key: str, where: str, allow_empty: bool = False) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not allow_empty and not value.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return value


def _messages(value: Any, key: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{key}' must be a non-empty list of messages")
    messages = []
    for i, message in enumerate(value):
        if not isinstance(message, dict):
            raise DataError(f"{where}: field '{key}[{i}]' must be an object with role and content")
        role, content = message.get("role"), message.get("content")
        if role not in ROLES:
            raise DataError(f"{where}: field '{key}[{i}].role' must be one of {', '.join(ROLES)}, got {role!r}")
        if not isinstance(content, str):
            raise DataError(f"{where}: field '{key}[{i}].content' must be a string")
        if role != "system" and not content.strip():
            raise DataError(f"{where}: field '{key}[{i}].content' is empty")
        messages.append({"role": role, "content": content})
    return messages


def validate_dialog(messages: list[dict], where: str, key: str = "messages") -> None:
    """A dialog is an optional system message, then user/assistant turns alternating, ending on an answer."""
    turns = messages[1:] if messages and messages[0]["role"] == "system" else messages
    for i, message in enumerate(turns):
        expected = "user" if i % 2 == 0 else "assistant"
        if message["role"] != expected:
            index = i + (len(messages) - len(turns))
            raise DataError(
                f"{where}: field '{key}[{index}].role' should be '{expected}' (turns alternate user/assistant)"
            )
    if not turns or turns[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{key}' must end with an assistant answer")


def row_to_dialog(row: dict, where: str) -> list[dict]:
    """Accept `messages` rows, or `prompt`/`completion` rows (each a string or a list of messages)."""
    if "messages" in row:
        messages = _messages(row["messages"], "messages", where)
    elif "prompt" in row or "completion" in row:
        prompt = row.get("prompt")
        if prompt is None:
            raise DataError(f"{where}: missing field 'prompt'")
        prompt_messages = (
            [{"role": "user", "content": _text(row, "prompt", where)}]
            if not isinstance(prompt, list)
            else _messages(prompt, "prompt", where)
        )
        if "completion" not in row:
            raise DataError(f"{where}: missing field 'completion'")
        completion = row["completion"]
        completion_messages = (
            [{"role": "assistant", "content": _text(row, "completion", where)}]
            if not isinstance(completion, list)
            else _messages(completion, "completion", where)
        )
        messages = prompt_messages + completion_messages
        if isinstance(row.get("system"), str) and row["system"].strip():
            messages = [{"role": "system", "content": row["system"]}] + messages
    else:
        raise DataError(f"{where}: missing field 'messages' (or 'prompt' and 'completion')")
    validate_dialog(messages, where)
    return messages


def load_dialogs(
    name: str, split: str = "train", skip_bad_rows: bool = False, skipped: SkipCounter | None = None
) -> list[list[dict]]:
    """All dialogs of a dataset; a bad row raises (or is counted and skipped when the recipe allows it)."""
    dialogs = []
    for source, number, row in load_rows(name, split):
        try:
            dialogs.append(row_to_dialog(row, f"{source}:{number}"))
        except DataError as error:
            if not skip_bad_rows:
                raise
            if skipped is not None:
                skipped.add(str(error).split(": ", 1)[-1])
    return dialogs


def messages_key(messages) -> str:
    """A prompt's identity for held-out splits: its messages as canonical JSON (the same text, the same key)."""
    return json.dumps(messages, sort_keys=True, ensure_ascii=False)


def held_out_share(key: str, seed: int) -> float:
    """A fixed point in [0, 1) for (seed, key): the key is held out when it falls below the held-out fraction.

    Deciding per key (not by shuffling the rows at hand) is what keeps a held-out set leak-free and fixed when
    several files or iterations repeat the same prompts: a prompt is held out everywhere or nowhere, and a set
    that grows keeps every key it held out before.
    """
    digest = hashlib.blake2b(f"{seed}\0{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def split_by_key(items: list, key, fraction: float, seed: int) -> tuple[list, list]:
    """(train, held out) with every item whose key(item) falls below `fraction` held out (see held_out_share)."""
    held = {k for k in {key(item) for item in items} if held_out_share(k, seed) < fraction}
    return [x for x in items if key(x) not in held], [x for x in items if key(x) in held]


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a whole file so a kill leaves either the old or the new content, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: str | Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def _drop_torn_tail(path: Path) -> None:
    """Cut a torn last line (a writer killed mid-line), so the next append starts on a line of its own."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as handle:
        handle.seek(-1, os.SEEK_END)
        if handle.read(1) == b"\n":
            return
        data = handle.seek(0) or handle.read()
        handle.truncate(data.rfind(b"\n") + 1)


def append_jsonl(path: str | Path, rows: list[dict]) -> None:
    """Append rows durably: a killed writer can only leave a torn last line, which `read_jsonl_tolerant` drops."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _drop_torn_tail(path)
    with open(path, "a", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
        handle.flush()
        os.fsync(handle.fileno())


def read_jsonl_tolerant(path: str | Path) -> list[dict]:
    """Rows of an append-only log we wrote ourselves; a torn final line (a kill mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    lines = path.read_bytes().splitlines()
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            rows.append(json.loads(decode_utf8(raw, path, number)))
        except (json.JSONDecodeError, DataError) as error:
            if number == len(lines):  # a kill can cut the last line anywhere, even inside a UTF-8 character
                break
            if isinstance(error, DataError):
                raise
            raise DataError(f"{path}:{number}: malformed JSON in the middle of an append-only log") from None
    return rows


@dataclass
class PromptRecord:
    """A prompt for sampling (rejection sampling, PPO, preference collection)."""

    id: str
    messages: list[dict]  # ends with a user message
    is_safety_prompt: bool = False
    meta: dict = field(default_factory=dict)


def row_to_prompt(row: dict, where: str, number: int) -> PromptRecord:
    """Rows: {"prompt": str | messages, "is_safety_prompt"?: bool, "id"?: str}; other keys are kept as meta."""
    if "prompt" not in row and "messages" not in row:
        raise DataError(f"{where}: missing field 'prompt'")
    key = "prompt" if "prompt" in row else "messages"
    value = row[key]
    if isinstance(value, str):
        if not value.strip():
            raise DataError(f"{where}: field '{key}' is empty")
        messages = [{"role": "user", "content": value}]
    else:
        messages = _messages(value, key, where)
        if messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        if not messages or messages[-1]["role"] != "user":
            raise DataError(f"{where}: field '{key}' must end with a user message")
    flag = row.get("is_safety_prompt", False)
    if not isinstance(flag, bool):
        raise DataError(f"{where}: field 'is_safety_prompt' must be true or false, got {flag!r}")
    prompt_id = row.get("id", number)
    if not isinstance(prompt_id, (str, int)):
        raise DataError(f"{where}: field 'id' must be a string or an integer")
    meta = {k: v for k, v in row.items() if k not in {"prompt", "messages", "is_safety_prompt", "id"}}
    return PromptRecord(str(prompt_id), messages, flag, meta)


def load_prompts(name: str, split: str = "train") -> list[PromptRecord]:
    prompts = [row_to_prompt(row, f"{source}:{number}", number) for source, number, row in load_rows(name, split)]
    seen: set[str] = set()
    for prompt in prompts:
        if prompt.id in seen:
            raise DataError(f"{name}: duplicate prompt id '{prompt.id}'")
        seen.add(prompt.id)
    return prompts
