"""Stage 3, rejection-sampling fine-tuning (Llama 2, sec. 3.2.3; LLAMA2_METHOD.md "Stage 3").

    sample K answers per prompt from the policy at temperature T   (rlhf.sampling)
    score each with R_h and R_s, combine into R_c                  (rlhf.scoring -> rlhf.rewards)
    keep the best per prompt; pool with earlier iterations' best,  (rlhf.rs_select)
      re-scored by the current reward models
    fine-tune on the pool like SFT                                 (sft.trainer.run_sft)

Everything sampled is kept in `samples.jsonl` with its scores (it is preference data too), appended per
finished chunk of prompts, so a killed run resumes without re-generating finished prompts; chunk c is always
sampled with seed `seed + c`, so a resumed run produces what an uninterrupted one would. Files in output_dir:
samples.jsonl, sweep_samples.jsonl, pool.jsonl, reward_vs_k.{json,png}, reward_vs_temperature.{json,png},
eval.json, the fine-tuned model, and stage_complete.json.

Distillation (the paper's smaller models learnt from the 70B's selected samples): set
`policy_model_name_or_path` to the larger model, or `num_samples: 0` with `previous_samples` pointing at its
run; `model_name_or_path` is the model that is fine-tuned.
"""

from __future__ import annotations

import gc
import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from alignment.chat import check_chat_format, encode_prompt
from alignment.config import DataError, RecipeError, config_to_dict, require_file
from alignment.data import (
    PromptRecord,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    load_prompts,
    read_jsonl_tolerant,
    read_records,
    row_to_prompt,
)
from rlhf.rewards import SAFETY_THRESHOLD
from rlhf.rs_reports import write_reward_vs_k, write_reward_vs_temperature
from rlhf.rs_select import best_of_k, default_ks, pick_temperature, pool_best, reward_vs_k, reward_vs_temperature
from rlhf.sampling import SAMPLING_BACKENDS, SamplingEngine, SamplingParams, make_sampling_engine
from rlhf.scoring import Scorer, score_samples

COMPLETE_MARKER = "stage_complete.json"  # the name sft.trainer writes; ours replaces it when the stage ends
SAMPLES_FILE = "samples.jsonl"
SWEEP_FILE = "sweep_samples.jsonl"
POOL_FILE = "pool.jsonl"
SAMPLING_MANIFEST = "sampling_config.json"
STAGE = "rejection_sampling"


@dataclass
class RejectionSamplingArguments:
    prompts_name: str = field(
        default="builtin:demo-sft",
        metadata={"help": "Prompt file (rows: prompt, is_safety_prompt, id) or builtin:demo-sft's prompts."},
    )
    prompts_split: str = field(default="train", metadata={"help": "Split of a hub prompt dataset."})
    max_prompts: int | None = field(default=None, metadata={"help": "Cap on prompts (demos, smoke tests)."})
    policy_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "Model that samples; default model_name_or_path. A larger one distils into it (sec. 3.2.3)."},
    )
    helpfulness_model: str | None = field(default=None, metadata={"help": "Helpfulness RM R_h (stage 2 output)."})
    safety_model: str | None = field(default=None, metadata={"help": "Safety RM R_s (stage 2 output)."})
    reward_chat_format: str | None = field(
        default=None, metadata={"help": "Chat format the RMs were trained with; default chat_format."}
    )
    reward_dtype: str = field(default="float32", metadata={"help": "Reward models' dtype."})
    reward_batch_size: int = field(default=16, metadata={"help": "Pairs per reward-model forward."})
    safety_threshold: float = field(
        default=SAFETY_THRESHOLD, metadata={"help": "R_c uses R_s where sigmoid(r_s) < this (sec. 3.2.3: 0.15)."}
    )
    num_samples: int = field(
        default=10,
        metadata={"help": "K samples per prompt; the paper samples 10-100 (fig. 7). 0: no sampling, distil the pool."},
    )
    temperature: float = field(
        default=1.0,
        metadata={"help": "Sampling T; re-tuned each iteration, [1.2, 1.3] best for the RLHF models (fig. 8)."},
    )
    top_p: float = field(default=1.0, metadata={"help": "Nucleus; 1.0 = temperature only, as in the paper's RS."})
    max_new_tokens: int = field(default=512, metadata={"help": "Answer length budget (the paper is silent)."})
    sampling_backend: str = field(default="hf", metadata={"help": "hf (transformers generate) or vllm."})
    generation_batch_size: int = field(default=32, metadata={"help": "Sequences (prompts x K) decoded together."})
    prompt_chunk_size: int = field(
        default=64, metadata={"help": "Prompts per chunk; samples are saved per chunk, a killed run resumes there."}
    )
    previous_samples: list[str] = field(
        default_factory=list,
        metadata={"help": "samples.jsonl files (or run dirs) of earlier iterations, oldest first; their best are pooled."},
    )
    extra_dialogues: list[str] = field(
        default_factory=list,
        metadata={"help": "JSONL logs of extra fine-tuning rows joined to the pool (GAtt data: kept rows' messages)."},
    )
    temperature_sweep: list[float] = field(
        default_factory=list, metadata={"help": "Temperatures to compare (fig. 8); empty: no sweep."}
    )
    sweep_num_prompts: int = field(default=32, metadata={"help": "Prompts (the first ones) used by the sweep."})
    pick_temperature: bool = field(
        default=False, metadata={"help": "Sample with the sweep's best T (highest mean max-of-K reward)."}
    )
    reward_curve_ks: list[int] = field(
        default_factory=list, metadata={"help": "K values of the max/median curve (fig. 7); default 1, 2, 4, ..., K."}
    )
    eval_prompts_name: str | None = field(
        default=None, metadata={"help": "Held-out prompts: mean R_c of the start and the fine-tuned model."}
    )
    eval_num_samples: int = field(default=4, metadata={"help": "Samples per held-out prompt."})
    eval_temperature: float = field(default=0.6, metadata={"help": "Evaluation sampling T (Llama 2 default 0.6)."})
    eval_top_p: float = field(default=0.9, metadata={"help": "Evaluation top-p (Llama 2 default 0.9)."})
    fine_tune: bool = field(default=True, metadata={"help": "Fine-tune on the pool; false: only sample and pool."})


def resolve_prompts(name: str) -> str:
    from sft.trainer import resolve_dataset

    return resolve_dataset(name)


def validate_rs_inputs(rs_args, model_args, data_args, training_args, have_scorers: bool = False) -> None:
    """Recipe mistakes that can be found before any model loads."""
    check_chat_format(model_args.chat_format)
    if rs_args.reward_chat_format:
        check_chat_format(rs_args.reward_chat_format)
    if rs_args.sampling_backend not in SAMPLING_BACKENDS:
        raise RecipeError(f"unknown sampling_backend '{rs_args.sampling_backend}' (use {', '.join(SAMPLING_BACKENDS)})")
    if rs_args.num_samples < 0:
        raise RecipeError("num_samples must be >= 0")
    if rs_args.num_samples == 0 and not rs_args.previous_samples:
        raise RecipeError("num_samples 0 (distillation) needs previous_samples to pool from")
    for temperature in [rs_args.temperature, *rs_args.temperature_sweep]:
        SamplingParams(num_samples=1, temperature=temperature, top_p=rs_args.top_p, max_new_tokens=rs_args.max_new_tokens)
    SamplingParams(num_samples=max(1, rs_args.eval_num_samples), temperature=rs_args.eval_temperature,
                   top_p=rs_args.eval_top_p, max_new_tokens=rs_args.max_new_tokens)
    if rs_args.pick_temperature and not rs_args.temperature_sweep:
        raise RecipeError("pick_temperature needs a temperature_sweep")
    if rs_args.prompt_chunk_size < 1 or rs_args.generation_batch_size < 1 or rs_args.reward_batch_size < 1:
        raise RecipeError("prompt_chunk_size, generation_batch_size and reward_batch_size must be positive")
    if not have_scorers and not (rs_args.helpfulness_model and rs_args.safety_model):
        raise RecipeError("rejection sampling needs both reward models: set helpfulness_model and safety_model")
    require_file(resolve_prompts(rs_args.prompts_name), "prompts_name")
    models = {"model_name_or_path": model_args.model_name_or_path,
              "policy_model_name_or_path": rs_args.policy_model_name_or_path}
    if not have_scorers:
        models.update(helpfulness_model=rs_args.helpfulness_model, safety_model=rs_args.safety_model)
    for key, name in models.items():
        check_model_path(name, key)
    if rs_args.eval_prompts_name:
        require_file(resolve_prompts(rs_args.eval_prompts_name), "eval_prompts_name")
    for path in rs_args.previous_samples:
        samples_file(path)
    if rs_args.fine_tune:
        from sft.trainer import validate_sft_inputs

        validate_sft_inputs(model_args, data_args, training_args)


def check_model_path(name: str | None, key: str) -> None:
    """A missing local checkpoint fails here, not as a hub lookup error after minutes of sampling."""
    if not name or name.startswith("builtin:") or Path(name).expanduser().exists():
        return
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or name.endswith(".gguf"):
        raise RecipeError(f"'{key}' points to a missing model: {name}")


def samples_file(path: str | Path) -> Path:
    """A previous iteration's samples: the file itself, or samples.jsonl inside its run directory."""
    path = Path(path)
    if path.is_dir():
        path = path / SAMPLES_FILE
    if not path.is_file():
        raise RecipeError(f"previous_samples: no samples file at {path}")
    return path


def load_previous_best(path: str | Path) -> list[dict]:
    """The best sample per prompt of an earlier iteration, by that iteration's scores; each row checked."""
    path = samples_file(path)
    rows = []
    for number, row in read_records(path):
        where = f"{path}:{number}"
        for key in ("messages", "response", "r_c"):
            if key not in row:
                raise DataError(f"{where}: missing field '{key}'")
        if not isinstance(row["response"], str):
            raise DataError(f"{where}: field 'response' must be a string")
        if isinstance(row["r_c"], bool) or not isinstance(row["r_c"], (int, float)):
            raise DataError(f"{where}: field 'r_c' must be a number")
        prompt = row_to_prompt(
            {"messages": row["messages"], "is_safety_prompt": row.get("is_safety_prompt", False),
             "id": row.get("prompt_id", number)}, where, number,
        )
        rows.append({**row, "prompt_id": prompt.id, "messages": prompt.messages,
                     "is_safety_prompt": prompt.is_safety_prompt})
    return best_of_k(rows)


def rescore(rows: list[dict], scorers: tuple[Scorer, Scorer], threshold: float, source: str) -> list[dict]:
    """The same samples with the current reward models' scores (R_c is only comparable under one RM pair)."""
    if not rows:
        return []
    scores = score_samples(scorers[0], scorers[1], [r["messages"] for r in rows], [r["response"] for r in rows],
                           [r["is_safety_prompt"] for r in rows], threshold)
    return [{**row, **score, "source": source} for row, score in zip(rows, scores.rows())]


class Lazy:
    """Build an expensive object (a policy, the reward models) only if some work is left for it."""

    def __init__(self, build: Callable[[], object]):
        self._build, self._value = build, None

    def __call__(self):
        if self._value is None:
            self._value = self._build()
        return self._value

    def release(self) -> None:
        self._value = None
        gc.collect()
        try:
            import torch

            if torch.cuda.is_available():
                torch.cuda.empty_cache()
        except ImportError:
            pass


def sample_and_score(
    prompts: list[PromptRecord],
    path: Path,
    params: SamplingParams,
    engine: Callable[[], tuple[SamplingEngine, object]],
    scorers: Callable[[], tuple[Scorer, Scorer]],
    chat_format: str,
    chunk_size: int,
    threshold: float,
    policy: str,
    desc: str = "rejection sampling",
) -> list[dict]:
    """K scored samples per prompt, appended to `path` per chunk; chunks already complete there are reused.

    Chunk c (prompts c*chunk_size ...) is sampled with seed params.seed + c, so which chunks a killed run had
    finished does not change the result.
    """
    from tqdm.auto import tqdm

    k = params.num_samples
    saved: dict[tuple[int, int], dict] = {}
    for row in read_jsonl_tolerant(path):
        if row.get("temperature") == params.temperature:
            saved[(row["prompt_index"], row["sample_index"])] = row  # a re-run chunk's rows replace a torn one's
    out: list[dict] = []
    starts = range(0, len(prompts), chunk_size)
    for chunk, start in enumerate(tqdm(starts, desc=desc, unit="chunk")):
        indices = range(start, min(start + chunk_size, len(prompts)))
        keys = [(i, s) for i in indices for s in range(k)]
        if all(key in saved for key in keys):
            for i, s in keys:
                if saved[(i, s)].get("prompt_id") != prompts[i].id:
                    raise RecipeError(f"{path}: prompt {i} differs from the prompt file; use a new output_dir")
            out += [saved[key] for key in keys]
            continue
        sampler, tokenizer = engine()
        chunk_prompts = [prompts[i] for i in indices]
        seed = None if params.seed is None else params.seed + chunk
        samples = sampler.generate(
            [encode_prompt(tokenizer, p.messages, chat_format) for p in chunk_prompts],
            SamplingParams(k, params.temperature, params.top_p, params.max_new_tokens, seed),
        )
        samples.sort(key=lambda s: (s.prompt_index, s.sample_index))
        owners = [chunk_prompts[s.prompt_index] for s in samples]
        h, r = scorers()
        scores = score_samples(h, r, [p.messages for p in owners], [s.text for s in samples],
                               [p.is_safety_prompt for p in owners], threshold)
        rows = [
            {
                "prompt_id": owner.id,
                "prompt_index": start + sample.prompt_index,
                "sample_index": sample.sample_index,
                "messages": owner.messages,
                "is_safety_prompt": owner.is_safety_prompt,
                "response": sample.text,
                "num_tokens": len(sample.response_ids),
                "finished": sample.finished,
                "temperature": params.temperature,
                "policy": policy,
                **score,
            }
            for owner, sample, score in zip(owners, samples, scores.rows())
        ]
        append_jsonl(path, rows)
        out += rows
    return out


def sampling_manifest(rs_args, model_args, seed: int) -> dict:
    """The settings that decide what is sampled; an output_dir only ever holds samples of one of them."""
    return {
        "policy": rs_args.policy_model_name_or_path or model_args.model_name_or_path,
        "prompts_name": rs_args.prompts_name, "max_prompts": rs_args.max_prompts,
        "num_samples": rs_args.num_samples, "temperature": rs_args.temperature, "top_p": rs_args.top_p,
        "max_new_tokens": rs_args.max_new_tokens, "seed": seed, "chat_format": model_args.chat_format,
        "prompt_chunk_size": rs_args.prompt_chunk_size, "temperature_sweep": list(rs_args.temperature_sweep),
        "sweep_num_prompts": rs_args.sweep_num_prompts, "pick_temperature": rs_args.pick_temperature,
        "previous_samples": list(rs_args.previous_samples),
    }


def check_sampling_manifest(output_dir: Path, manifest: dict) -> None:
    """Refuse to mix (or silently return) samples of another configuration in one output_dir."""
    path = output_dir / SAMPLING_MANIFEST
    if path.exists():
        saved = json.loads(path.read_text())
        changed = sorted(k for k in manifest if saved.get(k) != manifest[k])
        if changed:
            raise RecipeError(
                f"{output_dir} holds samples made with different settings ({', '.join(changed)}); use a new output_dir"
            )
    else:
        atomic_write_json(path, manifest)


def evaluate_policy(prompts, engine, scorers, params: SamplingParams, chat_format: str, threshold: float) -> dict:
    """Mean reward of a policy's samples on held-out prompts (how the paper judged progress, sec. 3.4)."""
    sampler, tokenizer = engine()
    samples = sampler.generate([encode_prompt(tokenizer, p.messages, chat_format) for p in prompts], params)
    owners = [prompts[s.prompt_index] for s in samples]
    h, r = scorers()
    scores = score_samples(h, r, [p.messages for p in owners], [s.text for s in samples],
                           [p.is_safety_prompt for p in owners], threshold)
    count = max(1, len(scores))
    return {
        "mean_r_c": float(scores.combined.mean()) if len(scores) else 0.0,
        "mean_r_h": float(scores.helpfulness.mean()) if len(scores) else 0.0,
        "mean_r_s": float(scores.safety.mean()) if len(scores) else 0.0,
        "finished_rate": sum(s.finished for s in samples) / count,
        "num_samples": len(samples),
    }


def hf_engine_factory(rs_args, model_args) -> Callable[[str], tuple[SamplingEngine, object]]:
    def build(name: str):
        from accelerate import PartialState

        from alignment.models import load_causal_lm, load_tokenizer

        tokenizer = load_tokenizer(name)
        check_chat_format(model_args.chat_format, tokenizer)
        if rs_args.sampling_backend == "vllm":
            return make_sampling_engine("vllm", name, tokenizer), tokenizer
        model = load_causal_lm(name, model_args.dtype).to(PartialState().device)
        engine = make_sampling_engine("hf", model, tokenizer, batch_size=rs_args.generation_batch_size, progress=False)
        return engine, tokenizer

    return build


def load_reward_scorers(rs_args, model_args) -> tuple[Scorer, Scorer]:
    from reward.scoring import RewardScorer

    chat_format = rs_args.reward_chat_format or model_args.chat_format
    return tuple(
        RewardScorer(name, chat_format=chat_format, dtype=rs_args.reward_dtype, batch_size=rs_args.reward_batch_size)
        for name in (rs_args.helpfulness_model, rs_args.safety_model)
    )


def pool_to_dialogs(pool: list[dict]) -> tuple[list[list[dict]], int]:
    """SFT dialogs from the pool; empty answers (a model that stopped at once) are dropped and counted."""
    dialogs = [r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in pool if r["response"].strip()]
    return dialogs, len(pool) - len(dialogs)


def run_rejection_sampling(
    rs_args,
    model_args,
    data_args,
    training_args,
    *,
    scorers: tuple[Scorer, Scorer] | None = None,
    engine_factory: Callable[[str], tuple[SamplingEngine, object]] | None = None,
) -> dict:
    """Sample, score, select, pool, fine-tune; returns the summary also written to stage_complete.json.

    `scorers` (R_h, R_s) and `engine_factory` (model name -> (engine, tokenizer)) replace the reward models
    and the HF policy, for tests and for callers that hold them already.
    """
    from accelerate import PartialState

    validate_rs_inputs(rs_args, model_args, data_args, training_args, have_scorers=scorers is not None)
    output_dir = Path(training_args.output_dir)
    check_sampling_manifest(output_dir, sampling_manifest(rs_args, model_args, training_args.seed))
    marker = output_dir / COMPLETE_MARKER
    if marker.exists():
        done = json.loads(marker.read_text())
        if done.get("stage") == STAGE:
            print(f"rejection sampling already complete in {output_dir}")
            return done

    prompts = load_prompts(resolve_prompts(rs_args.prompts_name), rs_args.prompts_split)[: rs_args.max_prompts]
    eval_prompts = (load_prompts(resolve_prompts(rs_args.eval_prompts_name), rs_args.prompts_split)
                    if rs_args.eval_prompts_name else [])
    previous = [(str(samples_file(p)), load_previous_best(p)) for p in rs_args.previous_samples]
    policy_name = rs_args.policy_model_name_or_path or model_args.model_name_or_path
    threshold = rs_args.safety_threshold
    factory = engine_factory or hf_engine_factory(rs_args, model_args)
    engines = {name: Lazy(lambda name=name: factory(name)) for name in {policy_name, model_args.model_name_or_path}}
    reward_models = Lazy(lambda: scorers if scorers is not None else load_reward_scorers(rs_args, model_args))
    seed = training_args.seed
    state = PartialState()
    summary: dict = {"stage": STAGE, "policy": policy_name, "student": model_args.model_name_or_path}

    # Other processes wait, then find every chunk on disk and re-generate nothing.
    with state.main_process_first():
        output_dir.mkdir(parents=True, exist_ok=True)
        pool_path = output_dir / POOL_FILE
        if pool_path.exists():
            pool = read_jsonl_tolerant(pool_path)
            report = json.loads((output_dir / "reward_vs_k.json").read_text()) if (output_dir / "reward_vs_k.json").exists() else {}
            temperature = json.loads((output_dir / SAMPLING_MANIFEST).read_text()).get("temperature_used", rs_args.temperature)
        else:
            pool, report, temperature = _sample_and_pool(
                rs_args, model_args, prompts, previous, policy_name, engines, reward_models, seed, threshold,
                output_dir, summary,
            )
        summary.update(temperature=temperature, reward_vs_k=report, pool_size=len(pool),
                       pool_sources=dict(Counter(r.get("source", "current") for r in pool)),
                       pool_mean_r_c=sum(r["r_c"] for r in pool) / max(1, len(pool)))

        eval_path = output_dir / "eval.json"
        evaluation = json.loads(eval_path.read_text()) if eval_path.exists() else {}
        eval_params = SamplingParams(max(1, rs_args.eval_num_samples), rs_args.eval_temperature, rs_args.eval_top_p,
                                     rs_args.max_new_tokens, seed)
        chat_format = model_args.chat_format
        if eval_prompts and "start" not in evaluation:
            evaluation["start"] = evaluate_policy(eval_prompts, engines[model_args.model_name_or_path], reward_models,
                                                  eval_params, chat_format, threshold)
            atomic_write_json(eval_path, evaluation)
    for engine in engines.values():
        engine.release()

    if rs_args.fine_tune:
        dialogs, empty = pool_to_dialogs(pool)
        if not dialogs:
            raise RecipeError("the pool holds no non-empty answer to fine-tune on")
        if rs_args.extra_dialogues:
            from sft.gatt import load_training_dialogues

            dialogs += load_training_dialogues(rs_args.extra_dialogues)
        sft_done = json.loads(marker.read_text()) if marker.exists() else None
        if sft_done is None:
            from sft.trainer import run_sft

            sft_done = run_sft(model_args, data_args, training_args, dialogs=dialogs)
        summary.update(sft=sft_done, empty_answers_dropped=empty)
        with state.main_process_first():
            if eval_prompts and "tuned" not in evaluation:
                tuned = Lazy(lambda: factory(str(output_dir)))
                evaluation["tuned"] = evaluate_policy(eval_prompts, tuned, reward_models, eval_params, chat_format,
                                                      threshold)
                atomic_write_json(eval_path, evaluation)
                tuned.release()
    summary["eval"] = evaluation
    summary["config"] = config_to_dict(rs_args)
    if state.is_main_process:
        atomic_write_json(marker, summary)
    state.wait_for_everyone()
    return summary


def _sample_and_pool(rs_args, model_args, prompts, previous, policy_name, engines, reward_models, seed, threshold,
                     output_dir: Path, summary: dict):
    chat_format = model_args.chat_format
    manifest = sampling_manifest(rs_args, model_args, seed)
    common = dict(engine=engines[policy_name], scorers=reward_models, chat_format=chat_format,
                  chunk_size=rs_args.prompt_chunk_size, threshold=threshold, policy=policy_name)
    temperature = rs_args.temperature
    k = rs_args.num_samples
    if rs_args.temperature_sweep and k > 0:
        sweep_prompts = prompts[: rs_args.sweep_num_prompts]
        by_temperature = {}
        for j, t in enumerate(rs_args.temperature_sweep):
            params = SamplingParams(k, t, rs_args.top_p, rs_args.max_new_tokens, seed + 100_003 * (j + 1))
            by_temperature[t] = sample_and_score(sweep_prompts, output_dir / SWEEP_FILE, params,
                                                 desc=f"temperature sweep T={t}", **common)
        sweep = reward_vs_temperature(by_temperature)
        write_reward_vs_temperature(output_dir, sweep)
        summary["reward_vs_temperature"] = sweep
        if rs_args.pick_temperature:
            temperature = pick_temperature(sweep)
            print(f"temperature sweep: sampling at T={temperature}")

    current: list[dict] = []
    report: dict = {}
    if k > 0:
        params = SamplingParams(k, temperature, rs_args.top_p, rs_args.max_new_tokens, seed)
        rows = sample_and_score(prompts, output_dir / SAMPLES_FILE, params, **common)
        report = reward_vs_k(rows, rs_args.reward_curve_ks or default_ks(k))
        write_reward_vs_k(output_dir, report)
        current = [{**row, "source": "current"} for row in best_of_k(rows)]
        summary["mean_r_c_all_samples"] = sum(r["r_c"] for r in rows) / max(1, len(rows))
    # Newest first, so a tie keeps the newer policy's answer.
    earlier = [rescore(rows, reward_models(), threshold, source) for source, rows in reversed(previous)]
    pool = pool_best([current, *earlier])
    atomic_write_text(output_dir / POOL_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool))
    atomic_write_json(output_dir / SAMPLING_MANIFEST, {**manifest, "temperature_used": temperature})
    return pool, report, temperature
