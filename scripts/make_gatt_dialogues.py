"""Write the multi-turn GAtt dialogues of real questions shipped in data/gatt-truthfulqa (seeded; re-running rewrites).

    python scripts/make_gatt_dialogues.py [--truthfulqa ../shared/data/truthfulqa/truthfulqa.jsonl]

Each dialogue chains TruthfulQA questions (no question twice in a dialogue) under one checkable system
instruction, "Begin every answer with the word 'W'.", with a terse form ("First word: W.") and the check
{"starts_with": W} (``sft.gatt.text_follows``). The questions are split by question before any dialogue is drawn,
so no evaluation question appears in a training dialogue. The words are ones SmolLM2-135M-Instruct can open an
answer with when the instruction is in the user message (at least 5 of 16 questions at K = 4, T = 0.7, measured);
"Indeed" was dropped (0 of 16).
"""

import argparse
import json
import random
from pathlib import Path

from alignment.data import load_rows

REPO = Path(__file__).resolve().parents[1]
OUT = REPO / "data" / "gatt-truthfulqa"
WORDS = ("Ahoy", "Hello", "Alas", "Splendid", "Howdy")


def dialogue(questions: list[str], turns: int, word: str, rng: random.Random, dialogue_id: str) -> dict:
    return {
        "id": dialogue_id,
        "system": f"Begin every answer with the word '{word}'.",
        "terse": f"First word: {word}.",
        "check": {"starts_with": word},
        "messages": [{"role": "user", "content": q} for q in rng.sample(questions, turns)],
    }


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    shared = REPO.parent / "shared" / "data"
    parser.add_argument("--truthfulqa", default=str(shared / "truthfulqa" / "truthfulqa.jsonl"))
    parser.add_argument("--eval_share", type=float, default=0.4, help="Share of questions held out for evaluation.")
    parser.add_argument("--train_dialogues", type=int, default=256)
    parser.add_argument("--min_turns", type=int, default=1)
    parser.add_argument("--max_turns", type=int, default=12)
    parser.add_argument("--eval_dialogues", type=int, default=100)
    parser.add_argument("--eval_turns", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    questions = sorted({row["question"].strip() for _, _, row in load_rows(args.truthfulqa)})
    rng = random.Random(args.seed)
    rng.shuffle(questions)
    cut = int(len(questions) * args.eval_share)
    held_out, train = questions[:cut], questions[cut:]
    train_rows = [
        dialogue(train, rng.randint(args.min_turns, args.max_turns), WORDS[i % len(WORDS)], rng, f"train-{i}")
        for i in range(args.train_dialogues)
    ]
    eval_rows = [
        dialogue(held_out, args.eval_turns, WORDS[i % len(WORDS)], rng, f"eval-{i}")
        for i in range(args.eval_dialogues)
    ]
    write_jsonl(OUT / "train.jsonl", train_rows)
    write_jsonl(OUT / "eval.jsonl", eval_rows)
    print(f"{len(train)} training and {len(held_out)} held-out questions; {OUT}/train.jsonl, {OUT}/eval.jsonl")


if __name__ == "__main__":
    main()
