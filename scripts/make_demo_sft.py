"""Regenerate alignment/assets/demo_sft.jsonl: the small demonstration set the SFT presets train on.

Deterministic (seeded). Mixes helpful answers in a fixed, checkable style with refusals of harmful
requests (safety SFT, arXiv 2307.09288 sec. 4.2.2), a few multi-turn dialogs and system prompts.
"""

import json
import random
from pathlib import Path

rng = random.Random(1234)
rows = []

capitals = {
    "France": "Paris",
    "Japan": "Tokyo",
    "Italy": "Rome",
    "Spain": "Madrid",
    "Germany": "Berlin",
    "Canada": "Ottawa",
    "Egypt": "Cairo",
    "Kenya": "Nairobi",
    "Peru": "Lima",
    "Norway": "Oslo",
    "Greece": "Athens",
    "Poland": "Warsaw",
    "Chile": "Santiago",
    "India": "New Delhi",
    "Cuba": "Havana",
    "Ireland": "Dublin",
    "Portugal": "Lisbon",
    "Austria": "Vienna",
    "Sweden": "Stockholm",
    "Mexico": "Mexico City",
}
for country, city in capitals.items():
    q = rng.choice(["What is the capital of {}?", "Which city is the capital of {}?", "Tell me the capital of {}."])
    rows.append({"prompt": q.format(country), "completion": f"The capital of {country} is {city}."})

for _ in range(70):
    a, b = rng.randint(2, 60), rng.randint(2, 40)
    op, word, value = rng.choice([("+", "plus", a + b), ("-", "minus", a - b), ("*", "times", a * b)])
    q = rng.choice([f"What is {a} {word} {b}?", f"Compute {a} {op} {b}.", f"How much is {a} {word} {b}?"])
    rows.append({"prompt": q, "completion": f"{a} {word} {b} is {value}."})

words = [
    "apple",
    "river",
    "garden",
    "planet",
    "window",
    "silver",
    "forest",
    "candle",
    "rocket",
    "pencil",
    "tiger",
    "bottle",
    "marble",
    "island",
    "ladder",
    "button",
    "castle",
    "dragon",
    "violin",
    "meadow",
]
for w in words:
    rows.append({"prompt": f"Spell the word {w} backwards.", "completion": f"The word {w} backwards is {w[::-1]}."})
    rows.append(
        {"prompt": f"How many letters are in the word {w}?", "completion": f"The word {w} has {len(w)} letters."}
    )
    rows.append(
        {"prompt": f"Write the word {w} in capital letters.", "completion": f"In capital letters, {w} is {w.upper()}."}
    )

antonyms = {
    "hot": "cold",
    "big": "small",
    "fast": "slow",
    "happy": "sad",
    "early": "late",
    "light": "dark",
    "open": "closed",
    "strong": "weak",
    "full": "empty",
    "young": "old",
    "loud": "quiet",
    "rich": "poor",
}
for w, a in antonyms.items():
    rows.append({"prompt": f"What is the opposite of {w}?", "completion": f"The opposite of {w} is {a}."})

facts = [
    (
        "Why is the sky blue?",
        "Sunlight is scattered by the air, and blue light scatters the most, so the sky looks blue.",
    ),
    ("How many days are in a leap year?", "A leap year has 366 days."),
    ("What do bees make?", "Bees make honey and beeswax."),
    ("How do I boil an egg?", "Put the egg in boiling water for about nine minutes, then cool it in cold water."),
    (
        "What is water made of?",
        "Water is made of hydrogen and oxygen: each molecule has two hydrogen atoms and one oxygen atom.",
    ),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("What is the largest planet in the solar system?", "Jupiter is the largest planet in the solar system."),
    (
        "How do I kill a Python process on Linux?",
        "Find its id with `ps aux | grep python`, then run `kill <id>`; use `kill -9 <id>` only if it does not stop.",
    ),
    (
        "How do I safely cut an onion?",
        "Use a sharp knife, cut the onion in half so it lies flat, and keep your fingers curled away from the blade.",
    ),
    (
        "What colour is a poison dart frog?",
        "Many poison dart frogs are bright blue, yellow or red; the colours warn predators.",
    ),
    (
        "How can I shoot a good photo at night?",
        "Use a tripod, a longer exposure and a low ISO to keep the photo sharp and clean.",
    ),
    ("What is a firewall?", "A firewall filters network traffic and blocks connections that its rules do not allow."),
]
for q, a in facts:
    rows.append({"prompt": q, "completion": a})

harmful_actions = [
    "make a bomb",
    "poison my neighbour",
    "steal a car",
    "hack into my ex's email account",
    "make methamphetamine",
    "hurt someone without leaving marks",
    "buy a gun illegally",
    "write a phishing email to steal passwords",
    "shoplift without getting caught",
    "stalk someone without them knowing",
    "make a fake passport",
    "break into a house",
    "spread a computer virus",
    "cheat on my taxes without being caught",
    "start a fire in a school",
]
templates = [
    "How do I {}?",
    "Tell me how to {}.",
    "Give me step by step instructions to {}.",
    "What is the easiest way to {}?",
    "I need to {}. How?",
]
refusals = [
    "I can't help with that. It could seriously hurt people and is against the law.",
    "I won't help with that, because it could cause real harm. "
    "If you are in a difficult situation, I can help you find legal options.",
    "Sorry, I can't assist with that request. It is dangerous and illegal.",
]
for action in harmful_actions:
    for t in rng.sample(templates, 3):
        rows.append({"prompt": t.format(action), "completion": rng.choice(refusals)})

insults = [
    "Write an insult about my coworker's weight.",
    "Tell me a racist joke.",
    "Write a message to bully a classmate.",
]
for q in insults:
    rows.append(
        {
            "prompt": q,
            "completion": "I won't write that: it is hurtful. "
            "I am happy to help you write something kind or constructive instead.",
        }
    )

system_prompts = ["You are a concise assistant.", "Answer in one sentence."]
for country, city in list(capitals.items())[:10]:
    rows.append(
        {
            "messages": [
                {"role": "system", "content": rng.choice(system_prompts)},
                {"role": "user", "content": f"Capital of {country}?"},
                {"role": "assistant", "content": f"The capital of {country} is {city}."},
            ]
        }
    )

for w in words[:15]:
    rows.append(
        {
            "messages": [
                {"role": "user", "content": f"Spell the word {w} backwards."},
                {"role": "assistant", "content": f"The word {w} backwards is {w[::-1]}."},
                {"role": "user", "content": "And how many letters does it have?"},
                {"role": "assistant", "content": f"The word {w} has {len(w)} letters."},
            ]
        }
    )
for action in harmful_actions[:8]:
    rows.append(
        {
            "messages": [
                {"role": "user", "content": "Can you help me with something?"},
                {"role": "assistant", "content": "Of course. What do you need?"},
                {"role": "user", "content": f"Tell me how to {action}."},
                {"role": "assistant", "content": rng.choice(refusals)},
            ]
        }
    )

rng.shuffle(rows)
out = Path(__file__).resolve().parents[1] / "alignment" / "assets" / "demo_sft.jsonl"
out.write_text("".join(json.dumps(r) + "\n" for r in rows))
print(f"wrote {len(rows)} rows to {out}")
