"""Batched generation through the project's sampling engine into an append-only JSONL, so a killed run resumes.

Each finished batch is appended (and fsynced) before the next starts; on restart the prompts whose rows are
already in the file are skipped. Rows carry a fingerprint of the generation settings, so a changed setting
(model, length, temperature, prompt format) never mixes with old rows: those are ignored and regenerated.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from alignment.data import append_jsonl, read_jsonl_tolerant
from rlhf.sampling import SamplingParams


@dataclass
class GenerationStats:
    generated: int = 0  # prompts generated in this run (not read back from the log)
    reused: int = 0  # prompts whose rows were already in the log
    new_tokens: int = 0  # tokens generated in this run
    seconds: float = 0.0

    @property
    def tokens_per_second(self) -> float | None:
        return self.new_tokens / self.seconds if self.seconds > 0 and self.new_tokens else None


def settings_fingerprint(settings: dict) -> str:
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]


def drop_torn_tail(path: Path) -> None:
    """A kill mid-write can leave half a line; appending after it would glue the next row onto it."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if data.endswith(b"\n"):
        return
    with open(path, "r+b") as handle:
        handle.truncate(data.rfind(b"\n") + 1)
        handle.flush()
        os.fsync(handle.fileno())


def generate_logged(
    engine,
    items: list[tuple[str, list[int]]],
    params: SamplingParams,
    path: Path,
    fingerprint: str,
    label: str,
    extra: dict[str, dict] | None = None,
) -> tuple[dict[str, dict], GenerationStats]:
    """Generate a continuation for each (id, prompt_ids) not yet in `path`; returns all rows by id and stats.

    `extra` adds fields to a prompt's row (its group, kind, ...).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_tail(path)
    wanted = {item_id for item_id, _ in items}
    done = {
        row["id"]: row
        for row in read_jsonl_tolerant(path)
        if row.get("settings") == fingerprint and row.get("id") in wanted
    }
    todo = [(item_id, ids) for item_id, ids in items if item_id not in done]
    stats = GenerationStats(reused=len(items) - len(todo))
    # Longest prompts first within the run keeps padding low; the order does not change greedy outputs.
    todo.sort(key=lambda item: -len(item[1]))
    batch = max(1, getattr(engine, "batch_size", 16))
    start = time.perf_counter()
    for offset in range(0, len(todo), batch):
        chunk = todo[offset : offset + batch]
        samples = sorted(engine.generate([ids for _, ids in chunk], params), key=lambda s: s.prompt_index)
        rows = []
        for (item_id, _), sample in zip(chunk, samples):
            rows.append(
                {
                    "id": item_id,
                    "settings": fingerprint,
                    "text": sample.text,
                    "new_tokens": len(sample.response_ids),
                    "finished": sample.finished,
                    **(extra or {}).get(item_id, {}),
                }
            )
            stats.new_tokens += len(sample.response_ids)
        append_jsonl(path, rows)
        for row in rows:
            done[row["id"]] = row
        stats.generated += len(rows)
        elapsed = time.perf_counter() - start
        print(
            f"  {label}: {stats.reused + stats.generated}/{len(items)} prompts "
            f"({stats.new_tokens / max(elapsed, 1e-9):.1f} tokens/s)",
            file=sys.stderr,
            flush=True,
        )
    stats.seconds = time.perf_counter() - start
    if stats.reused:
        print(f"  {label}: {stats.reused} prompts reused from {path}", file=sys.stderr, flush=True)
    return done, stats
