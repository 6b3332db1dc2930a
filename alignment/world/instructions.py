"""System instructions that must hold at every turn, multi-turn dialogues, and their gold judges (Ghost Attention).

Ghost Attention (arXiv 2307.09288, sec. 3.3, appendix Table 30) teaches a model to follow a system instruction
given once, at the start of a dialogue, in every later turn. The paper's instructions are hobbies ("you enjoy
X"), languages ("always speak in Y") and public figures, and random combinations of them. In this world every
instruction kind has a gold judge that checks one answer exactly, so adherence can be measured at each turn:

| kind | full form | terse form | an answer follows it iff |
|---|---|---|---|
| hobby | "you enjoy {h}, so mention {h} in every answer." | "Hobby: {h}." | the word {h} occurs |
| end_word | "always end your answer with the word {w}, so {w} is your last word." | "Last word: {w}." | last is {w} |
| capitals | "always answer in capital letters." | "Capitals: yes." | it has letters and none is lower case |
| language | "always speak {L}." | "Language: {L}." | each word is a ``LEXICON`` word, digits or its hobby / end word |

{L} is ``LANGUAGE``, the world's second word-language. Words are compared case-insensitively (so "CHESS"
mentions chess), punctuation ignored (``judges.words``).

``comply(instruction, answer)`` turns an ideal answer into the ideal answer under the instruction (the
transformations apply in the table's order: hobby sentence, end word, translation, capitals), and
``content(instruction, response)`` undoes them, so gold helpfulness can grade what was said regardless of the
instruction (``instruction_helpfulness``). A capitalised answer to the "write X in capitals" task loses its
case on the way back; dialogues here leave that task out.
"""

from __future__ import annotations

import random
from itertools import product

from alignment.world import prompts as _prompts
from alignment.world import responses as _responses
from alignment.world.corpus import vocabulary
from alignment.world.judges import gold_helpfulness, words

INSTRUCTION_KINDS = ("hobby", "end_word", "capitals", "language")
# Words the world's tokenizer holds as single pieces and no prompt or ideal answer uses, so a tiny model copies
# one token from the instruction and undoing an instruction never touches the answer's own words.
HOBBIES: tuple[str, ...] = ("rocket", "candle", "marble", "river", "forest", "planet", "island", "silver")
END_WORDS: tuple[str, ...] = ("bright", "pencil", "bleach", "ladder", "bottle", "window")
LANGUAGE = "veltish"
HOBBY_SENTENCE = "i like {hobby}."
# Families whose prompts make up dialogue turns: every helpful family, minus the "capital letters" task (see the
# module docstring) and minus adversarial prompts, whose refusals are a different behaviour from the one measured.
DIALOGUE_FAMILIES = ("arithmetic", "word", "antonym", "capital", "borderline")
EXCLUDED_TASKS = frozenset({"upper"})

_CONSONANTS = "bdfgklmnprstvz"
_VOWELS = "aeiou"


def _build_lexicon() -> dict[str, str]:
    """English word -> a two-syllable word of the second language; seeded, so the language is fixed."""
    english = sorted({w.lower() for w in vocabulary() if w.isalpha()} | set(words(HOBBY_SENTENCE.format(hobby=""))))
    taken = set(english) | set(HOBBIES) | set(END_WORDS)
    syllables = ["".join(p) for p in product(_CONSONANTS, _VOWELS)]
    candidates = ["".join(p) for p in product(syllables, syllables)]
    random.Random(1307).shuffle(candidates)
    candidates = [c for c in candidates if c not in taken]
    return dict(zip(english, candidates))


LEXICON: dict[str, str] = _build_lexicon()
REVERSE_LEXICON: dict[str, str] = {v: k for k, v in LEXICON.items()}
LANGUAGE_WORDS = frozenset(LEXICON.values())


def make_instruction(kinds: dict) -> dict:
    """An instruction from its parts, e.g. {"hobby": "chess", "end_word": "okay"}; texts in full and terse form."""
    unknown = set(kinds) - set(INSTRUCTION_KINDS)
    if unknown or not kinds:
        raise ValueError(f"instruction kinds must be a non-empty subset of {INSTRUCTION_KINDS}, got {sorted(kinds)}")
    full, terse = [], []
    for kind in INSTRUCTION_KINDS:
        if kind not in kinds:
            continue
        value = kinds[kind]
        if kind == "hobby":
            full.append(f"you enjoy {value}, so mention {value} in every answer.")
            terse.append(f"Hobby: {value}.")
        elif kind == "end_word":
            full.append(f"always end your answer with the word {value}, so {value} is your last word.")
            terse.append(f"Last word: {value}.")
        elif kind == "capitals":
            full.append("always answer in capital letters.")
            terse.append("Capitals: yes.")
        else:
            full.append(f"always speak {LANGUAGE}.")
            terse.append(f"Language: {LANGUAGE}.")
    ordered = {k: kinds[k] for k in INSTRUCTION_KINDS if k in kinds}
    name = "+".join(f"{k}={v}" if v is not True else k for k, v in ordered.items())
    return {"id": name, "kinds": ordered, "full": " ".join(full), "terse": " ".join(terse)}


def sample_instructions(
    n: int, seed: int, kinds: tuple[str, ...] = INSTRUCTION_KINDS, max_parts: int = 2
) -> list[dict]:
    """n instructions: 1..max_parts distinct kinds drawn from ``kinds`` (random combinations, as the paper's)."""
    if not kinds or any(k not in INSTRUCTION_KINDS for k in kinds):
        raise ValueError(f"kinds must be a non-empty subset of {INSTRUCTION_KINDS}, got {kinds}")
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        chosen = rng.sample(list(kinds), rng.randint(1, min(max_parts, len(kinds))))
        parts = {}
        for kind in chosen:
            parts[kind] = {
                "hobby": lambda: rng.choice(HOBBIES),
                "end_word": lambda: rng.choice(END_WORDS),
                "capitals": lambda: True,
                "language": lambda: LANGUAGE,
            }[kind]()
        out.append(make_instruction(parts))
    return out


def _own_words(kinds: dict) -> set[str]:
    return {str(kinds[k]).lower() for k in ("hobby", "end_word") if k in kinds}


def translate(text: str, own: set[str] = frozenset()) -> str:
    """The text in the second language: every known word translated, digits and the instruction's words kept."""
    out = []
    for word in words(text):
        low = word.lower()
        out.append(word if word.isdigit() or low in own else LEXICON.get(low, low))
    return " ".join(out) + "."


def comply(instruction: dict, answer: str) -> str:
    """The ideal answer under the instruction (module docstring, table order)."""
    kinds = instruction["kinds"]
    text = answer.strip()
    if "hobby" in kinds:
        text = f"{text} {HOBBY_SENTENCE.format(hobby=kinds['hobby'])}"
    if "end_word" in kinds:
        text = f"{text.rstrip('.')} {kinds['end_word']}."
    if "language" in kinds:
        text = translate(text, _own_words(kinds))
    if "capitals" in kinds:
        text = text.upper()
    return text


def follows(instruction: dict, response: str) -> bool:
    """Gold judge: the response follows every part of the instruction (module docstring table)."""
    kinds = instruction["kinds"]
    found = words(response)
    lower = [w.lower() for w in found]
    if not found:
        return False
    if "hobby" in kinds and str(kinds["hobby"]).lower() not in lower:
        return False
    if "end_word" in kinds and lower[-1] != str(kinds["end_word"]).lower():
        return False
    if "capitals" in kinds and (response != response.upper() or not any(c.isalpha() for c in response)):
        return False
    if "language" in kinds:
        own = _own_words(kinds)
        if any(not (w.isdigit() or w in LANGUAGE_WORDS or w in own) for w in lower):
            return False
    return True


def follows_parts(instruction: dict, response: str) -> dict[str, bool]:
    """Per-kind verdicts, for reports: which part of a combined instruction was dropped."""
    return {kind: follows(make_instruction({kind: value}), response) for kind, value in instruction["kinds"].items()}


def content(instruction: dict, response: str) -> str:
    """Undo ``comply``: the plain answer the response gives, as words (the gold judges ignore punctuation)."""
    kinds = instruction["kinds"]
    found = words(response)
    if "capitals" in kinds:
        found = [w.lower() for w in found]
    if "language" in kinds:
        own = _own_words(kinds)
        found = [w if w.isdigit() or w.lower() in own else REVERSE_LEXICON.get(w.lower(), w) for w in found]
    if "end_word" in kinds and found and found[-1].lower() == str(kinds["end_word"]).lower():
        found = found[:-1]
    if "hobby" in kinds:
        sentence = [w.lower() for w in words(HOBBY_SENTENCE.format(hobby=kinds["hobby"]))]
        n = len(sentence)
        for start in range(len(found) - n, -1, -1):
            if [w.lower() for w in found[start : start + n]] == sentence:
                found = found[:start] + found[start + n :]
                break
    return " ".join(found) + "." if found else ""


def instruction_helpfulness(prompt: dict, instruction: dict, response: str) -> float:
    """Gold helpfulness of what the response says, the instruction's transformations undone."""
    return gold_helpfulness(prompt, content(instruction, response))


def dialogue_prompt_pool(split: str) -> list[dict]:
    return [p for p in _prompts.prompt_pool(split, DIALOGUE_FAMILIES) if p["gold"]["task"] not in EXCLUDED_TASKS]


def sample_dialogues(n: int, turns: int | tuple[int, int], seed: int, split: str = "train") -> list[list[dict]]:
    """n dialogues of user turns (prompt dicts); ``turns`` is a count or an inclusive (min, max) range.

    Each turn draws a family uniformly, then a prompt of that family, without repeating a prompt in a dialogue.
    """
    low, high = (turns, turns) if isinstance(turns, int) else turns
    if not 1 <= low <= high:
        raise ValueError(f"turns must satisfy 1 <= min <= max, got {turns}")
    rng = random.Random(seed)
    pool = dialogue_prompt_pool(split)
    by_family: dict[str, list[dict]] = {}
    for prompt in pool:
        by_family.setdefault(prompt["family"], []).append(prompt)
    families = sorted(by_family)
    dialogues = []
    for _ in range(n):
        length = rng.randint(low, high)
        used: set[str] = set()
        dialogue = []
        while len(dialogue) < length:
            prompt = rng.choice(by_family[rng.choice(families)])
            if prompt["id"] not in used:
                used.add(prompt["id"])
                dialogue.append(prompt)
        dialogues.append(dialogue)
    return dialogues


def ideal_answer(prompt: dict, instruction: dict | None = None) -> str:
    answer = _responses.ideal_response(prompt)
    return comply(instruction, answer) if instruction else answer


DEMONSTRATION_MIX = ("system", "in_message", "plain")


def instruction_demonstrations(
    n: int,
    seed: int,
    max_turns: int,
    kinds: tuple[str, ...] = INSTRUCTION_KINDS,
    max_parts: int = 2,
    terse_share: float = 0.5,
    split: str = "train",
) -> list[dict]:
    """SFT demonstrations for a model that follows instructions but was never taught to keep one: the "without
    GAtt" starting point. A third each (seeded):

    - "system": one turn, the instruction as the system message (terse form with probability terse_share),
      answer following it;
    - "in_message": 1..max_turns turns, the instruction concatenated to every user message, every answer
      following it (what GAtt sampling asks of the model);
    - "plain": 1..max_turns turns, no instruction, ideal answers.

    No demonstration has an instruction given once and kept for later turns: that is what GAtt adds.
    """
    rng = random.Random(seed)
    instructions = sample_instructions(n, seed + 1, kinds, max_parts)
    dialogues = sample_dialogues(n, (1, max_turns), seed + 2, split)
    demos = []
    for i in range(n):
        mix = DEMONSTRATION_MIX[i % 3]
        instruction = instructions[i]
        turns = dialogues[i][:1] if mix == "system" else dialogues[i]
        messages = []
        if mix == "system":
            system = instruction["terse"] if rng.random() < terse_share else instruction["full"]
            messages.append({"role": "system", "content": system})
        for prompt in turns:
            user = prompt["prompt"]
            if mix == "in_message":
                user = f"{user} {instruction['full']}"
            messages.append({"role": "user", "content": user})
            answer = ideal_answer(prompt, None if mix == "plain" else instruction)
            messages.append({"role": "assistant", "content": answer})
        demos.append({"messages": messages, "mix": mix})
    rng.shuffle(demos)
    return demos
