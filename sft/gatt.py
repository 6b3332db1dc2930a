"""Ghost Attention (GAtt): fine-tuning data that makes a system instruction hold over a whole dialogue.

arXiv 2307.09288, sec. 3.3 (and appendix Table 30). Given multi-turn dialogues and an instruction:

1. the instruction is concatenated to every user message and the answers are sampled, turn by turn, with the
   latest model (``rlhf.sampling``), so every answer follows it; an optional checker (the world's gold judge)
   drops dialogues whose answers do not;
2. the training row keeps the instruction only in the first turn, as the llama2 system message, and puts zero
   loss on every token of the earlier turns, their assistant messages included: only the last answer and its
   EOS are trained (``"loss": False`` on the earlier assistant messages, see ``alignment.chat.encode_dialog``);
3. half of the time (seeded) the system message is the instruction's terse form ("Hobby: chess. Last word:
   okay.").

The rows then go through the SFT stage's trainer (``sft.trainer.run_sft``). Sampling appends one JSON line per
finished dialogue to an append-only log, so a killed run resumes where it stopped.

Real models have no gold judge, so user dialogues may carry a checkable instruction (``check``): the answer's
first or last word, or a word it must contain (``text_follows``). Small real models also loop, answer in one
word, talk about the instruction instead of the question, or repeat their previous answer when an instruction is
appended to every question; ``well_formed`` rejects those answers from the data and counts them in the
evaluation (a cheap proxy, not a judge of correctness).
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from tqdm.auto import tqdm

from alignment.chat import encode_prompt
from alignment.config import DataError
from alignment.data import append_jsonl, load_rows, read_jsonl_tolerant
from alignment.world.instructions import follows, make_instruction, sample_dialogues, sample_instructions
from alignment.world.judges import lower_words, words

# A checkable instruction for real text: {"starts_with": w}, {"ends_with": w} or {"contains": w}, one word each.
TEXT_CHECKS = ("starts_with", "ends_with", "contains")
# An answer shorter than this, or repeating a word trigram this often, is a loop or a one-word reply.
MIN_ANSWER_WORDS = 5
MAX_TRIGRAM_REPEATS = 2
# Share of an answer's word trigrams found in one earlier answer above which it repeats that answer.
MAX_SHARED_TRIGRAMS = 0.5
# Words that say nothing about a question's topic (for the on-topic check: a shared word of 4+ letters).
FUNCTION_WORDS = frozenset(
    "what when where which whom whose that this these those there their they them then than with from have does "
    "will would could should about your into some many much more most only also just like were been being because "
    "after before over under very such each other ever every still happen happens thing things people person "
    "true really know said says".split()
)


@dataclass
class GattDialogue:
    """One dialogue to sample: user turns, the instruction (full and terse text) and, if known, its world kinds."""

    id: str
    users: list[str]
    instruction: str
    terse: str | None = None
    kinds: dict | None = None  # world instruction kinds: the gold checker applies
    prompt_ids: list[str] | None = None  # world prompt ids of the turns, for helpfulness reports
    check: dict | None = None  # a checkable instruction for real text (TEXT_CHECKS)


def check_error(check) -> str | None:
    """Why ``check`` is not a valid checkable instruction, or None."""
    if not isinstance(check, dict) or len(check) != 1:
        return f"must be one of {{{', '.join(TEXT_CHECKS)}: word}}"
    ((kind, word),) = check.items()
    if kind not in TEXT_CHECKS:
        return f"unknown check '{kind}' (use {', '.join(TEXT_CHECKS)})"
    if not isinstance(word, str) or words(word) != [word.strip()]:
        return f"'{kind}' must be a single word, got {word!r}"
    return None


def text_follows(check: dict, text: str) -> bool:
    """Whether an answer follows a checkable instruction; words compare case-insensitively, punctuation ignored."""
    ((kind, word),) = check.items()
    found = lower_words(text)
    if not found:
        return False
    if kind == "starts_with":
        return found[0] == word.lower()
    if kind == "ends_with":
        return found[-1] == word.lower()
    return word.lower() in found


def _trigrams(text: str) -> list[tuple[str, str, str]]:
    found = lower_words(text)
    return list(zip(found, found[1:], found[2:]))


def _topic_words(text: str) -> set[str]:
    return {w.lower().rstrip("s") for w in words(text) if len(w) >= 4 and w.lower() not in FUNCTION_WORDS}


def well_formed(answer: str, question: str, earlier: list[str] = (), ignore: str = "") -> bool:
    """Not ``degenerate``, on topic (shares a content word of 4+ letters with the question, ``ignore`` aside,
    e.g. the instruction's own word) and not a repeat of an earlier answer of the dialogue (more than half of its
    word trigrams in one of them)."""
    if degenerate(answer):
        return False
    if not (_topic_words(answer) - _topic_words(ignore)) & _topic_words(question):
        return False
    grams = _trigrams(answer)
    for previous in earlier:
        seen = set(_trigrams(previous))
        if sum(g in seen for g in grams) > MAX_SHARED_TRIGRAMS * len(grams):
            return False
    return True


def check_word(check: dict | None) -> str:
    return next(iter(check.values())) if check else ""


def degenerate(text: str) -> bool:
    """A one-word reply or a loop: fewer than MIN_ANSWER_WORDS words, or a word trigram repeated more than
    MAX_TRIGRAM_REPEATS times."""
    if len(words(text)) < MIN_ANSWER_WORDS:
        return True
    return Counter(_trigrams(text)).most_common(1)[0][1] > MAX_TRIGRAM_REPEATS


def with_instruction(user: str, instruction: str) -> str:
    """A user message with the instruction concatenated (sec. 3.3: "to all the user messages")."""
    return f"{user.strip()} {instruction.strip()}"


def sampling_messages(dialogue: GattDialogue, answers: list[str]) -> list[dict]:
    """The prompt for the next answer: every user message carries the instruction, earlier answers as sampled."""
    messages = []
    for i, user in enumerate(dialogue.users[: len(answers) + 1]):
        messages.append({"role": "user", "content": with_instruction(user, dialogue.instruction)})
        if i < len(answers):
            messages.append({"role": "assistant", "content": answers[i]})
    return messages


def training_row(system: str, users: list[str], answers: list[str]) -> list[dict]:
    """The GAtt training dialogue: the instruction only as the first turn's system message, and no loss on
    any earlier turn (their answers are context, ``"loss": False``); the last answer is trained."""
    if len(users) != len(answers) or not users:
        raise ValueError(f"a GAtt row needs as many answers as user turns (>= 1), got {len(users)} and {len(answers)}")
    messages = [{"role": "system", "content": system}]
    for i, (user, answer) in enumerate(zip(users, answers)):
        messages.append({"role": "user", "content": user})
        message = {"role": "assistant", "content": answer}
        if i < len(users) - 1:
            message["loss"] = False
        messages.append(message)
    return messages


def choose_system(dialogue: GattDialogue, rng: random.Random, terse_share: float) -> tuple[str, bool]:
    """The system message of the training row: the terse form with probability terse_share (when there is one)."""
    if dialogue.terse and rng.random() < terse_share:
        return dialogue.terse, True
    return dialogue.instruction, False


def world_dialogues(
    n: int, turns: tuple[int, int], seed: int, kinds: tuple[str, ...], max_parts: int, split: str = "train"
) -> list[GattDialogue]:
    """n dialogues of the embedded world, each with a random instruction (seeded)."""
    instructions = sample_instructions(n, seed, kinds, max_parts)
    out = []
    for i, (prompts, instruction) in enumerate(zip(sample_dialogues(n, turns, seed + 1, split), instructions)):
        out.append(
            GattDialogue(
                id=f"world-{seed}-{i}",
                users=[p["prompt"] for p in prompts],
                instruction=instruction["full"],
                terse=instruction["terse"],
                kinds=instruction["kinds"],
                prompt_ids=[p["id"] for p in prompts],
            )
        )
    return out


def load_user_dialogues(path: str) -> list[GattDialogue]:
    """User JSONL rows ``{"system": instruction, "messages": [...], "terse"?: str, "check"?: {...}, "id"?: str}``.

    Only the user turns are used (answers are sampled again with the instruction); a row's dialogue is all of
    its user turns, so the last one is the trained turn.
    """
    out = []
    for source, number, row in load_rows(path):
        where = f"{source}:{number}"
        system = row.get("system")
        if not isinstance(system, str) or not system.strip():
            raise DataError(f"{where}: field 'system' must be a non-empty string (the instruction)")
        messages = row.get("messages")
        if not isinstance(messages, list) or not messages:
            raise DataError(f"{where}: field 'messages' must be a non-empty list of messages")
        users = []
        for i, message in enumerate(messages):
            if not isinstance(message, dict) or message.get("role") not in ("user", "assistant"):
                raise DataError(f"{where}: field 'messages[{i}].role' must be 'user' or 'assistant'")
            if not isinstance(message.get("content"), str) or not message["content"].strip():
                raise DataError(f"{where}: field 'messages[{i}].content' must be a non-empty string")
            if message["role"] == "user":
                users.append(message["content"])
        if not users:
            raise DataError(f"{where}: field 'messages' holds no user message")
        terse = row.get("terse")
        if terse is not None and not isinstance(terse, str):
            raise DataError(f"{where}: field 'terse' must be a string")
        check = row.get("check")
        if check is not None and (problem := check_error(check)):
            raise DataError(f"{where}: field 'check' {problem}")
        out.append(
            GattDialogue(
                id=str(row.get("id", f"{Path(path).name}:{number}")),
                users=users,
                instruction=system.strip(),
                terse=terse,
                check=check,
            )
        )
    return out


def _checker(dialogue: GattDialogue):
    if dialogue.kinds is not None:
        instruction = make_instruction(dialogue.kinds)
        return lambda text: follows(instruction, text)
    if dialogue.check is not None:
        return lambda text: text_follows(dialogue.check, text)
    return None


def build_gatt_data(
    engine,
    tokenizer,
    dialogues: list[GattDialogue],
    out_path: str | Path,
    *,
    params,
    chat_format: str = "llama2",
    terse_share: float = 0.5,
    use_checker: bool = True,
    chunk_size: int = 64,
    seed: int = 0,
    well_formed_only: bool = False,
    keep_passed_turns: bool = False,
    stop_after_chunks: int | None = None,
) -> list[dict]:
    """Sample every dialogue not yet in ``out_path`` and append its row; return all rows (kept and dropped).

    Each chunk of ``chunk_size`` dialogues is sampled turn by turn (one batched ``engine.generate`` call per
    turn, K = params.num_samples samples per prompt); of a prompt's K samples the first that passes the
    checker (and, with ``well_formed_only``, is ``well_formed``) is kept (the first sample without a checker).
    A dialogue with a turn that no sample passes is logged with ``"kept": false`` and no messages; with
    ``keep_passed_turns`` it is kept, cut after its last passed turn (a real small model seldom passes every one
    of 20 turns, and the cut row is still a valid GAtt row). Seeds depend only on the chunk and turn, so a resumed run
    samples what an uninterrupted one would. ``stop_after_chunks`` stops early (tests of resumption).
    """
    out_path = Path(out_path)
    done = {row["id"] for row in read_jsonl_tolerant(out_path)}
    ids = [d.id for d in dialogues]
    if len(set(ids)) != len(ids):
        raise DataError(f"GAtt dialogues have duplicate ids (e.g. {next(i for i in ids if ids.count(i) > 1)!r})")
    chunks_done = 0
    starts = range(0, len(dialogues), chunk_size)
    for chunk_index, start in enumerate(tqdm(starts, desc="GAtt sampling", unit="chunk")):
        chunk = [d for d in dialogues[start : start + chunk_size] if d.id not in done]
        if not chunk:
            continue
        answers: list[list[str]] = [[] for _ in chunk]
        alive = [True] * len(chunk)
        checkers = [_checker(d) if use_checker else None for d in chunk]
        for turn in range(max(len(d.users) for d in chunk)):
            active = [i for i, d in enumerate(chunk) if alive[i] and turn < len(d.users)]
            if not active:
                break
            prompts = [encode_prompt(tokenizer, sampling_messages(chunk[i], answers[i]), chat_format) for i in active]
            turn_params = replace(params, seed=seed * 1_000_003 + chunk_index * 1000 + turn)
            by_prompt: dict[int, list] = {}
            for sample in engine.generate(prompts, turn_params):
                by_prompt.setdefault(sample.prompt_index, []).append(sample)
            for position, i in enumerate(active):
                samples = sorted(by_prompt.get(position, []), key=lambda s: s.sample_index)
                check = checkers[i]
                dialogue = chunk[i]
                good = [
                    s
                    for s in samples
                    if s.text
                    and (check is None or check(s.text))
                    and (
                        not well_formed_only
                        or well_formed(s.text, dialogue.users[turn], answers[i], check_word(dialogue.check))
                    )
                ]
                if good:
                    answers[i].append(good[0].text)
                else:
                    alive[i] = False
        rows = []
        for i, dialogue in enumerate(chunk):
            rng = random.Random(f"{seed}:{dialogue.id}")
            kept = alive[i] or (keep_passed_turns and bool(answers[i]))
            row = {
                "id": dialogue.id,
                "kept": kept,
                "turns": len(answers[i]) if kept else len(dialogue.users),
                "instruction": dialogue.instruction,
            }
            if dialogue.kinds is not None:
                row["kinds"] = dialogue.kinds
            if not alive[i]:
                row["failed_turn"] = len(answers[i]) + 1
            if kept:
                system, terse = choose_system(dialogue, rng, terse_share)
                users = dialogue.users[: len(answers[i])]
                row.update(terse=terse, messages=training_row(system, users, answers[i]))
            rows.append(row)
        append_jsonl(out_path, rows)
        chunks_done += 1
        if stop_after_chunks is not None and chunks_done >= stop_after_chunks:
            break
    return read_jsonl_tolerant(out_path)


def training_dialogues(rows: list[dict]) -> list[list[dict]]:
    """The kept rows' dialogues, ready for ``sft.trainer.run_sft(dialogs=...)``."""
    return [row["messages"] for row in rows if row.get("kept")]


def load_training_dialogues(paths: list[str]) -> list[list[dict]]:
    """The kept rows of GAtt logs (``build_gatt_data`` output), e.g. to join an RLHF iteration's fine-tune."""
    dialogs = []
    for path in paths:
        if not Path(path).is_file():
            raise DataError(f"GAtt data not found: {path}")
        dialogs += training_dialogues(read_jsonl_tolerant(path))
    return dialogs
