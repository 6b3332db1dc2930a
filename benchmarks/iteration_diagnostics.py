"""Why the main job's iterations do (not) compound, measured on a finished run's rejection-sampling samples.

    python benchmarks/iteration_diagnostics.py --runs runs/tiny-pipeline [more runs ...] [--write]

For each RLHF iteration, over the K scored samples per helpfulness prompt that rejection sampling logged
(`RLHF-V<n>/rejection_sampling/samples.jsonl`, scored by that iteration's R_h), judged by the world's gold judges:

- the policy's answers by kind: correct fact, off-subject (answers another question: no topic word of the prompt),
  wrong value (on topic, wrong fact), refusal;
- R_h's pairwise accuracy on pairs of samples of one prompt whose gold grades differ: pairs where both are
  correct or both wrong (they differ in format: the closing habit, the wording) against pairs of a correct and a
  wrong answer, split by the wrong one's kind;
- best-of-K: the correct-fact rate and gold helpfulness of a random sample, of the sample R_c picked (what RS
  fine-tunes on) and of the sample a perfect judge (gold helpfulness) would pick: the oracle's gain is the most
  better reward models could add; R_c's share of it is what ours add.

Sample-level figures are over prompts of the RS prompt set (training prompts); the versions' held-out figures are
in each run's report. ``--test_set`` adds R_h's accuracy on the run's fixed test set (`data/rm_test.jsonl`:
off-policy world answers to held-out prompts), split the same way, each pair judged by gold (pairs of equal gold
grade left out): whether R_h fails on its policy's samples only or on the kind of pair itself.
"""

from __future__ import annotations

import argparse
import itertools
import sys
from collections import Counter, defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from alignment.data import read_jsonl_tolerant
from alignment.world import prompt_by_id
from alignment.world.judges import gold_helpfulness, gold_is_refusal, is_correct, is_on_topic
from benchmarks.common import markdown_table, write_section
from reward.scoring import RewardScorer

KINDS = ("correct", "off_subject", "wrong_value", "refusal")
TEST_SET_GROUPS = ("format", "correct vs off_subject", "correct vs wrong_value", "correct vs refusal")


def answer_kind(prompt: dict, response: str) -> str:
    if is_correct(prompt, response):
        return "correct"
    if gold_is_refusal(response):
        return "refusal"
    return "wrong_value" if is_on_topic(prompt, response) else "off_subject"


def pair_group(prompt: dict, better: str, worse: str) -> str:
    """ "format" when both answers are correct or both wrong, else "correct vs <the wrong one's kind>"."""
    if is_correct(prompt, better) == is_correct(prompt, worse):
        return "format"
    return f"correct vs {answer_kind(prompt, worse)}"


def gold_ordered_pairs(rows: list[dict]) -> list[tuple[int, bool, str]]:
    """For each comparison row whose answers' gold grades differ: (row index, whether gold prefers the chosen
    answer, ``pair_group``); rows of equal gold grade are left out."""
    ordered = []
    for index, row in enumerate(rows):
        prompt = prompt_by_id(row["prompt_id"])
        gold_chosen, gold_rejected = gold_helpfulness(prompt, row["chosen"]), gold_helpfulness(prompt, row["rejected"])
        if gold_chosen == gold_rejected:
            continue
        chosen_better = gold_chosen > gold_rejected
        better, worse = (row["chosen"], row["rejected"]) if chosen_better else (row["rejected"], row["chosen"])
        ordered.append((index, chosen_better, pair_group(prompt, better, worse)))
    return ordered


def rm_test_figures(run: Path, iteration: int) -> dict[str, tuple[int, int]] | None:
    """R_h of the iteration on the run's fixed test set: {pair group: (right, pairs)}."""
    test_file, model = run / "data" / "rm_test.jsonl", run / f"RLHF-V{iteration}" / "reward_helpfulness"
    if not test_file.exists() or not (model / "config.json").exists():
        return None
    rows = list(read_jsonl_tolerant(test_file))
    scorer = RewardScorer(str(model), chat_format="llama2", batch_size=64, max_length=128)
    chosen = scorer.score([r["prompt"] for r in rows], [r["chosen"] for r in rows]).scores.tolist()
    rejected = scorer.score([r["prompt"] for r in rows], [r["rejected"] for r in rows]).scores.tolist()
    right, pairs = Counter(), Counter()
    for index, chosen_better, group in gold_ordered_pairs(rows):
        pairs[group] += 1
        right[group] += (chosen[index] > rejected[index]) == chosen_better
    return {group: (right[group], pairs[group]) for group in pairs}


def ratio(hits: float, total: int) -> str:
    return f"{hits / total:.2f} ({total})" if total else "-"


def iteration_figures(run: Path, iteration: int, judge=None) -> dict | None:
    """Figures of one iteration's RS samples (module docstring); `judge` (a scorer with `score(prompts, responses)`)
    replaces the R_h scores logged with the samples in the pair accuracies."""
    prompts_file = run / "data" / f"rs_v{iteration}.jsonl"
    samples_file = run / f"RLHF-V{iteration}" / "rejection_sampling" / "samples.jsonl"
    if not prompts_file.exists() or not samples_file.exists():
        return None
    prompts = {row["id"]: row for row in read_jsonl_tolerant(prompts_file)}
    by_prompt = defaultdict(list)
    for sample in read_jsonl_tolerant(samples_file):
        prompt = prompts.get(sample["prompt_id"])
        if prompt is not None and prompt["kind"] == "helpfulness":
            by_prompt[sample["prompt_id"]].append(sample)
    kinds, pairs, right = Counter(), Counter(), Counter()
    picks = {name: [0.0, 0.0] for name in ("random", "R_c", "oracle")}
    for prompt_id, samples in by_prompt.items():
        prompt = prompts[prompt_id]
        gold = [gold_helpfulness(prompt, s["response"]) for s in samples]
        kind = [answer_kind(prompt, s["response"]) for s in samples]
        kinds.update(kind)
        correct = [k == "correct" for k in kind]
        chosen = {
            "random": range(len(samples)),
            "R_c": [max(range(len(samples)), key=lambda i: samples[i]["r_c"])],
            "oracle": [max(range(len(samples)), key=lambda i: gold[i])],
        }
        for name, indices in chosen.items():
            picks[name][0] += sum(correct[i] for i in indices) / len(indices)
            picks[name][1] += sum(gold[i] for i in indices) / len(indices)
        if judge is None:
            scores = [s["r_h"] for s in samples]
        else:
            scores = judge.score([s["messages"] for s in samples], [s["response"] for s in samples]).scores.tolist()
        for i, j in itertools.combinations(range(len(samples)), 2):
            if gold[i] == gold[j]:
                continue
            better, worse = (i, j) if gold[i] > gold[j] else (j, i)
            group = pair_group(prompt, samples[better]["response"], samples[worse]["response"])
            pairs[group] += 1
            right[group] += scores[better] > scores[worse]
    n = len(by_prompt)
    total = sum(kinds.values())
    return {
        "prompts": n,
        "kinds": {k: kinds[k] / total for k in KINDS},
        "pairs": {group: (right[group], pairs[group]) for group in pairs},
        "picks": {name: (c / n, g / n) for name, (c, g) in picks.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", nargs="+", required=True, help="finished pipeline run directories")
    parser.add_argument("--iterations", type=int, default=5)
    parser.add_argument("--test_set", action="store_true", help="also R_h on the fixed test set, by pair kind")
    parser.add_argument("--write", action="store_true", help="write the section in BENCHMARKS.md")
    parser.add_argument("--section", default="Main job: why the iterations do not compound")
    args = parser.parse_args()
    header = [
        "run",
        "iteration",
        "prompts",
        *(f"{k} share" for k in KINDS),
        "R_h acc. format pairs",
        "R_h acc. correct vs off-subject",
        "R_h acc. correct vs wrong value",
        "correct: random / R_c / oracle",
        "gold: random / R_c / oracle",
    ]
    if args.test_set:
        header += [f"test set: R_h acc. {group}" for group in TEST_SET_GROUPS]
    rows = []
    for run in map(Path, args.runs):
        for iteration in range(1, args.iterations + 1):
            figures = iteration_figures(run, iteration)
            if figures is None:
                continue
            pairs = figures["pairs"]
            picks = figures["picks"]
            rows.append(
                [
                    str(run),
                    f"RLHF-V{iteration}",
                    figures["prompts"],
                    *(f"{figures['kinds'][k]:.2f}" for k in KINDS),
                    ratio(*pairs.get("format", (0, 0))),
                    ratio(*pairs.get("correct vs off_subject", (0, 0))),
                    ratio(*pairs.get("correct vs wrong_value", (0, 0))),
                    " / ".join(f"{picks[name][0]:.2f}" for name in ("random", "R_c", "oracle")),
                    " / ".join(f"{picks[name][1]:.2f}" for name in ("random", "R_c", "oracle")),
                ]
            )
            if args.test_set:
                test = rm_test_figures(run, iteration) or {}
                rows[-1] += [ratio(*test.get(group, (0, 0))) for group in TEST_SET_GROUPS]
    command = "python benchmarks/iteration_diagnostics.py --runs " + " ".join(args.runs)
    command += " --test_set" if args.test_set else ""
    body = f"Command: `{command}`\n\n" + markdown_table(header, rows)
    print(body)
    if args.write:
        write_section(args.section, body)


if __name__ == "__main__":
    main()
