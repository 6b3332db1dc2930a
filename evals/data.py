"""Reading the benchmark files: every row is checked for the fields the stage uses (file:line and field on error)."""

from __future__ import annotations

import random
from collections import defaultdict

from alignment.config import DataError
from alignment.data import read_records

TRUTHFULQA_FIELDS = (
    "question",
    "correct_answers",
    "incorrect_answers",
    "mc1_choices",
    "mc1_labels",
    "mc2_choices",
    "mc2_labels",
)
TOXIGEN_FIELDS = ("id", "group", "kind", "prompt", "llama2_group")
JUDGE_FIELDS = ("text", "label")
BOLD_FIELDS = ("id", "domain", "category", "prompt")


def read_checked(path: str, fields: tuple[str, ...]) -> list[dict]:
    rows = []
    for number, row in read_records(path):
        for name in fields:
            if name not in row or row[name] is None:
                raise DataError(f"{path}:{number}: missing field '{name}'")
        rows.append({**row, "_line": number})
    return rows


def seeded_sample(rows: list, k: int, seed: int, key: str) -> list:
    """k rows drawn with a seed that also names the group, so one group's sample does not move another's."""
    if k <= 0 or k >= len(rows):
        return list(rows)
    return random.Random(f"{seed}/{key}").sample(rows, k)


def load_truthfulqa(path: str, questions: int, seed: int) -> list[dict]:
    rows = read_checked(path, TRUTHFULQA_FIELDS)
    for row in rows:
        for kind in ("mc1", "mc2"):
            if len(row[f"{kind}_choices"]) != len(row[f"{kind}_labels"]) or not row[f"{kind}_choices"]:
                raise DataError(f"{path}:{row['_line']}: '{kind}_choices' and '{kind}_labels' differ in length")
        if sum(row["mc1_labels"]) != 1:
            raise DataError(f"{path}:{row['_line']}: 'mc1_labels' must mark exactly one true choice")
    sample = seeded_sample(rows, questions, seed, "truthfulqa")
    return sorted(sample, key=lambda r: r["_line"])


def load_toxigen_prompts(path: str, per_group: int, seed: int) -> list[dict]:
    """The paper's 13 groups (`llama2_group`), per_group prompts each: half hate, half neutral demonstrations."""
    rows = [r for r in read_checked(path, TOXIGEN_FIELDS) if r["llama2_group"]]
    by_group: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for row in rows:
        by_group[row["group"]][row["kind"]].append(row)
    sample = []
    for group in sorted(by_group):
        kinds = sorted(by_group[group])
        for index, kind in enumerate(kinds):
            # hate gets the odd one, so per_group=1 still shows the harder case.
            if per_group <= 0:
                sample += by_group[group][kind]
                continue
            share = per_group // len(kinds) + (1 if index < per_group % len(kinds) else 0)
            if share:
                sample += seeded_sample(by_group[group][kind], share, seed, f"toxigen/{group}/{kind}")
    return sorted(sample, key=lambda r: r["_line"])


def load_bold_prompts(path: str, per_group: int, seed: int, exclude: list[str]) -> list[dict]:
    excluded = {name.lower() for name in exclude}
    rows = [r for r in read_checked(path, BOLD_FIELDS) if r["category"].lower() not in excluded]
    by_group: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        by_group[(row["domain"], row["category"])].append(row)
    sample = []
    for key in sorted(by_group):
        sample += seeded_sample(by_group[key], per_group, seed, f"bold/{key[0]}/{key[1]}")
    return sorted(sample, key=lambda r: r["_line"])
