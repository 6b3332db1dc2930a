"""A programmatic annotator following the paper's protocol (sec. 3.2.1).

It compares two responses to one prompt by their gold scores and returns the chosen/rejected pair, a
four-level strength of preference and, for safety comparisons, the safety label of each response.

Gold score the annotator compares:
- helpfulness annotation: ``gold_helpfulness`` in [0, 1];
- safety annotation (adversarial prompts): safety first, then helpfulness, as one number
  ``float(safe) + gold_helpfulness``, so a safe response beats an unsafe one by at least 1 and two safe (or two
  unsafe) responses are ranked by helpfulness (a refusal with a safe alternative beats a bare one).

Human-like noise: each score gets independent Gaussian noise N(0, noise^2); the response with the higher
noisy score is chosen and the rating comes from the noisy gap |s_a - s_b|:

| noisy gap | >= 0.75 | >= 0.4 | >= 0.15 | < 0.15 |
|---|---|---|---|---|
| rating | significantly_better | better | slightly_better | negligibly_better |

Without noise the gold grades (steps of 0.25) map to: gap 1.0 / 0.75 -> significantly better, 0.5 -> better,
0.25 -> slightly better, 0 -> negligibly better (a coin flip picks the chosen one). The chance that noise flips
a preference is Phi(-gap / (noise * sqrt 2)), so weak preferences flip far more often than strong ones, and
the noisier ratings are the weak ones: the shape of the paper's per-rating reward-model accuracy (Table 8).
Safety labels are the gold labels; a flipped safety comparison can thus produce "chosen unsafe, rejected
safe", which the paper drops and which is left in for the loader to drop and count.
"""

from __future__ import annotations

import random

from alignment.ratings import RATINGS
from alignment.world.judges import gold_helpfulness, gold_is_violation
from alignment.world.prompts import FAMILIES, FAMILY_KIND, sample_prompts
from alignment.world.responses import OPEN_SOURCE_MODE_WEIGHTS, mode_group, response_mixture

# Lower bounds of the noisy score gap for each rating but the last (RATINGS order, strongest first).
RATING_THRESHOLDS: tuple[float, ...] = (0.75, 0.4, 0.15)
DEFAULT_NOISE = 0.2


def rating_for_gap(gap: float) -> str:
    for rating, threshold in zip(RATINGS, RATING_THRESHOLDS):
        if gap >= threshold:
            return rating
    return RATINGS[-1]


def annotation_score(prompt: dict, response: str, kind: str) -> float:
    """The gold score an annotator of this kind compares (see the module docstring)."""
    helpfulness = gold_helpfulness(prompt, response)
    if kind == "safety":
        return float(not gold_is_violation(prompt, response)) + helpfulness
    return helpfulness


def annotate(
    prompt: dict,
    response_a: str,
    response_b: str,
    rng: random.Random,
    noise: float = DEFAULT_NOISE,
    kind: str | None = None,
) -> dict:
    """Compare two responses like a (noisy) human annotator; deterministic given rng's state.

    kind defaults to the prompt's kind ("safety" for adversarial prompts). Returns ``chosen``, ``rejected``,
    ``rating`` (one of ``alignment.ratings.RATINGS``), ``kind``, ``chosen_safe`` and ``rejected_safe`` (gold
    labels for safety annotations, None for helpfulness ones), plus ``prompt`` (text), ``prompt_id``,
    ``gold_gap`` (noise-free score of chosen minus rejected; negative when noise flipped the preference) and
    ``flipped`` (gold_gap < 0).
    """
    kind = kind or prompt["kind"]
    if kind not in ("helpfulness", "safety"):
        raise ValueError(f"annotation kind must be 'helpfulness' or 'safety', got {kind!r}")
    score_a, score_b = annotation_score(prompt, response_a, kind), annotation_score(prompt, response_b, kind)
    noisy_a, noisy_b = score_a, score_b
    if noise > 0:
        noisy_a += rng.gauss(0.0, noise)
        noisy_b += rng.gauss(0.0, noise)
    a_wins = noisy_a > noisy_b or (noisy_a == noisy_b and rng.random() < 0.5)
    chosen, rejected = (response_a, response_b) if a_wins else (response_b, response_a)
    gold_gap = (score_a - score_b) if a_wins else (score_b - score_a)
    safety = kind == "safety"
    return {
        "prompt": prompt["prompt"],
        "prompt_id": prompt["id"],
        "chosen": chosen,
        "rejected": rejected,
        "rating": rating_for_gap(abs(noisy_a - noisy_b)),
        "kind": kind,
        "chosen_safe": (not gold_is_violation(prompt, chosen)) if safety else None,
        "rejected_safe": (not gold_is_violation(prompt, rejected)) if safety else None,
        "gold_gap": gold_gap,
        "flipped": gold_gap < 0,
    }


def open_source_comparisons(
    n: int, seed: int, noise: float = DEFAULT_NOISE, split: str = "train", families: dict[str, float] | None = None
) -> list[dict]:
    """Off-policy comparisons, the world's stand-in for the open-source preference data the paper mixes into the
    Helpfulness RM's training (arXiv 2307.09288, sec. 3.2.1 Table 6 and sec. 3.2.2).

    Two answers per training prompt drawn from the world's response mixture (ideal share 0.4, degradations from
    ``responses.OPEN_SOURCE_MODE_WEIGHTS``), not from the model being trained, and labelled by ``annotate``;
    identical answers are skipped, so up to n rows. Rows are in the comparison schema (``prompt`` as a user
    message); ``split`` is the world's prompt split ("heldout" for a test set no stage trains on) and ``families``
    weights the prompt families (default: every helpfulness family).
    """
    rng = random.Random(f"open-source/{seed}")
    weights = families or {family: 1.0 for family in FAMILIES if FAMILY_KIND[family] == "helpfulness"}
    rows = []
    for prompt in sample_prompts(n, seed, split, weights=weights):
        modes = OPEN_SOURCE_MODE_WEIGHTS[mode_group(prompt)]
        answer_a, answer_b = (response_mixture(prompt, rng, weights=modes) for _ in range(2))
        if answer_a == answer_b:
            continue
        row = annotate(prompt, answer_a, answer_b, rng, noise=noise)
        row["prompt"] = [{"role": "user", "content": prompt["prompt"]}]
        rows.append(row)
    return rows
