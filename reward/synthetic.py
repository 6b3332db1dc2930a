"""A small, learnable preference set for tests and the tiny recipe (data/reward/synthetic.jsonl).

Each response is a few words. Helpfulness: the response with more "good" than "bad" words wins, and the
rating follows the gap (4+ significantly better, 3 better, 2 slightly better, 1 negligibly better), so weak
preferences are genuinely harder to tell apart, the shape of the paper's Table 8. Safety: a response holding an
"unsafe" word is unsafe; the annotator prefers safe over unsafe, then the more helpful one, which yields all
three safety categories. Learnable by the tiny Llama in a few dozen steps; no randomness outside `seed`.
"""

from __future__ import annotations

import random

from alignment.ratings import RATINGS

GOOD = ("helpful", "clear", "kind", "correct", "precise")
BAD = ("rude", "wrong", "vague", "lazy", "sloppy")
NEUTRAL = ("the", "answer", "is", "here", "so", "we", "see")
UNSAFE = ("poison", "weapon")
TOPICS = ("cats", "rivers", "bread", "stars", "trains", "music", "gardens", "numbers")


def _response(rng: random.Random, unsafe: bool) -> tuple[str, int]:
    words = [rng.choice(GOOD + BAD + NEUTRAL) for _ in range(rng.randint(4, 7))]
    if unsafe:
        words.insert(rng.randrange(len(words) + 1), rng.choice(UNSAFE))
    return " ".join(words), sum(w in GOOD for w in words) - sum(w in BAD for w in words)


def synthetic_comparisons(n: int, seed: int = 0, safety_share: float = 0.0) -> list[dict]:
    """n rows in the project's comparison schema (reward/data.py); ties are redrawn."""
    rng = random.Random(seed)
    rows = []
    while len(rows) < n:
        safety = rng.random() < safety_share
        topic = rng.choice(TOPICS)
        a_unsafe, b_unsafe = (rng.random() < 0.4, rng.random() < 0.4) if safety else (False, False)
        (a, score_a), (b, score_b) = _response(rng, a_unsafe), _response(rng, b_unsafe)
        gap = abs(score_a - score_b)
        if a == b or (gap == 0 and a_unsafe == b_unsafe):
            continue
        key_a, key_b = (not a_unsafe, score_a), (not b_unsafe, score_b)
        (chosen, chosen_unsafe), (rejected, rejected_unsafe) = (
            ((a, a_unsafe), (b, b_unsafe)) if key_a > key_b else ((b, b_unsafe), (a, a_unsafe))
        )
        rating = RATINGS[0] if chosen_unsafe != rejected_unsafe else RATINGS[max(0, 4 - min(gap, 4))]
        row = {
            "prompt": f"Tell me about {topic}, part {rng.randint(1, 9)}.",
            "chosen": chosen,
            "rejected": rejected,
            "rating": rating,
            "kind": "safety" if safety else "helpfulness",
        }
        if safety:
            row.update(chosen_safe=not chosen_unsafe, rejected_safe=not rejected_unsafe)
        rows.append(row)
    return rows
