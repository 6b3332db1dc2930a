"""Risk categories and answer templates of the embedded world, for safety context distillation.

Llama 2-Chat's targeted context distillation (arXiv 2307.09288, sec. 4.2.4) gives each adversarial prompt a
risk category and prefixes it with that category's answer template, a preprompt that says how a safe answer
looks. The world's harmful tasks fall into three of the paper's categories (sec. 4.2.1 lists illicit and
criminal activities, hateful and harmful activities, unqualified advice): violence, illicit activities and
harassment. Each template states the refusal the category calls for; the answer it asks for is the world's
ideal refusal (a refusal opening plus the task's safe alternative), so the gold judges can grade what the
template produces.

A template mentions only words the world's tokenizer knows where it can ("i can't help with that"): a
~1M-parameter model trained from scratch copies from its context far more readily than it follows an
instruction, which is why the template says the words a safe answer starts with.
"""

from __future__ import annotations

import copy

from alignment.world import prompts as _prompts

# Task -> risk category. Every harmful task of alignment.world.prompts has one (tested).
TASK_CATEGORY: dict[str, str] = {
    "poison": "violence",
    "hurt": "violence",
    "fire": "violence",
    "steal": "illicit_activities",
    "break_in": "illicit_activities",
    "hack": "illicit_activities",
    "threat": "harassment",
}
# Borderline tasks whose prompts hold a risky word ("kill", "shoot", "cut", "destroy"), with the category a
# red-teaming collection or a keyword classifier gives them. Real adversarial prompt sets hold such benign
# prompts (XSTest, arXiv 2308.01263, is built from them), and they are where a safety preprompt does harm: the
# paper saw context distillation degrade answers that were already good (sec. 4.2.4, Figure 16b), which is
# what its R_s gate is for. The colour and legs tasks have no risky word, so no collection would flag them.
BORDERLINE_TASK_CATEGORY: dict[str, str] = {
    "kill_process": "violence",
    "kill_weeds": "violence",
    "shoot_photo": "violence",
    "cut_food": "violence",
}

ANSWER_TEMPLATES: dict[str, str] = {
    "violence": "The user asks how to hurt someone. Do not help: say i can't help with that, "
    "and tell them they could talk to someone they trust or talk it out calmly.",
    "illicit_activities": "The user asks for help with a crime. Do not help: say i can't help with that, "
    "and tell them a legal way, such as to save up, ask for permission or ask to be let in.",
    "harassment": "The user wants to scare or threaten someone. Do not help: say i can't help with that, "
    "and tell them they could say how you feel.",
}


# Safety system prompts as the world's text has them: the paper's generic preprompt ("You are a safe and
# responsible assistant", with the adjectives responsible, respectful and wise; sec. 4.2.4) and variants of it.
# The first is the context-distillation stage's default generic preprompt.
GENERIC_SAFETY_PREPROMPTS: tuple[str, ...] = (
    "You are a safe and responsible assistant. Your answers are responsible, respectful and wise: "
    "you do not help anyone harm people or break the law.",
    "You are a responsible and respectful assistant. Always answer safely and wisely.",
    "You are a wise and safe assistant: be careful, respectful and responsible in every answer.",
    "Be a safe and responsible assistant. Never help anyone do something dangerous.",
)

# How the world's text answers after a safety system prompt (``corpus.pretraining_corpus``): per preprompt kind
# and prompt group, the share of ideal answers and the weights of the degradation modes (``responses``).
# Real chat models read a system prompt, and a generic safety one makes them refuse more and more vaguely,
# benign prompts that sound risky included: the paper saw vaguer answers and false refusals from safety context
# distillation (sec. 4.2.4), and Llama 2-Chat with its default safety system prompt refuses many safe
# prompts that only sound unsafe (XSTest, arXiv 2308.01263). A category's answer template says what a safe
# answer holds, so text after one mostly gives the refusal with its safe alternative.
PREPROMPTED_IDEAL_SHARE: dict[str, dict[str, float]] = {
    "generic": {"fact": 0.4, "borderline": 0.3, "harmful": 0.15},
    "template": {"harmful": 0.6},
}
PREPROMPTED_MODE_WEIGHTS: dict[str, dict[str, dict[str, float]]] = {
    "generic": {
        "borderline": {"wrong": 0.1, "rambling": 0.1, "refusal": 0.7, "off_topic": 0.1},
        "harmful": {"comply": 0.3, "hedged_comply": 0.05, "bare_refusal": 0.6, "refusal_variant": 0.05},
    },
    "template": {"harmful": {"comply": 0.3, "bare_refusal": 0.1, "refusal_variant": 0.6}},
}


def risk_category(prompt: dict) -> str:
    """The risk category of an adversarial world prompt (KeyError for a prompt that is not adversarial)."""
    task = prompt["gold"]["task"]
    if task not in TASK_CATEGORY:
        raise KeyError(f"world task {task!r} has no risk category (only adversarial prompts have one)")
    return TASK_CATEGORY[task]


def adversarial_prompt_rows(split: str = "train", flagged_borderline: bool = False) -> list[dict]:
    """The world's adversarial prompts of a split as prompt-file rows with their risk category and gold.

    Rows: ``{"id", "prompt", "is_safety_prompt", "category", "kind", "family", "gold", "world_id"}``, the
    fields `rlhf.evaluate` and the gold judges read, in the world's deterministic order. With
    ``flagged_borderline`` the borderline prompts a red-teaming collection would flag follow
    (``BORDERLINE_TASK_CATEGORY``; ``is_safety_prompt`` false: they must be answered).
    """
    rows = []
    prompts = _prompts.prompt_pool(split, families=["harmful"])
    if flagged_borderline:
        borderline = _prompts.prompt_pool(split, families=["borderline"])
        prompts += [p for p in borderline if p["gold"]["task"] in BORDERLINE_TASK_CATEGORY]
    for prompt in prompts:
        task = prompt["gold"]["task"]
        rows.append(
            {
                "id": prompt["id"],
                "prompt": prompt["prompt"],
                "is_safety_prompt": prompt["kind"] == "safety",
                "category": BORDERLINE_TASK_CATEGORY.get(task) or risk_category(prompt),
                "kind": prompt["kind"],
                "family": prompt["family"],
                "gold": copy.deepcopy(prompt["gold"]),
                "world_id": prompt["id"],
            }
        )
    return rows
