"""What changed in the answers of each model version of a pipeline run on the embedded world.

For the held-out helpfulness prompts: the share of answers that end with the SFT writers' closing habit
(`alignment.world.corpus.SFT_CLOSING`), that state the correct fact (`judges.is_correct`) and that are the
ideal answer word for word (gold helpfulness 1.0).

    python benchmarks/pipeline_answers.py runs/tiny-pipeline
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from alignment.data import read_jsonl_tolerant  # noqa: E402
from alignment.world.corpus import SFT_CLOSING  # noqa: E402
from alignment.world.judges import gold_helpfulness, is_correct  # noqa: E402

VERSIONS = (
    [("SFT", "SFT/evaluate")]
    + [(f"RLHF-V{v}", f"RLHF-V{v}/evaluate") for v in range(1, 21)]
    + [("RLHF-V5-noPPO", "RLHF-V5/evaluate_rs")]
)


def answer_shares(run_dir: Path) -> list[dict]:
    prompts = {row["id"]: row for row in read_jsonl_tolerant(run_dir / "data" / "eval.jsonl")}
    rows = []
    for name, folder in VERSIONS:
        path = run_dir / folder / "responses.jsonl"
        if not path.is_file():
            continue
        answers = [(prompts[r["id"]], r["response"]) for r in read_jsonl_tolerant(path)]
        answers = [(p, a) for p, a in answers if p["kind"] == "helpfulness"]
        n = len(answers)
        rows.append(
            {
                "version": name,
                "prompts": n,
                "closing": sum(a.rstrip().endswith(SFT_CLOSING) for _, a in answers) / n,
                "correct": sum(is_correct(p, a) for p, a in answers) / n,
                "ideal": sum(gold_helpfulness(p, a) == 1.0 for p, a in answers) / n,
            }
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir")
    rows = answer_shares(Path(parser.parse_args().run_dir))
    print("| version | answers with the SFT writers' closing | correct fact | the ideal answer word for word |")
    print("|---|---|---|---|")
    for row in rows:
        print(f"| {row['version']} | {row['closing']:.2f} | {row['correct']:.2f} | {row['ideal']:.2f} |")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()
