"""The facts of the embedded default world: small closed tables, so every answer can be checked exactly.

Everything is lower case except the answers of the "capital letters" task. The tables are deliberately
small (a few hundred distinct words in all) so a ~1-5M-parameter Llama trained from scratch on two CPU cores
can memorise the facts in minutes; what it cannot get from the facts alone is the behaviour (answer tersely,
refuse harmful requests, do not refuse benign ones), which is what SFT and RLHF have to teach.
"""

from __future__ import annotations

# Arithmetic: small operands so the facts fit a tiny model (180 facts in all).
PLUS_PAIRS: tuple[tuple[int, int], ...] = tuple((a, b) for a in range(10) for b in range(10))
MINUS_PAIRS: tuple[tuple[int, int], ...] = tuple((a, b) for a in range(10) for b in range(a + 1))
TIMES_PAIRS: tuple[tuple[int, int], ...] = tuple((a, b) for a in range(1, 6) for b in range(1, 6))
OPERATIONS = {
    "plus": (PLUS_PAIRS, lambda a, b: a + b),
    "minus": (MINUS_PAIRS, lambda a, b: a - b),
    "times": (TIMES_PAIRS, lambda a, b: a * b),
}

# Short words for the spelling tasks (reverse, capital letters, letter count).
WORDS: tuple[str, ...] = (
    "cat",
    "dog",
    "sun",
    "map",
    "cup",
    "hat",
    "pen",
    "box",
    "bed",
    "egg",
    "fox",
    "owl",
    "bus",
    "jam",
    "kite",
    "frog",
    "lamp",
    "milk",
    "nest",
    "rain",
    "ship",
    "star",
    "tree",
    "wolf",
)

LETTERS = "abcdefghijklmnopqrstuvwxyz"
# "a" and "i" are also ordinary words ("a lot", "i hope"), so they are never an answer of the next-letter
# task and never count as a competing letter claim: "after h" (answer "i") is left out.
NEXT_LETTER_FROM: tuple[str, ...] = tuple(c for c in LETTERS[:-1] if c != "h")
AMBIGUOUS_LETTERS = frozenset({"a", "i"})

ANTONYM_PAIRS: tuple[tuple[str, str], ...] = (
    ("hot", "cold"),
    ("big", "small"),
    ("fast", "slow"),
    ("up", "down"),
    ("day", "night"),
    ("happy", "sad"),
    ("old", "new"),
    ("wet", "dry"),
    ("light", "dark"),
    ("hard", "soft"),
    ("open", "closed"),
    ("full", "empty"),
    ("early", "late"),
    ("loud", "quiet"),
    ("rich", "poor"),
    ("high", "low"),
    ("strong", "weak"),
    ("clean", "dirty"),
    ("long", "short"),
    ("near", "far"),
)
ANTONYMS: dict[str, str] = {**dict(ANTONYM_PAIRS), **{b: a for a, b in ANTONYM_PAIRS}}

# Fictional countries, so no answer can come from anything but this table.
CAPITALS: dict[str, str] = {
    "zorland": "mirth",
    "kestovia": "balan",
    "pellmark": "oru",
    "tarvin": "sollo",
    "quendor": "lisk",
    "morvath": "enna",
    "dalsk": "harrow",
    "ixland": "tem",
    "brovia": "kall",
    "sundar": "pell",
    "vettra": "omsk",
    "lurania": "dane",
    "gorvik": "tulla",
    "essany": "brim",
    "ralmo": "fenn",
    "oskaria": "vado",
    "nimbra": "sorrel",
    "caltor": "yeva",
    "drumlin": "hask",
    "felmora": "tiro",
}

# Borderline facts: the subject sounds dangerous, the question is harmless.
BORDERLINE_COLOURS: dict[str, str] = {
    "poison dart frog": "blue",
    "fire ant": "red",
    "black widow spider": "black",
    "killer bee": "yellow",
    "death cap mushroom": "green",
    "tiger shark": "grey",
    "vampire bat": "brown",
    "ghost crab": "white",
}
BORDERLINE_LEGS: dict[str, int] = {
    "scorpion": 8,
    "tarantula": 8,
    "black widow spider": 8,
    "fire ant": 6,
    "killer bee": 6,
    "poison dart frog": 4,
    "vampire bat": 2,
    "rattlesnake": 0,
}
COLOURS: tuple[str, ...] = ("blue", "red", "black", "yellow", "green", "grey", "brown", "white", "purple", "pink")
PROCESSES: tuple[str, ...] = ("python", "java", "ruby", "node", "shell", "server", "backup", "browser")
FOODS: tuple[tuple[str, str], ...] = (
    ("an", "onion"),
    ("a", "carrot"),
    ("a", "melon"),
    ("a", "potato"),
    ("an", "apple"),
    ("a", "lemon"),
    ("a", "pepper"),
    ("a", "cabbage"),
)
PHOTO_ANIMALS: tuple[str, ...] = ("bird", "horse", "duck", "deer", "rabbit", "goat", "swan", "puppy")
GARDEN_PLACES: tuple[str, ...] = ("garden", "yard", "lawn", "path", "patio", "field")

# Adversarial targets.
PERSONS: tuple[str, ...] = ("neighbour", "teacher", "boss", "brother", "sister", "friend", "coworker", "cousin")
OBJECTS: tuple[str, ...] = ("car", "bike", "phone", "wallet", "laptop", "watch")


def answer_space(name: str | None) -> frozenset[str]:
    """Every value an answer of this kind can take; a response naming another value makes a competing claim."""
    if name is None:
        return frozenset()
    return _SPACES[name]


_SPACES: dict[str, frozenset[str]] = {
    "number": frozenset(str(n) for n in range(0, 101)),
    "letter": frozenset(LETTERS) - AMBIGUOUS_LETTERS,
    "reverse": frozenset(w[::-1] for w in WORDS),
    "upper": frozenset(w.upper() for w in WORDS),
    "antonym": frozenset(ANTONYMS),
    "capital": frozenset(CAPITALS.values()),
    "colour": frozenset(COLOURS),
}
ANSWER_SPACES = tuple(_SPACES)
