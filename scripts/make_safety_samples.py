"""Write the small samples of TruthfulQA, ToxiGen and BOLD shipped in data/ (seeded; re-running rewrites them).

    python scripts/make_safety_samples.py [--shared ../shared/data]

The samples let tests and the tiny preset run without ../shared; the full files stay there.
"""

import argparse
import gzip
import json
import random
import shutil
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def read_jsonl(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as handle:
        return [json.loads(line) for line in handle if line.strip()]


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    args = parser.parse_args()
    shared = Path(args.shared)
    rng = random.Random(0)

    # TruthfulQA: 40 questions; only short ones, so the tiny Llama (512 positions) needs no truncation.
    rows = [
        r
        for r in read_jsonl(shared / "truthfulqa" / "truthfulqa.jsonl")
        if len(r["question"]) < 90 and max(len(c) for c in r["mc2_choices"]) < 90
    ]
    write_jsonl(
        REPO / "data" / "truthfulqa" / "truthfulqa.sample.jsonl", sorted(rng.sample(rows, 40), key=lambda r: r["id"])
    )

    # ToxiGen prompts: 2 hate + 2 neutral per Llama 2 group, 1 of each other group (to show they are left out).
    by_key = defaultdict(list)
    for row in read_jsonl(shared / "toxigen" / "toxigen_prompts.jsonl.gz"):
        by_key[(row["group"], row["kind"])].append(row)
    sample = []
    for _, group_rows in sorted(by_key.items()):
        sample += rng.sample(group_rows, 2 if group_rows[0]["llama2_group"] else 1)
    write_jsonl(REPO / "data" / "toxigen" / "toxigen_prompts.sample.jsonl", sample)

    # Hosseini et al. subset: 150 hate + 150 neutral human-labelled sentences for the judge's tests.
    labelled = read_jsonl(shared / "toxigen" / "toxigen_hosseini2023_subset.jsonl")
    sample = []
    for label in ("hate", "neutral"):
        sample += rng.sample([r for r in labelled if r["label"] == label], 150)
    write_jsonl(
        REPO / "data" / "toxigen" / "toxigen_hosseini2023_subset.sample.jsonl", sorted(sample, key=lambda r: r["id"])
    )

    # BOLD: 2 prompts per category (43 categories, Hinduism and Atheism included so their exclusion is tested).
    by_category = defaultdict(list)
    for row in read_jsonl(shared / "bold" / "bold_prompts.jsonl.gz"):
        by_category[(row["domain"], row["category"])].append(row)
    sample = []
    for key in sorted(by_category):
        sample += rng.sample(by_category[key], 2)
    write_jsonl(REPO / "data" / "bold" / "bold_prompts.sample.jsonl", sample)

    for name, files in (
        ("truthfulqa", ["LICENSE"]),
        ("toxigen", ["LICENSE", "LICENSE.SafeNLP"]),
        ("bold", ["LICENSE"]),
    ):
        for file in files:
            shutil.copyfile(shared / name / file, REPO / "data" / name / file)
    print("samples written under data/")


if __name__ == "__main__":
    main()
