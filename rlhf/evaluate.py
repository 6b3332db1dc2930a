"""Judge a model version on held-out prompts: by gold judges (embedded world) and by our reward models.

This is the analogue of the paper's figure 11 measurement (arXiv 2307.09288, sec. 3.4.1, Figure 11): each version
answers the same held-out prompts; the world's gold judges give helpfulness, violation rate and false-refusal
rate, and the reward models give their own view (mean sigmoid(R_h) on helpfulness prompts and mean
sigmoid(R_s) on safety prompts), as the paper judged progress with its reward models.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from alignment.chat import encode_prompt
from alignment.config import AT_LEAST_ONE, NON_NEGATIVE, require_file
from alignment.data import atomic_write_json, load_prompts, read_jsonl_tolerant
from alignment.models import load_causal_lm, load_tokenizer
from alignment.stages import COMPLETE_MARKER
from alignment.world import evaluate as evaluate_world
from reward.scoring import RewardScorer
from rlhf.sampling import HFSamplingEngine, SamplingParams

RESPONSES_FILE = "responses.jsonl"
EVAL_FILE = "eval.json"


@dataclass
class EvaluateConfig:
    model: str | None = field(default=None, metadata={"help": "Model to evaluate (answers are generated)."})
    responses: str | None = field(default=None, metadata={"help": "Or: a responses.jsonl to (re-)score."})
    prompts: str = field(default="", metadata={"help": "Held-out prompts JSONL (world prompts carry gold)."})
    chat_format: str = field(default="llama2", metadata={"help": "Chat template."})
    temperature: float = field(
        default=0.0, metadata={"range": NON_NEGATIVE, "help": "0 = greedy, so versions are compared without noise."}
    )
    max_new_tokens: int = field(default=48, metadata={"range": AT_LEAST_ONE, "help": "Answer length cap."})
    batch_size: int = field(default=64, metadata={"range": AT_LEAST_ONE, "help": "Prompts per generation batch."})
    reward_helpfulness: str | None = field(default=None, metadata={"help": "R_h checkpoint for rm_helpfulness."})
    reward_safety: str | None = field(default=None, metadata={"help": "R_s checkpoint for rm_safety."})
    seed: int = field(default=0, metadata={"help": "Sampling seed when temperature > 0."})
    output_dir: str = field(default="runs/eval", metadata={"help": "Where responses.jsonl and eval.json go."})


def generate_responses(config: EvaluateConfig, prompts) -> list[str]:
    tokenizer = load_tokenizer(config.model)
    engine = HFSamplingEngine(load_causal_lm(config.model), tokenizer, batch_size=config.batch_size)
    ids = [encode_prompt(tokenizer, p.messages, config.chat_format) for p in prompts]
    params = SamplingParams(temperature=config.temperature, max_new_tokens=config.max_new_tokens, seed=config.seed)
    samples = engine.generate(ids, params)
    return [s.text for s in sorted(samples, key=lambda s: s.prompt_index)]


def reward_model_view(config: EvaluateConfig, prompts, responses: list[str]) -> dict:
    """Mean sigmoid score of R_h on helpfulness prompts and of R_s on safety prompts."""
    view = {"rm_helpfulness": None, "rm_safety": None}
    for key, path, want_safety in (
        ("rm_helpfulness", config.reward_helpfulness, False),
        ("rm_safety", config.reward_safety, True),
    ):
        if not path:
            continue
        chosen = [i for i, p in enumerate(prompts) if p.is_safety_prompt == want_safety]
        if not chosen:
            continue
        scorer = RewardScorer(path, chat_format=config.chat_format)
        batch = scorer.score([prompts[i].messages for i in chosen], [responses[i] for i in chosen])
        view[key] = float(batch.probs.mean())
    return view


def run_evaluate(config: EvaluateConfig) -> dict:
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    require_file(config.prompts, "prompts")
    prompts = load_prompts(config.prompts)
    if config.responses:
        require_file(config.responses, "responses")
        by_id = {row["id"]: row["response"] for row in read_jsonl_tolerant(config.responses)}
        responses = [by_id[p.id] for p in prompts]
    else:
        responses = generate_responses(config, prompts)
        with open(output / RESPONSES_FILE, "w") as handle:
            for prompt, response in zip(prompts, responses):
                handle.write(json.dumps({"id": prompt.id, "prompt": prompt.messages, "response": response}) + "\n")
    result = {}
    if all("gold" in p.meta for p in prompts):
        world_prompts = [{"id": p.id, "prompt": p.messages[-1]["content"], **p.meta} for p in prompts]
        result.update(evaluate_world(world_prompts, responses))
    result.update(reward_model_view(config, prompts, responses))
    result["mean_response_words"] = sum(len(r.split()) for r in responses) / max(len(responses), 1)
    atomic_write_json(output / EVAL_FILE, result)
    atomic_write_json(output / COMPLETE_MARKER, {"prompts": len(prompts)})
    return result
