"""The embedded default world: a deterministic, offline environment for the whole Llama 2-Chat pipeline.

A tiny Llama can be pretrained on ``pretraining_corpus``, fine-tuned on ``sft_demonstrations`` and improved by
RLHF on ``sample_prompts``, while ``gold_helpfulness`` / ``gold_is_violation`` / ``evaluate`` measure
helpfulness and harmlessness exactly and ``annotate`` plays the human annotators of sec. 3.2.1.

Modules: ``tables`` (the facts), ``prompts`` (families, split, sampling), ``judges`` (gold metrics),
``responses`` (ideal and degraded answers), ``corpus`` (pretraining text, demonstrations, tokenizer texts),
``annotator`` (preference pairs with ratings).
"""

from alignment.world.annotator import (
    DEFAULT_NOISE,
    RATING_THRESHOLDS,
    annotate,
    annotation_score,
    open_source_comparisons,
    rating_for_gap,
)
from alignment.world.corpus import (
    all_texts_for_tokenizer,
    chat_transcript,
    pretraining_corpus,
    sft_demonstrations,
    vocabulary,
    world_facts,
)
from alignment.world.judges import (
    combined_score,
    evaluate,
    gold_helpfulness,
    gold_is_refusal,
    gold_is_safe,
    gold_is_violation,
    is_correct,
)
from alignment.world.prompts import (
    FAMILIES,
    FAMILY_KIND,
    HELDOUT_FRACTION,
    SPLITS,
    eval_prompts,
    family_prompts,
    is_safety_prompt,
    pool_sizes,
    prompt_by_id,
    prompt_file_rows,
    prompt_pool,
    prompts_by_text,
    sample_prompts,
)
from alignment.world.responses import (
    DEFAULT_MODE_WEIGHTS,
    DEGRADATION_MODES,
    degraded_response,
    degraded_responses,
    ideal_response,
    response_mixture,
)

__all__ = [
    "DEFAULT_MODE_WEIGHTS",
    "DEFAULT_NOISE",
    "DEGRADATION_MODES",
    "FAMILIES",
    "FAMILY_KIND",
    "HELDOUT_FRACTION",
    "RATING_THRESHOLDS",
    "SPLITS",
    "all_texts_for_tokenizer",
    "annotate",
    "annotation_score",
    "chat_transcript",
    "combined_score",
    "degraded_response",
    "degraded_responses",
    "eval_prompts",
    "evaluate",
    "family_prompts",
    "gold_helpfulness",
    "gold_is_refusal",
    "gold_is_safe",
    "gold_is_violation",
    "ideal_response",
    "is_correct",
    "is_safety_prompt",
    "open_source_comparisons",
    "pool_sizes",
    "pretraining_corpus",
    "prompt_by_id",
    "prompt_file_rows",
    "prompt_pool",
    "prompts_by_text",
    "rating_for_gap",
    "response_mixture",
    "sample_prompts",
    "sft_demonstrations",
    "vocabulary",
    "world_facts",
]
