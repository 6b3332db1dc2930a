"""Rejection sampling's pure parts: best-of-K, pooling across iterations, the figure 7 and 8 statistics.

Rows are the sample dicts rejection sampling stores (`messages`, `response`, `sample_index`, `r_c`, ...).
No model, no I/O: each function is tested on hand-made scores.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence


def prompt_key(messages: list[dict]) -> str:
    """Identity of a prompt across iterations and files: its messages, not an id a new prompt file may reuse."""
    return json.dumps([[m["role"], m["content"]] for m in messages], ensure_ascii=False)


def is_finished(row: dict) -> bool:
    """Whether the answer ended with a stop token; rows written before the flag existed count as finished."""
    return row.get("finished", True) is not False


def flagged_unsafe(row: dict) -> bool:
    """R_c came from R_s on a prompt that is not a safety prompt: sigmoid(R_s) < 0.15 flagged the answer."""
    return bool(row.get("use_safety")) and not row.get("is_safety_prompt", False)


def selection_rank(row: dict) -> tuple[bool, float]:
    """Best first: an answer the safety gate flagged ranks below every unflagged one, then by R_c.

    R_c puts a flagged answer on R_s's scale (below logit(0.15) = -1.73) and the others on R_h's, which is
    not calibrated to it: in the committed tiny run, on the 32 RLHF-V1 prompts with both kinds of samples,
    a flagged answer won 6 times, because R_h scored every unflagged rival lower. Picking an answer R_s
    calls unsafe while one it does not is at hand contradicts the gate's purpose. PPO's counterpart is
    `flagged_reward: lower` (`rlhf.rewards.combined_reward`): with eq. 3's R_c, PPO learnt to be flagged.
    """
    return (flagged_unsafe(row), -row["r_c"])


def top_of_k(rows: Iterable[dict], top: int = 1, drop_unfinished: bool = True) -> list[dict]:
    """Per prompt, its `top` samples by R_c, best first; prompts come out in order of first appearance.

    Ties go to the lowest `sample_index` (then the earlier row), so the choice never depends on dict or file
    order; answers the safety gate flagged rank last (`selection_rank`). Unfinished samples (cut at
    max_new_tokens) are left out unless `drop_unfinished` is false: the
    reward models score the text as if it had ended, and fine-tuning on one would teach "half an answer, then
    EOS". A prompt whose samples were all cut gets no winner.
    """
    groups: dict[str, list[tuple[int, dict]]] = {}
    for order, row in enumerate(rows):
        group = groups.setdefault(prompt_key(row["messages"]), [])
        if is_finished(row) or not drop_unfinished:
            group.append((order, row))
    ranked = []
    for group in groups.values():
        group.sort(key=lambda item: (*selection_rank(item[1]), item[1].get("sample_index", 0), item[0]))
        ranked += [row for _, row in group[:top]]
    return ranked


def best_of_k(rows: Iterable[dict], drop_unfinished: bool = True) -> list[dict]:
    """Per prompt, the finished sample with the highest R_c (arXiv 2307.09288, sec. 3.2.3); see `top_of_k`."""
    return top_of_k(rows, 1, drop_unfinished)


def pool_best(candidates_by_iteration: Sequence[Sequence[dict]], drop_unfinished: bool = True) -> list[dict]:
    """Per prompt, the best candidate across iterations, every candidate scored by the *current* reward models.

    `candidates_by_iteration[0]` is this iteration's best-of-K, then earlier iterations' top samples, newest
    first, ranked by `selection_rank`. A tie keeps the earlier list, i.e. the newer policy's sample. Prompts
    seen only in earlier iterations stay in the pool: after RLHF-V3 the top samples of all prior iterations
    were pooled, because using only the previous iteration's samples caused regressions (sec. 3.2.3).
    """
    pool: dict[str, dict] = {}
    for candidates in candidates_by_iteration:
        for row in candidates:
            if drop_unfinished and not is_finished(row):
                continue
            key = prompt_key(row["messages"])
            if key not in pool or selection_rank(row) < selection_rank(pool[key]):
                pool[key] = row
    return list(pool.values())


def expected_max_and_median(values: Sequence[float], k: int) -> tuple[float, float]:
    """Expected maximum and median of k samples drawn without replacement from the K values.

    Exact order statistics instead of one arbitrary subset, so the figure 7 curve is smooth and
    deterministic: the j-th smallest of a random k-subset is the i-th smallest of all K values with
    probability C(i-1, j-1) C(K-i, k-j) / C(K, k). An even k takes the mean of the two middle values.
    """
    ordered = sorted(float(v) for v in values)
    n = len(ordered)
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, {n}], got {k}")
    total = math.comb(n, k)

    def expected_order_statistic(j: int) -> float:
        return (
            sum(ordered[i - 1] * math.comb(i - 1, j - 1) * math.comb(n - i, k - j) for i in range(j, n - k + j + 1))
            / total
        )

    maximum = expected_order_statistic(k)
    if k % 2:
        median = expected_order_statistic((k + 1) // 2)
    else:
        median = (expected_order_statistic(k // 2) + expected_order_statistic(k // 2 + 1)) / 2
    return maximum, median


def group_rewards(rows: Iterable[dict]) -> list[list[float]]:
    """R_c of each prompt's samples, in sample order, one list per prompt."""
    groups: dict[str, list[tuple[int, float]]] = {}
    for row in rows:
        groups.setdefault(prompt_key(row["messages"]), []).append((row.get("sample_index", 0), row["r_c"]))
    return [[r for _, r in sorted(group)] for group in groups.values()]


def reward_vs_k(rows: Iterable[dict], ks: Sequence[int]) -> dict:
    """Figure 7: mean over prompts of the expected max and median R_c among k samples, for each k."""
    groups = group_rewards(rows)
    if not groups:
        return {"k": [], "max": [], "median": [], "num_prompts": 0}
    available = min(len(g) for g in groups)
    ks = sorted({k for k in ks if 1 <= k <= available})
    maxima, medians = [], []
    for k in ks:
        stats = [expected_max_and_median(g, k) for g in groups]
        maxima.append(sum(s[0] for s in stats) / len(stats))
        medians.append(sum(s[1] for s in stats) / len(stats))
    return {"k": ks, "max": maxima, "median": medians, "num_prompts": len(groups)}


def default_ks(num_samples: int) -> list[int]:
    """1, 2, 4, ... up to K, and K itself."""
    ks, k = [], 1
    while k < num_samples:
        ks.append(k)
        k *= 2
    return ks + [num_samples]


def reward_vs_temperature(rows_by_temperature: dict[float, list[dict]]) -> dict:
    """Figure 8: for each temperature, mean over prompts of the max, median and mean R_c of the K samples."""
    temperatures, maxima, medians, means = [], [], [], []
    for temperature in sorted(rows_by_temperature):
        groups = group_rewards(rows_by_temperature[temperature])
        if not groups:
            continue
        k = min(len(g) for g in groups)
        stats = [expected_max_and_median(g[:k], k) for g in groups]
        temperatures.append(temperature)
        maxima.append(sum(s[0] for s in stats) / len(stats))
        medians.append(sum(s[1] for s in stats) / len(stats))
        means.append(sum(sum(g) / len(g) for g in groups) / len(groups))
    return {"temperature": temperatures, "max": maxima, "median": medians, "mean": means}


def pick_temperature(sweep: dict) -> float:
    """The temperature with the highest mean max-of-K reward, what best-of-K can gain (fig. 8); ties: lowest T."""
    if not sweep["temperature"]:
        raise ValueError("empty temperature sweep")
    best = max(range(len(sweep["temperature"])), key=lambda i: (sweep["max"][i], -sweep["temperature"][i]))
    return sweep["temperature"][best]
