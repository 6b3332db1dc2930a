"""Evaluation of a reward model on held-out comparisons: the numbers of the paper's Table 8 and sec. 3.3.

Accuracy overall and per rating level, per test set (helpfulness / safety comparisons) and per safety
category; the score distribution of chosen and rejected responses; and, on responses that carry a safety
label, precision and recall of "unsafe" at sigmoid(score) < 0.15, the rule PPO gates on.
"""

from __future__ import annotations

import torch
from tqdm.auto import tqdm

from alignment.config import RecipeError
from alignment.distributed import all_gather_objects, shard
from alignment.ratings import RATINGS
from reward.data import KINDS, SAFETY_CATEGORIES, Comparison
from reward.loss import accuracy_by_rating
from reward.metrics import SAFETY_THRESHOLD, score_distribution, unsafe_calibration_offset, unsafe_detection


def score_comparisons(
    scorer, comparisons: list[Comparison], progress: bool = False, chunk: int = 256
) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores of every comparison's chosen and rejected response, in chunks (a progress bar when asked)."""
    chosen, rejected = [torch.empty(0)], [torch.empty(0)]
    with tqdm(total=len(comparisons), desc="scoring held-out pairs", disable=not progress) as bar:
        for start in range(0, len(comparisons), chunk):
            part = comparisons[start : start + chunk]
            prompts = [c.prompt for c in part]
            chosen.append(scorer.score(prompts, [c.chosen for c in part]).scores)
            rejected.append(scorer.score(prompts, [c.rejected for c in part]).scores)
            bar.update(len(part))
    return torch.cat(chosen), torch.cat(rejected)


def _subset(chosen, rejected, comparisons, keep) -> dict:
    index = [i for i, c in enumerate(comparisons) if keep(c)]
    ratings = [comparisons[i].rating for i in index]
    return accuracy_by_rating(chosen[index], rejected[index], ratings)


def labelled_responses(
    chosen: torch.Tensor, rejected: torch.Tensor, comparisons: list[Comparison], helpfulness_as_safe: bool = False
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(scores, unsafe) of every response with a safety label, each (prompt, response) once.

    helpfulness_as_safe: unlabelled responses of helpfulness comparisons count as safe, so a calibration also
    sees the answers to ordinary prompts that the gate must not flag.
    """
    labelled: dict[tuple[str, str], tuple[float, bool]] = {}
    for i, c in enumerate(comparisons):
        for text, score, safe in ((c.chosen, chosen[i], c.chosen_safe), (c.rejected, rejected[i], c.rejected_safe)):
            if safe is None and helpfulness_as_safe and c.kind == "helpfulness":
                safe = True
            if safe is not None:
                labelled[(c.prompt_key(), text)] = (float(score), not safe)
    if not labelled:
        return None
    return torch.tensor([s for s, _ in labelled.values()]), torch.tensor([u for _, u in labelled.values()])


def comparison_report(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    comparisons: list[Comparison],
    safety_threshold: float = SAFETY_THRESHOLD,
) -> dict:
    """All evaluation numbers from the scores of each comparison's two responses."""
    # One test set per mixing pool (a kind unless a source or an eval file names its own).
    pools = [c.pool or c.kind for c in comparisons]
    report = {
        "pairs": len(comparisons),
        "accuracy": accuracy_by_rating(chosen, rejected, [c.rating for c in comparisons]),
        "test_sets": {
            pool: _subset(chosen, rejected, comparisons, lambda c, p=pool: (c.pool or c.kind) == p)
            for pool in [*(k for k in KINDS if k in pools), *sorted(set(pools) - set(KINDS))]
        },
        "safety_categories": {
            category: _subset(chosen, rejected, comparisons, lambda c, k=category: c.safety_category == k)["overall"]
            for category in SAFETY_CATEGORIES
        },
        "scores": {"chosen": score_distribution(chosen), "rejected": score_distribution(rejected)},
        "unsafe_detection": None,
    }
    labelled = labelled_responses(chosen, rejected, comparisons)
    if labelled:
        scores, unsafe = labelled
        report["unsafe_detection"] = unsafe_detection(torch.sigmoid(scores), unsafe, safety_threshold)
    return report


def score_all(
    scorer, comparisons: list[Comparison], progress: bool = False, distributed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Chosen and rejected scores of all comparisons.

    distributed=True (every process calls it, each with the same list): each process scores its contiguous
    share (`shard`: no pair twice, none dropped, an uneven split included) and the scores are gathered in
    order, so every process gets what one process would compute on the whole list.
    """
    chosen, rejected = score_comparisons(scorer, shard(comparisons) if distributed else comparisons, progress)
    if distributed:
        scores = torch.tensor(all_gather_objects(torch.stack([chosen, rejected], -1).tolist())).reshape(-1, 2)
        chosen, rejected = scores[:, 0], scores[:, 1]
    return chosen, rejected


def calibrate_safety_offset(
    scorer,
    comparisons: list[Comparison],
    target_precision: float,
    safety_threshold: float = SAFETY_THRESHOLD,
    distributed: bool = False,
) -> dict:
    """Set `score_offset` on the scorer's model config (see `reward.scoring`) from these comparisons'
    labelled responses; returns the offset and the calibrated rule's precision/recall on them."""
    scorer.model.config.score_offset = 0.0
    chosen, rejected = score_all(scorer, comparisons, distributed=distributed)
    labelled = labelled_responses(chosen, rejected, comparisons, helpfulness_as_safe=True)
    if labelled is None:
        raise RecipeError("calibrate_unsafe_precision needs responses with safety labels in the training data")
    offset, detection = unsafe_calibration_offset(*labelled, target_precision, safety_threshold)
    scorer.model.config.score_offset = offset
    return {"score_offset": offset, "target_precision": target_precision, "on_training_responses": detection}


def evaluate_reward_model(
    scorer,
    comparisons: list[Comparison],
    safety_threshold: float = SAFETY_THRESHOLD,
    progress: bool = False,
    distributed: bool = False,
) -> dict:
    """The report of `comparison_report` on all `comparisons` (scored by `score_all`)."""
    chosen, rejected = score_all(scorer, comparisons, progress, distributed)
    return comparison_report(chosen, rejected, comparisons, safety_threshold)


def _pct(value) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def report_markdown(report: dict, title: str = "Reward model evaluation") -> str:
    """Markdown tables in the layout of the paper's Table 8 (accuracy per rating level, %)."""
    head = "| test set | pairs | " + " | ".join(r.replace("_", " ") for r in RATINGS) + " | overall |"
    lines = [f"## {title}", "", head, "|" + "---|" * (len(RATINGS) + 3)]
    rows = {"all": report["accuracy"], **report["test_sets"]}
    for name, acc in rows.items():
        cells = [f"{_pct(acc[r]['accuracy'])} ({acc[r]['count']})" for r in RATINGS]
        lines.append(
            f"| {name} | {acc['overall']['count']} | " + " | ".join(cells) + f" | {_pct(acc['overall']['accuracy'])} |"
        )
    lines += ["", "| safety category | pairs | accuracy |", "|---|---|---|"]
    for category, acc in report["safety_categories"].items():
        lines.append(f"| {category.replace('_', ' ')} | {acc['count']} | {_pct(acc['accuracy'])} |")
    detection = report["unsafe_detection"]
    lines.append("")
    if detection is None:
        lines.append("Unsafe detection: no response in the test set carries a safety label.")
    else:
        lines.append(
            f"Unsafe detection at sigmoid(score) < {detection['threshold']}: precision "
            f"{_pct(detection['precision'])}%, recall {_pct(detection['recall'])}% "
            f"({detection['unsafe']} unsafe of {detection['responses']} labelled responses, "
            f"{detection['flagged']} flagged)."
        )
    lines += [
        "",
        "| scores | mean | std | p05 | p50 | p95 | sigmoid histogram (10 bins) |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, dist in report["scores"].items():
        if dist.get("count"):
            q = dist["quantiles"]
            lines.append(
                f"| {name} | {dist['mean']:.3f} | {dist['std']:.3f} | {q['p05']:.3f} | {q['p50']:.3f} | "
                f"{q['p95']:.3f} | {' '.join(map(str, dist['sigmoid_histogram']))} |"
            )
    return "\n".join(lines) + "\n"
