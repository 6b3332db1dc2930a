"""Text for the tiny base model: the pretraining corpus, the SFT demonstrations and the tokenizer's texts.

The pretraining corpus mixes plain fact sentences ("3 plus 4 is 7.") with dialog transcripts whose answers
are drawn from a mixture of ideal and degraded responses, so the base model knows the facts and the chat
format but has no reliable behaviour: it is sometimes wrong or rambling, complies with harmful requests and
refuses benign borderline ones. SFT on a few ideal demonstrations (the paper's "quality over quantity",
sec. 3.1) then moves it towards the ideal, and best-of-K sampling can still find better answers than its
typical one, which is the headroom rejection sampling and PPO exploit.

Transcripts are ``[INST] {prompt} [/INST] {answer}``, the Llama 2 chat format without the ``<s>``/``</s>``
markers: the tokenizer adds BOS/EOS around each document. Some open with a safety system prompt, as the chat
format places one (``[INST] <<SYS>>\n{system}\n<</SYS>>\n\n{prompt} [/INST] {answer}``), and are answered more
cautiously (``CORPUS_PREPROMPT_SHARE``).
"""

from __future__ import annotations

import random
from collections.abc import Iterable

from alignment.chat import B_SYS, E_SYS
from alignment.world import prompts as _prompts
from alignment.world import responses as _responses
from alignment.world import risk as _risk
from alignment.world.judges import words
from alignment.world.tables import ANSWER_SPACES, answer_space

B_INST, E_INST = "[INST]", "[/INST]"
# Share of the corpus's transcripts per prompt group answered ideally (the rest degraded). Web text answers a
# harmful request far more often than it refuses it, so the base model is unsafe and safety must come from
# RLHF, as in the paper (arXiv 2307.09288, Table 14: pretrained Llama 2 7B 21.25% toxic on ToxiGen, the chat
# model 0.00%).
CORPUS_IDEAL_SHARE: dict[str, float] = {"fact": 0.4, "borderline": 0.4, "harmful": 0.25}
# Share of the transcripts that open with a safety system prompt (a generic one, or for a harmful request its
# category's answer template half of the time), answered as ``risk.PREPROMPTED_*`` says: the base model learns
# to read a safety preprompt, as real chat models have, which safety context distillation relies on.
CORPUS_PREPROMPT_SHARE = 0.3
SFT_CLOSING = _responses.FILLER_AFTER[0]


def chat_transcript(user: str, answer: str, system: str | None = None) -> str:
    if system:
        user = f"{B_SYS}{system.strip()}{E_SYS}{user.strip()}"
    return f"{B_INST} {user.strip()} {E_INST} {answer.strip()}"


def _preprompted_transcript(prompt: dict, rng: random.Random) -> str:
    group = _responses.mode_group(prompt)
    if group == "harmful" and rng.random() < 0.5:
        kind, system = "template", _risk.ANSWER_TEMPLATES[_risk.risk_category(prompt)]
    else:
        kind, system = "generic", rng.choice(_risk.GENERIC_SAFETY_PREPROMPTS)
    weights = _risk.PREPROMPTED_MODE_WEIGHTS[kind].get(group)
    answer = _responses.response_mixture(prompt, rng, _risk.PREPROMPTED_IDEAL_SHARE[kind][group], weights)
    return chat_transcript(prompt["prompt"], answer, system)


def world_facts() -> list[str]:
    """Every fact of the world as a sentence (the ideal answer of each non-adversarial value, both splits)."""
    facts = []
    for task in _prompts.TASKS:
        if task.kind == "helpfulness":
            facts.extend(task.ideal.format(**value) for value in task.values)
    return facts


def pretraining_corpus(
    n_docs: int,
    seed: int,
    *,
    dialog_share: float = 0.5,
    ideal_share: float | dict[str, float] | None = None,
    facts_per_doc: tuple[int, int] = (1, 4),
    split: str = "train",
    family_weights: dict[str, float] | None = None,
    mode_weights: dict[str, dict[str, float]] | None = None,
    preprompt_share: float = CORPUS_PREPROMPT_SHARE,
) -> list[str]:
    """n_docs documents: with probability dialog_share a one-turn transcript on a prompt of ``split`` whose
    answer is ideal with probability ideal_share (one share, or one per prompt group as in the default
    ``CORPUS_IDEAL_SHARE``) and otherwise degraded (modes drawn from ``mode_weights``,
    default ``responses.DEFAULT_MODE_WEIGHTS``); else a few fact sentences (between facts_per_doc[0] and
    facts_per_doc[1]). ``preprompt_share`` of the transcripts open with a safety system prompt (0 gives the
    corpus of the world before preprompts, draw for draw)."""
    shares = CORPUS_IDEAL_SHARE if ideal_share is None else ideal_share
    if not isinstance(shares, dict):
        shares = dict.fromkeys(CORPUS_IDEAL_SHARE, shares)
    if not all(0.0 <= share <= 1.0 for share in (dialog_share, preprompt_share, *shares.values())):
        raise ValueError("dialog_share, ideal_share and preprompt_share must lie in [0, 1]")
    rng = random.Random(seed)
    names, values = _prompts._family_weights(None, family_weights)
    facts = world_facts()
    mode_weights = mode_weights or _responses.DEFAULT_MODE_WEIGHTS
    docs = []
    for _ in range(n_docs):
        if rng.random() < dialog_share:
            prompt = rng.choice(_prompts._pool(rng.choices(names, values)[0], split))
            if preprompt_share > 0 and rng.random() < preprompt_share:
                docs.append(_preprompted_transcript(prompt, rng))
                continue
            group = _responses.mode_group(prompt)
            answer = _responses.response_mixture(prompt, rng, shares[group], mode_weights.get(group))
            docs.append(chat_transcript(prompt["prompt"], answer))
        else:
            k = rng.randint(*facts_per_doc)
            docs.append(" ".join(rng.choice(facts) for _ in range(k)))
    return docs


def sft_demonstrations(
    n: int, seed: int, split: str = "train", family_weights: dict[str, float] | None = None, closing_share: float = 0.0
) -> list[dict]:
    """n demonstrations ``{"messages": [user, assistant]}`` with ideal answers: helpful answers (borderline
    prompts included) and refusals with a safe alternative for adversarial prompts. Families are drawn by
    weight (uniform by default); within a family prompts are distinct until its pool is exhausted.

    ``closing_share`` of the helpful answers end with the writer's habit ``SFT_CLOSING`` ("i hope that
    helps."), which the gold judges grade as rambling (0.5 instead of 1.0). Demonstration writers have such
    habits; annotators comparing two answers still prefer the concise one, so preference data can teach what
    the demonstrations did not (arXiv 2307.09288, sec. 3.1 and 5.1: RLHF goes beyond the quality of the SFT
    annotations)."""
    if not 0.0 <= closing_share <= 1.0:
        raise ValueError(f"closing_share must lie in [0, 1], got {closing_share}")
    rng = random.Random(seed)
    names, values = _prompts._family_weights(None, family_weights)
    queues: dict[str, list[dict]] = {}
    demos = []
    for _ in range(n):
        family = rng.choices(names, values)[0]
        if not queues.get(family):
            queues[family] = list(_prompts._pool(family, split))
            rng.shuffle(queues[family])
        prompt = queues[family].pop()
        answer = _responses.ideal_response(prompt)
        if prompt["kind"] == "helpfulness" and rng.random() < closing_share:
            answer = f"{answer} {SFT_CLOSING}"
        demos.append(
            {
                "messages": [
                    {"role": "user", "content": prompt["prompt"]},
                    {"role": "assistant", "content": answer},
                ]
            }
        )
    return demos


def all_texts_for_tokenizer() -> list[str]:
    """Texts that together contain every word any prompt, answer, degraded answer or corpus document can use."""
    texts: list[str] = []
    for split in _prompts.SPLITS:
        for prompt in _prompts.prompt_pool(split):
            texts.append(chat_transcript(prompt["prompt"], _responses.ideal_response(prompt)))
            task = _prompts.get_task(prompt)
            slots = prompt["gold"]["slots"]
            texts.extend(t.format(**slots) for t in task.wrong)
            for comply in task.comply:
                text = comply.format(**slots)
                texts += [text, _responses.HEDGE + text.removeprefix("sure, ")]
            if task.alternative:
                texts.append(task.alternative.format(**slots))
    texts += world_facts()
    texts += list(_responses.FILLER_BEFORE + _responses.FILLER_AFTER + _responses.FALSE_REFUSALS)
    systems = _risk.GENERIC_SAFETY_PREPROMPTS + tuple(_risk.ANSWER_TEMPLATES.values())
    texts += [f"{B_SYS}{system}{E_SYS}" for system in systems]
    texts += [" ".join(sorted(answer_space(name))) for name in ANSWER_SPACES]
    return list(dict.fromkeys(texts))


def vocabulary(texts: Iterable[str] | None = None) -> set[str]:
    """Distinct words (letters, digits, apostrophes; case kept) of the world or of the given texts."""
    return {w for text in (all_texts_for_tokenizer() if texts is None else texts) for w in words(text)}
