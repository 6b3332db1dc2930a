"""Preference comparisons: the data model, three loaders, the held-out split and the paper's data mix.

A comparison (sec. 3.2.1) is a prompt, a chosen and a rejected response, the annotator's strength of
preference (`alignment.ratings.RATINGS`) and the guideline it was judged under (`kind`: helpfulness or
safety). A safety comparison also carries each response's safety label, hence one of three categories:
both safe (47% in the paper), chosen safe & rejected unsafe (18%), both unsafe (35%). The fourth case,
chosen unsafe & rejected safe, is dropped at load time and counted, as the paper drops it.

Formats (`load_comparisons(..., format=...)`):

- "llama2-align", the project's own JSONL (what `alignment.world.annotate` and a labelling tool write)::

    {"prompt": "text" | [{"role": "user", "content": ...}, ...],   # messages end with a user turn
     "chosen": "answer", "rejected": "answer",
     "rating": "significantly_better" | "better" | "slightly_better" | "negligibly_better"  (any spelling
               `normalize_rating` accepts, or 0..3),
     "kind": "helpfulness" | "safety",
     "chosen_safe": true, "rejected_safe": false}                  # required when kind is safety
  Other keys (prompt_id, gold_gap, ...) are ignored.

- "hh-rlhf", Anthropic HH-RLHF rows ``{"chosen": transcript, "rejected": transcript}``: the two transcripts
  share every turn but the last answer; the shared turns become the prompt. HH-RLHF publishes no strength of
  preference and no per-response safety label: every pair gets the loader's ``rating`` (default "better",
  the middle of the scale; with a margin table that means m = 2/3 (small) or 2 (large), so choose
  ``margin: none`` or another rating when that is not wanted) and no safety labels. The kind is taken from
  the file name ("harmless" -> safety, "helpful" -> helpfulness) unless given.

- "pku-saferlhf", PKU-SafeRLHF rows ``{"prompt", "response_0", "response_1", "is_response_0_safe",
  "is_response_1_safe", "better_response_id", "safer_response_id"}``: each row gives one helpfulness
  comparison (better vs other) and one safety comparison (safer vs other, with both safety labels). Ratings:
  the loader's ``rating`` (default "better"), as the dataset has no strength of preference.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from alignment.config import DataError, RecipeError
from alignment.data import SkipCounter, messages_key, read_records, row_to_prompt, split_by_key
from alignment.ratings import normalize_rating

KINDS = ("helpfulness", "safety")
FORMATS = ("llama2-align", "hh-rlhf", "pku-saferlhf")
# The paper's three safety labels of a comparison (sec. 3.2.1).
BOTH_SAFE, CHOSEN_SAFE_ONLY, BOTH_UNSAFE = "both_safe", "chosen_safe_rejected_unsafe", "both_unsafe"
SAFETY_CATEGORIES = (BOTH_SAFE, CHOSEN_SAFE_ONLY, BOTH_UNSAFE)
DROPPED_UNSAFE_CHOSEN = "chosen unsafe & rejected safe (dropped, sec. 3.2.1)"
DROPPED_IDENTICAL = "chosen and rejected responses identical"
DEFAULT_UNLABELLED_RATING = "better"


@dataclass
class Comparison:
    prompt: list[dict]  # messages, ending with the user turn both responses answer
    chosen: str
    rejected: str
    rating: str  # one of alignment.ratings.RATINGS
    kind: str  # "helpfulness" or "safety"
    chosen_safe: bool | None = None
    rejected_safe: bool | None = None
    source: str = ""  # file:line, for error messages and traceability
    pool: str = ""  # mixing pool (defaults to kind); see mix_comparisons

    @property
    def safety_category(self) -> str | None:
        if self.chosen_safe is None or self.rejected_safe is None:
            return None
        if self.chosen_safe:
            return BOTH_SAFE if self.rejected_safe else CHOSEN_SAFE_ONLY
        return BOTH_UNSAFE  # chosen unsafe & rejected safe never gets here: see _finish

    def prompt_key(self) -> str:
        return messages_key(self.prompt)

    def to_row(self) -> dict:
        """The project's own schema (round-trips through load_comparisons)."""
        return {
            "prompt": self.prompt,
            "chosen": self.chosen,
            "rejected": self.rejected,
            "rating": self.rating,
            "kind": self.kind,
            "chosen_safe": self.chosen_safe,
            "rejected_safe": self.rejected_safe,
        }


class DroppedPair(Exception):
    """A well-formed row the method leaves out; counted under `reason`, never an error."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _rating(value, where: str, key: str = "rating") -> str:
    try:
        return normalize_rating(value)
    except ValueError as error:
        raise DataError(f"{where}: field '{key}': {error}") from None


def _kind(value, where: str) -> str:
    if value not in KINDS:
        raise DataError(f"{where}: field 'kind' must be one of {', '.join(KINDS)}, got {value!r}")
    return value


def _answer(row: dict, key: str, where: str) -> str:
    if key not in row:
        raise DataError(f"{where}: missing field '{key}'")
    value = row[key]
    if not isinstance(value, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(value).__name__}")
    if not value.strip():
        raise DataError(f"{where}: field '{key}' is empty")
    return value


def _flag(row: dict, key: str, where: str, required: bool) -> bool | None:
    value = row.get(key)
    if value is None:
        if required:
            raise DataError(f"{where}: missing field '{key}' (a safety comparison labels each response safe or not)")
        return None
    if not isinstance(value, bool):
        raise DataError(f"{where}: field '{key}' must be true or false, got {value!r}")
    return value


def _finish(comparison: Comparison) -> Comparison:
    if comparison.chosen.strip() == comparison.rejected.strip():
        raise DroppedPair(DROPPED_IDENTICAL)
    if comparison.chosen_safe is False and comparison.rejected_safe is True:
        raise DroppedPair(DROPPED_UNSAFE_CHOSEN)
    comparison.pool = comparison.pool or comparison.kind
    return comparison


def row_to_comparison(row: dict, where: str, kind: str | None = None, rating: str | None = None) -> Comparison:
    """One row of the project's own schema; `kind` / `rating` fill in fields a file leaves out."""
    prompt = row_to_prompt(row, where, 0).messages if "prompt" in row else None
    if prompt is None:
        raise DataError(f"{where}: missing field 'prompt'")
    if isinstance(row["prompt"], list) and row["prompt"][-1].get("role") == "assistant":
        raise DataError(f"{where}: field 'prompt' must end with the user turn the responses answer")
    chosen, rejected = _answer(row, "chosen", where), _answer(row, "rejected", where)
    if "rating" in row:
        rating_label = _rating(row["rating"], where)
    elif rating is not None:
        rating_label = normalize_rating(rating)
    else:
        raise DataError(f"{where}: missing field 'rating'")
    if "kind" in row:
        kind_label = _kind(row["kind"], where)
    elif kind is not None:
        kind_label = kind
    else:
        raise DataError(f"{where}: missing field 'kind'")
    safety = kind_label == "safety"
    return _finish(
        Comparison(
            prompt,
            chosen,
            rejected,
            rating_label,
            kind_label,
            _flag(row, "chosen_safe", where, safety),
            _flag(row, "rejected_safe", where, safety),
            source=where,
        )
    )


_HH_TURN = re.compile(r"\n\n(Human|Assistant):")


def split_hh_transcript(text: str, where: str, key: str) -> list[dict]:
    """ "\\n\\nHuman: ...\\n\\nAssistant: ..." -> messages; the transcript must alternate and end on an answer."""
    parts = _HH_TURN.split(text)
    if parts[0].strip():
        raise DataError(f"{where}: field '{key}' must start with '\\n\\nHuman:'")
    messages = []
    for speaker, content in zip(parts[1::2], parts[2::2]):
        role = "user" if speaker == "Human" else "assistant"
        expected = "user" if len(messages) % 2 == 0 else "assistant"
        if role != expected:
            raise DataError(
                f"{where}: field '{key}': turn {len(messages) + 1} is {speaker}, expected the other speaker"
            )
        messages.append({"role": role, "content": content.strip()})
    if not messages or messages[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{key}' must end with an Assistant turn")
    return messages


def hh_row_to_comparison(row: dict, where: str, kind: str, rating: str) -> Comparison:
    chosen = split_hh_transcript(_answer(row, "chosen", where), where, "chosen")
    rejected = split_hh_transcript(_answer(row, "rejected", where), where, "rejected")
    if chosen[:-1] != rejected[:-1]:
        raise DataError(f"{where}: fields 'chosen' and 'rejected' differ before the final Assistant turn")
    if any(not m["content"] for m in chosen[:-1]):
        raise DataError(f"{where}: field 'chosen' has an empty turn before the final answer")
    if not chosen[-1]["content"] or not rejected[-1]["content"]:
        raise DroppedPair("empty final answer")
    return _finish(Comparison(chosen[:-1], chosen[-1]["content"], rejected[-1]["content"], rating, kind, source=where))


def pku_row_to_comparisons(row: dict, where: str, rating: str) -> list[Comparison]:
    """One helpfulness and one safety comparison per PKU-SafeRLHF row (either may be dropped)."""
    prompt = [{"role": "user", "content": _answer(row, "prompt", where)}]
    responses = [_answer(row, "response_0", where), _answer(row, "response_1", where)]
    safe = [_flag(row, "is_response_0_safe", where, True), _flag(row, "is_response_1_safe", where, True)]
    ids = {}
    for key in ("better_response_id", "safer_response_id"):
        value = row.get(key)
        if value is None:
            raise DataError(f"{where}: missing field '{key}'")
        if isinstance(value, bool) or value not in (0, 1):
            raise DataError(f"{where}: field '{key}' must be 0 or 1, got {value!r}")
        ids[key] = value
    out: list[Comparison | DroppedPair] = []
    for kind, key in (("helpfulness", "better_response_id"), ("safety", "safer_response_id")):
        c, r = ids[key], 1 - ids[key]
        labels = (safe[c], safe[r]) if kind == "safety" else (None, None)
        try:
            out.append(
                _finish(
                    Comparison(prompt, responses[c], responses[r], rating, kind, *labels, source=f"{where}[{kind}]")
                )
            )
        except DroppedPair as dropped:
            out.append(dropped)
    return out


def _hh_kind_from_name(path: str) -> str:
    name = Path(path).name.lower()
    if "harmless" in name:
        return "safety"
    if "helpful" in name:
        return "helpfulness"
    raise RecipeError(f"{path}: cannot tell helpfulness from safety by the file name; give the source a 'kind'")


def load_comparisons(
    path: str | Path,
    format: str = "llama2-align",
    *,
    kind: str | None = None,
    rating: str | None = None,
    pool: str | None = None,
    skip_bad_rows: bool = False,
    skipped: SkipCounter | None = None,
    limit: int | None = None,
) -> list[Comparison]:
    """Comparisons of one file. Dropped pairs (sec. 3.2.1) are always counted in `skipped`; malformed rows
    raise DataError (file:line: field) unless `skip_bad_rows`, which counts them instead."""
    if format not in FORMATS:
        raise RecipeError(f"unknown comparison format '{format}' (use one of {', '.join(FORMATS)})")
    if kind is not None and kind not in KINDS:
        raise RecipeError(f"unknown comparison kind '{kind}' (use one of {', '.join(KINDS)})")
    if rating is not None:
        try:
            rating = normalize_rating(rating)
        except ValueError as error:
            raise RecipeError(str(error)) from None
    skipped = skipped if skipped is not None else SkipCounter()
    path = str(path)
    if format == "hh-rlhf":
        kind = kind or _hh_kind_from_name(path)
    comparisons: list[Comparison] = []
    for number, row in read_records(path, allow_empty=False):
        where = f"{path}:{number}"
        try:
            if format == "llama2-align":
                results = [row_to_comparison(row, where, kind, rating)]
            elif format == "hh-rlhf":
                results = [hh_row_to_comparison(row, where, kind, rating or DEFAULT_UNLABELLED_RATING)]
            else:
                results = pku_row_to_comparisons(row, where, rating or DEFAULT_UNLABELLED_RATING)
        except DroppedPair as dropped:
            results = [dropped]
        except DataError as error:
            if not skip_bad_rows:
                raise
            skipped.add(f"bad row ({str(error).split(': ', 1)[-1]})")
            continue
        for result in results:
            if isinstance(result, DroppedPair):
                skipped.add(result.reason)
            else:
                result.pool = pool or result.pool
                comparisons.append(result)
        if limit is not None and len(comparisons) >= limit:
            break
    return comparisons[:limit] if limit is not None else comparisons


def split_comparisons(
    comparisons: list[Comparison], eval_fraction: float, seed: int
) -> tuple[list[Comparison], list[Comparison]]:
    """Seeded train/held-out split by prompt key (alignment.data.split_by_key).

    The decision depends on (seed, prompt) alone, so splitting each comparison file on its own gives the same
    held-out prompts as splitting their union, and later iterations keep every prompt held out before.
    """
    if not 0.0 <= eval_fraction < 1.0:
        raise RecipeError("eval_fraction must be in [0, 1)")
    return split_by_key(comparisons, Comparison.prompt_key, eval_fraction, seed)


@dataclass
class MixReport:
    """How many comparisons each mixture entry asked for, had and got."""

    wanted: dict[str, int] = field(default_factory=dict)
    available: dict[str, int] = field(default_factory=dict)
    taken: dict[str, int] = field(default_factory=dict)
    unused_pools: list[str] = field(default_factory=list)


def mix_comparisons(
    comparisons: list[Comparison], ratios: dict[str, float], anchor: str, seed: int
) -> tuple[list[Comparison], MixReport]:
    """The paper's reward-model data mix (sec. 3.2.2), as shares of the training set.

    `ratios` maps a pool name, or several joined by "+" (sampled as one union), to its share of the mix.
    The `anchor` entry is used in full; every other entry gets round(N_anchor * share / anchor_share)
    comparisons drawn without replacement (seeded), or all it has if fewer. Examples:
    R_h: {"helpfulness": 0.5, "safety+open_source": 0.5}, anchor "helpfulness" (all helpfulness data plus an
    equal amount from safety and open-source data); R_s: {"safety": 0.9, "helpfulness": 0.1}, anchor "safety".
    """
    if anchor not in ratios:
        raise RecipeError(f"mixture anchor '{anchor}' is not a key of the mixture ratios {sorted(ratios)}")
    for key, share in ratios.items():
        if not isinstance(share, (int, float)) or isinstance(share, bool) or share < 0:
            raise RecipeError(f"mixture ratio for '{key}' must be a non-negative number, got {share!r}")
    if ratios[anchor] <= 0:
        raise RecipeError(f"mixture anchor '{anchor}' needs a positive share")
    entries = {key: key.split("+") for key in ratios}
    seen: dict[str, str] = {}
    for key, pools in entries.items():
        for pool in pools:
            if pool in seen:
                raise RecipeError(f"pool '{pool}' appears in mixture entries '{seen[pool]}' and '{key}'")
            seen[pool] = key
    by_entry: dict[str, list[Comparison]] = {key: [] for key in entries}
    unused: set[str] = set()
    for comparison in comparisons:
        key = seen.get(comparison.pool)
        if key is None:
            unused.add(comparison.pool)
        else:
            by_entry[key].append(comparison)
    report = MixReport(unused_pools=sorted(unused))
    n_anchor = len(by_entry[anchor])
    rng = random.Random(seed)
    mixed: list[Comparison] = []
    for key in entries:  # recipe order, so a given seed always draws the same pairs
        pool = by_entry[key]
        want = n_anchor if key == anchor else int(round(n_anchor * ratios[key] / ratios[anchor]))
        taken = pool if want >= len(pool) else rng.sample(pool, want)
        report.wanted[key], report.available[key], report.taken[key] = want, len(pool), len(taken)
        mixed.extend(taken)
    rng.shuffle(mixed)
    return mixed, report
