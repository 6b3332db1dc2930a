"""Stage 3, rejection-sampling fine-tuning (arXiv 2307.09288, sec. 3.2.3).

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
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import PartialState
from tqdm.auto import tqdm

from alignment.chat import check_chat_format, encode_prompt
from alignment.config import (
    AT_LEAST_ONE,
    NON_NEGATIVE,
    OPEN_UNIT,
    POSITIVE,
    TOP_P,
    DataError,
    RecipeError,
    config_to_dict,
    require_file,
)
from alignment.data import (
    PromptRecord,
    append_jsonl,
    atomic_write_json,
    atomic_write_text,
    load_prompts,
    read_jsonl_tolerant,
    read_records,
    resolve_dataset,
    row_to_prompt,
)
from alignment.models import load_causal_lm, load_tokenizer
from alignment.stages import COMPLETE_MARKER
from alignment.world.scorers import world_judge
from reward.scoring import RewardScorer
from rlhf.rewards import SAFETY_THRESHOLD
from rlhf.rs_reports import write_reward_vs_k, write_reward_vs_temperature
from rlhf.rs_select import (
    best_of_k,
    default_ks,
    is_finished,
    pick_temperature,
    pool_best,
    prompt_key,
    reward_vs_k,
    reward_vs_temperature,
    top_of_k,
)
from rlhf.sampling import SAMPLING_BACKENDS, SamplingEngine, SamplingParams, make_sampling_engine
from rlhf.scoring import Scorer, score_samples
from sft.gatt import load_training_dialogues
from sft.trainer import run_sft, validate_sft_inputs

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
    max_prompts: int | None = field(
        default=None, metadata={"range": AT_LEAST_ONE, "help": "Cap on prompts (demos, smoke tests)."}
    )
    policy_model_name_or_path: str | None = field(
        default=None,
        metadata={
            "help": "Model that samples; default model_name_or_path. A larger one distils into it (sec. 3.2.3)."
        },
    )
    helpfulness_model: str | None = field(default=None, metadata={"help": "Helpfulness RM R_h (stage 2 output)."})
    safety_model: str | None = field(default=None, metadata={"help": "Safety RM R_s (stage 2 output)."})
    reward_chat_format: str | None = field(
        default=None, metadata={"help": "Chat format the RMs were trained with; default chat_format."}
    )
    reward_dtype: str = field(default="float32", metadata={"help": "Reward models' dtype."})
    reward_batch_size: int = field(
        default=16, metadata={"range": AT_LEAST_ONE, "help": "Pairs per reward-model forward."}
    )
    safety_threshold: float = field(
        default=SAFETY_THRESHOLD,
        metadata={"range": OPEN_UNIT, "help": "R_c uses R_s where sigmoid(r_s) < this (sec. 3.2.3: 0.15)."},
    )
    num_samples: int = field(
        default=10,
        metadata={
            "range": NON_NEGATIVE,
            "help": "K samples per prompt; the paper samples 10-100 (fig. 7). 0: no sampling, distil the pool.",
        },
    )
    temperature: float = field(
        default=1.0,
        metadata={
            "range": POSITIVE,
            "help": "Sampling T; re-tuned each iteration, [1.2, 1.3] best for the RLHF models (fig. 8).",
        },
    )
    top_p: float = field(
        default=1.0, metadata={"range": TOP_P, "help": "Nucleus; 1.0 = temperature only, as in the paper's RS."}
    )
    max_new_tokens: int = field(
        default=512, metadata={"range": AT_LEAST_ONE, "help": "Answer length budget (the paper is silent)."}
    )
    sampling_backend: str = field(default="hf", metadata={"help": "hf (transformers generate) or vllm."})
    generation_batch_size: int = field(
        default=32, metadata={"range": AT_LEAST_ONE, "help": "Sequences (prompts x K) decoded together."}
    )
    prompt_chunk_size: int = field(
        default=64,
        metadata={
            "range": AT_LEAST_ONE,
            "help": "Prompts per chunk; samples are saved per chunk, a killed run resumes there.",
        },
    )
    previous_samples: list[str] = field(
        default_factory=list,
        metadata={
            "help": "samples.jsonl files (or run dirs) of earlier iterations, oldest first; their top samples "
            "are re-scored by the current RMs and pooled."
        },
    )
    previous_top_k: int = field(
        default=3,
        metadata={
            "help": "Samples per prompt taken from each earlier iteration (by its own scores) for re-scoring: "
            "the current RMs may rank them otherwise (sec. 3.2.3: top samples of all prior iterations)."
        },
    )
    drop_unfinished: bool = field(
        default=True,
        metadata={
            "help": "Leave answers cut at max_new_tokens out of best-of-K and the pool (the RMs would score a "
            "cut answer as finished, and fine-tuning would teach it to stop there)."
        },
    )
    extra_dialogues: list[str] = field(
        default_factory=list,
        metadata={"help": "JSONL logs of extra fine-tuning rows joined to the pool (GAtt data: kept rows' messages)."},
    )
    temperature_sweep: list[float] = field(
        default_factory=list,
        metadata={"range": POSITIVE, "help": "Temperatures to compare (fig. 8); empty: no sweep."},
    )
    sweep_num_prompts: int = field(
        default=32, metadata={"range": AT_LEAST_ONE, "help": "Prompts (the first ones) used by the sweep."}
    )
    pick_temperature: bool = field(
        default=False, metadata={"help": "Sample with the sweep's best T (highest mean max-of-K reward)."}
    )
    reward_curve_ks: list[int] = field(
        default_factory=list,
        metadata={
            "range": AT_LEAST_ONE,
            "help": "K values of the max/median curve (fig. 7); default 1, 2, 4, ..., K.",
        },
    )
    eval_prompts_name: str | None = field(
        default=None, metadata={"help": "Held-out prompts: mean R_c of the start and the fine-tuned model."}
    )
    eval_num_samples: int = field(default=4, metadata={"range": AT_LEAST_ONE, "help": "Samples per held-out prompt."})
    eval_temperature: float = field(
        default=0.6, metadata={"range": POSITIVE, "help": "Evaluation sampling T (Llama 2 default 0.6)."}
    )
    eval_top_p: float = field(
        default=0.9, metadata={"range": TOP_P, "help": "Evaluation top-p (Llama 2 default 0.9)."}
    )
    fine_tune: bool = field(default=True, metadata={"help": "Fine-tune on the pool; false: only sample and pool."})


def validate_rs_inputs(rs_args, model_args, data_args, training_args, have_scorers: bool = False) -> None:
    """Recipe mistakes that can be found before any model loads."""
    check_chat_format(model_args.chat_format)
    if rs_args.reward_chat_format:
        check_chat_format(rs_args.reward_chat_format)
    if rs_args.sampling_backend not in SAMPLING_BACKENDS:
        raise RecipeError(
            f"unknown sampling_backend '{rs_args.sampling_backend}' (use {', '.join(SAMPLING_BACKENDS)})"
        )
    if rs_args.num_samples < 0:
        raise RecipeError("num_samples must be >= 0")
    if rs_args.num_samples == 0 and not rs_args.previous_samples:
        raise RecipeError("num_samples 0 (distillation) needs previous_samples to pool from")
    for temperature in [rs_args.temperature, *rs_args.temperature_sweep]:
        SamplingParams(
            num_samples=1, temperature=temperature, top_p=rs_args.top_p, max_new_tokens=rs_args.max_new_tokens
        )
    SamplingParams(
        num_samples=max(1, rs_args.eval_num_samples),
        temperature=rs_args.eval_temperature,
        top_p=rs_args.eval_top_p,
        max_new_tokens=rs_args.max_new_tokens,
    )
    if rs_args.pick_temperature and not rs_args.temperature_sweep:
        raise RecipeError("pick_temperature needs a temperature_sweep")
    if rs_args.prompt_chunk_size < 1 or rs_args.generation_batch_size < 1 or rs_args.reward_batch_size < 1:
        raise RecipeError("prompt_chunk_size, generation_batch_size and reward_batch_size must be positive")
    if not have_scorers and not (rs_args.helpfulness_model and rs_args.safety_model):
        raise RecipeError("rejection sampling needs both reward models: set helpfulness_model and safety_model")
    require_file(resolve_dataset(rs_args.prompts_name), "prompts_name")
    models = {
        "model_name_or_path": model_args.model_name_or_path,
        "policy_model_name_or_path": rs_args.policy_model_name_or_path,
    }
    if not have_scorers:
        models.update(helpfulness_model=rs_args.helpfulness_model, safety_model=rs_args.safety_model)
    for key, name in models.items():
        check_model_path(name, key)
    if rs_args.eval_prompts_name:
        require_file(resolve_dataset(rs_args.eval_prompts_name), "eval_prompts_name")
    for path in rs_args.previous_samples:
        samples_file(path)
    if rs_args.fine_tune:
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


def load_previous_top(path: str | Path, top: int = 1, drop_unfinished: bool = True) -> list[dict]:
    """Each prompt's `top` samples of an earlier iteration, by that iteration's scores; each row checked."""
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
            {
                "messages": row["messages"],
                "is_safety_prompt": row.get("is_safety_prompt", False),
                "id": row.get("prompt_id", number),
            },
            where,
            number,
        )
        rows.append(
            {**row, "prompt_id": prompt.id, "messages": prompt.messages, "is_safety_prompt": prompt.is_safety_prompt}
        )
    return top_of_k(rows, top, drop_unfinished)


def rescore(rows: list[dict], scorers: tuple[Scorer, Scorer], threshold: float, source: str) -> list[dict]:
    """The same samples with the current reward models' scores (R_c is only comparable under one RM pair)."""
    if not rows:
        return []
    scores = score_samples(
        scorers[0],
        scorers[1],
        [r["messages"] for r in rows],
        [r["response"] for r in rows],
        [r["is_safety_prompt"] for r in rows],
        threshold,
    )
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
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def sampling_manifest(rs_args, model_args, seed: int) -> dict:
    """The settings that decide what is sampled; an output_dir only ever holds samples of one of them."""
    return {
        "policy": rs_args.policy_model_name_or_path or model_args.model_name_or_path,
        "prompts_name": rs_args.prompts_name,
        "max_prompts": rs_args.max_prompts,
        "num_samples": rs_args.num_samples,
        "temperature": rs_args.temperature,
        "top_p": rs_args.top_p,
        "max_new_tokens": rs_args.max_new_tokens,
        "seed": seed,
        "chat_format": model_args.chat_format,
        "prompt_chunk_size": rs_args.prompt_chunk_size,
        "temperature_sweep": list(rs_args.temperature_sweep),
        "sweep_num_prompts": rs_args.sweep_num_prompts,
        "pick_temperature": rs_args.pick_temperature,
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


def hf_engine_factory(rs_args, model_args) -> Callable[[str], tuple[SamplingEngine, object]]:
    def build(name: str):
        tokenizer = load_tokenizer(name)
        check_chat_format(model_args.chat_format, tokenizer)
        if rs_args.sampling_backend == "vllm":
            return make_sampling_engine("vllm", name, tokenizer), tokenizer
        model = load_causal_lm(name, model_args.dtype).to(PartialState().device)
        engine = make_sampling_engine("hf", model, tokenizer, batch_size=rs_args.generation_batch_size, progress=False)
        return engine, tokenizer

    return build


def load_reward_scorers(rs_args, model_args) -> tuple[Scorer, Scorer]:
    chat_format = rs_args.reward_chat_format or model_args.chat_format
    return tuple(
        world_judge(name)
        or RewardScorer(
            name, chat_format=chat_format, dtype=rs_args.reward_dtype, batch_size=rs_args.reward_batch_size
        )
        for name in (rs_args.helpfulness_model, rs_args.safety_model)
    )


def pool_to_dialogs(pool: list[dict]) -> tuple[list[list[dict]], int]:
    """SFT dialogs from the pool; empty answers (a model that stopped at once) are dropped and counted."""
    dialogs = [
        r["messages"] + [{"role": "assistant", "content": r["response"]}] for r in pool if r["response"].strip()
    ]
    return dialogs, len(pool) - len(dialogs)


class RejectionSampler:
    """One rejection-sampling stage: sample, score, select, pool, fine-tune (`run`).

    `scorers` (R_h, R_s) and `engine_factory` (model name -> (engine, tokenizer)) replace the reward models
    and the HF policy, for tests and for callers that hold them already. Models load lazily, only for work
    that is left, so a resumed run that finds every chunk on disk loads no policy.
    """

    def __init__(
        self,
        rs_args,
        model_args,
        data_args,
        training_args,
        *,
        scorers: tuple[Scorer, Scorer] | None = None,
        engine_factory: Callable[[str], tuple[SamplingEngine, object]] | None = None,
    ):
        validate_rs_inputs(rs_args, model_args, data_args, training_args, have_scorers=scorers is not None)
        self.rs_args, self.model_args = rs_args, model_args
        self.data_args, self.training_args = data_args, training_args
        self.output_dir = Path(training_args.output_dir)
        self.seed = training_args.seed
        self.chat_format = model_args.chat_format
        self.threshold = rs_args.safety_threshold
        self.policy_name = rs_args.policy_model_name_or_path or model_args.model_name_or_path
        self.factory = engine_factory or hf_engine_factory(rs_args, model_args)
        self.engines = {
            name: Lazy(lambda name=name: self.factory(name))
            for name in {self.policy_name, model_args.model_name_or_path}
        }
        self.reward_models = Lazy(lambda: scorers if scorers is not None else load_reward_scorers(rs_args, model_args))
        self.summary: dict = {"stage": STAGE, "policy": self.policy_name, "student": model_args.model_name_or_path}

    # ----------------------------------------------------------------------------------------------- sampling

    def sample_and_score(
        self, prompts: list[PromptRecord], path: Path, params: SamplingParams, desc: str = "rejection sampling"
    ) -> list[dict]:
        """K scored samples per prompt, appended to `path` per chunk; chunks already complete there are reused.

        Chunk c (prompts c*chunk_size ...) is sampled with seed params.seed + c, so which chunks a killed run had
        finished does not change the result.
        """
        k = params.num_samples
        chunk_size = self.rs_args.prompt_chunk_size
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
            seed = None if params.seed is None else params.seed + chunk
            rows = self._sample_chunk(
                [prompts[i] for i in indices],
                start,
                SamplingParams(k, params.temperature, params.top_p, params.max_new_tokens, seed),
            )
            append_jsonl(path, rows)
            out += rows
        return out

    def _sample_chunk(self, chunk_prompts: list[PromptRecord], start: int, params: SamplingParams) -> list[dict]:
        samples, owners, scores = self.generate_scored(self.engines[self.policy_name], chunk_prompts, params)
        return [
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
                "policy": self.policy_name,
                **score,
            }
            for owner, sample, score in zip(owners, samples, scores.rows())
        ]

    def generate_scored(self, engine: Lazy, prompts: list[PromptRecord], params: SamplingParams):
        """(samples in prompt order, each sample's prompt, their R_h / R_s / R_c scores)."""
        sampler, tokenizer = engine()
        samples = sampler.generate([encode_prompt(tokenizer, p.messages, self.chat_format) for p in prompts], params)
        samples.sort(key=lambda s: (s.prompt_index, s.sample_index))
        owners = [prompts[s.prompt_index] for s in samples]
        h, r = self.reward_models()
        scores = score_samples(
            h,
            r,
            [p.messages for p in owners],
            [s.text for s in samples],
            [p.is_safety_prompt for p in owners],
            self.threshold,
        )
        return samples, owners, scores

    def sweep_temperature(self, prompts: list[PromptRecord]) -> float:
        """Figure 8's sweep on the first prompts; returns the temperature to sample with."""
        rs_args = self.rs_args
        by_temperature = {}
        for j, temperature in enumerate(rs_args.temperature_sweep):
            params = SamplingParams(
                rs_args.num_samples, temperature, rs_args.top_p, rs_args.max_new_tokens, self.seed + 100_003 * (j + 1)
            )
            by_temperature[temperature] = self.sample_and_score(
                prompts[: rs_args.sweep_num_prompts],
                self.output_dir / SWEEP_FILE,
                params,
                desc=f"temperature sweep T={temperature}",
            )
        sweep = reward_vs_temperature(by_temperature)
        write_reward_vs_temperature(self.output_dir, sweep)
        self.summary["reward_vs_temperature"] = sweep
        if not rs_args.pick_temperature:
            return rs_args.temperature
        temperature = pick_temperature(sweep)
        print(f"temperature sweep: sampling at T={temperature}")
        return temperature

    def sample_and_pool(self, prompts: list[PromptRecord]) -> tuple[list[dict], dict, float]:
        """(pool, reward-vs-K report, temperature used): best-of-K pooled with earlier iterations' top samples."""
        rs_args = self.rs_args
        k = rs_args.num_samples
        temperature = self.sweep_temperature(prompts) if rs_args.temperature_sweep and k > 0 else rs_args.temperature
        current: list[dict] = []
        report: dict = {}
        if k > 0:
            params = SamplingParams(k, temperature, rs_args.top_p, rs_args.max_new_tokens, self.seed)
            rows = self.sample_and_score(prompts, self.output_dir / SAMPLES_FILE, params)
            report = reward_vs_k(rows, rs_args.reward_curve_ks or default_ks(k))
            write_reward_vs_k(self.output_dir, report)
            current = [{**row, "source": "current"} for row in best_of_k(rows, rs_args.drop_unfinished)]
            self.summary.update(self.selection_statistics(rows, current))
        # Newest first, so a tie keeps the newer policy's answer.
        earlier = [
            rescore(
                load_previous_top(path, rs_args.previous_top_k, rs_args.drop_unfinished),
                self.reward_models(),
                self.threshold,
                str(samples_file(path)),
            )
            for path in reversed(rs_args.previous_samples)
        ]
        pool = pool_best([current, *earlier], rs_args.drop_unfinished)
        atomic_write_text(self.output_dir / POOL_FILE, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in pool))
        atomic_write_json(
            self.output_dir / SAMPLING_MANIFEST,
            {**sampling_manifest(rs_args, self.model_args, self.seed), "temperature_used": temperature},
        )
        return pool, report, temperature

    @staticmethod
    def selection_statistics(rows: list[dict], winners: list[dict]) -> dict:
        """What best-of-K saw and chose: cut answers, and winners scored by R_s on a prompt that is not a safety
        prompt (the gate fired), whose R_c is on R_s's scale while their rivals' are on R_h's."""
        prompts = {prompt_key(r["messages"]) for r in rows}
        gated = [w for w in winners if w.get("use_safety") and not w.get("is_safety_prompt")]
        return {
            "mean_r_c_all_samples": sum(r["r_c"] for r in rows) / max(1, len(rows)),
            "unfinished_share": sum(not is_finished(r) for r in rows) / max(1, len(rows)),
            "prompts_without_finished_sample": len(prompts) - len(winners),
            "gated_winner_share": len(gated) / max(1, len(winners)),
            "gated_sample_share": sum(bool(r.get("use_safety")) and not r.get("is_safety_prompt") for r in rows)
            / max(1, len(rows)),
        }

    # --------------------------------------------------------------------------------------------- evaluation

    def evaluate(self, prompts: list[PromptRecord], engine: Lazy) -> dict:
        """Mean reward of a policy's samples on held-out prompts (how the paper judged progress, sec. 3.4)."""
        rs_args = self.rs_args
        params = SamplingParams(
            max(1, rs_args.eval_num_samples),
            rs_args.eval_temperature,
            rs_args.eval_top_p,
            rs_args.max_new_tokens,
            self.seed,
        )
        samples, _, scores = self.generate_scored(engine, prompts, params)
        count = max(1, len(scores))
        return {
            "mean_r_c": float(scores.combined.mean()) if len(scores) else 0.0,
            "mean_r_h": float(scores.helpfulness.mean()) if len(scores) else 0.0,
            "mean_r_s": float(scores.safety.mean()) if len(scores) else 0.0,
            "finished_rate": sum(s.finished for s in samples) / count,
            "num_samples": len(samples),
        }

    # -------------------------------------------------------------------------------------------------- run

    def run(self) -> dict:
        """Sample, score, select, pool, fine-tune; returns the summary also written to stage_complete.json."""
        rs_args, output_dir = self.rs_args, self.output_dir
        check_sampling_manifest(output_dir, sampling_manifest(rs_args, self.model_args, self.seed))
        marker = output_dir / COMPLETE_MARKER
        if marker.exists():
            done = json.loads(marker.read_text())
            if done.get("stage") == STAGE:
                print(f"rejection sampling already complete in {output_dir}")
                return done
        prompts = load_prompts(resolve_dataset(rs_args.prompts_name), rs_args.prompts_split)[: rs_args.max_prompts]
        eval_prompts = (
            load_prompts(resolve_dataset(rs_args.eval_prompts_name), rs_args.prompts_split)
            if rs_args.eval_prompts_name
            else []
        )
        state = PartialState()
        eval_path = output_dir / "eval.json"
        # Other processes wait, then find every chunk on disk and re-generate nothing.
        with state.main_process_first():
            output_dir.mkdir(parents=True, exist_ok=True)
            pool, report, temperature = self._pool(prompts)
            self.summary.update(
                temperature=temperature,
                reward_vs_k=report,
                pool_size=len(pool),
                pool_sources=dict(Counter(r.get("source", "current") for r in pool)),
                pool_mean_r_c=sum(r["r_c"] for r in pool) / max(1, len(pool)),
            )
            evaluation = json.loads(eval_path.read_text()) if eval_path.exists() else {}
            if eval_prompts and "start" not in evaluation:
                evaluation["start"] = self.evaluate(eval_prompts, self.engines[self.model_args.model_name_or_path])
                atomic_write_json(eval_path, evaluation)
        for engine in self.engines.values():
            engine.release()

        if rs_args.fine_tune:
            self.fine_tune(pool, marker)
            with state.main_process_first():
                if eval_prompts and "tuned" not in evaluation:
                    tuned = Lazy(lambda: self.factory(str(output_dir)))
                    evaluation["tuned"] = self.evaluate(eval_prompts, tuned)
                    atomic_write_json(eval_path, evaluation)
                    tuned.release()
        self.summary["eval"] = evaluation
        self.summary["config"] = config_to_dict(rs_args)
        if state.is_main_process:
            atomic_write_json(marker, self.summary)
        state.wait_for_everyone()
        return self.summary

    def _pool(self, prompts: list[PromptRecord]) -> tuple[list[dict], dict, float]:
        """The pool of an earlier (killed) run of this stage, or a new one."""
        pool_path = self.output_dir / POOL_FILE
        if not pool_path.exists():
            return self.sample_and_pool(prompts)
        report_path = self.output_dir / "reward_vs_k.json"
        report = json.loads(report_path.read_text()) if report_path.exists() else {}
        manifest = json.loads((self.output_dir / SAMPLING_MANIFEST).read_text())
        return read_jsonl_tolerant(pool_path), report, manifest.get("temperature_used", self.rs_args.temperature)

    def fine_tune(self, pool: list[dict], marker: Path) -> None:
        dialogs, empty = pool_to_dialogs(pool)
        if not dialogs:
            raise RecipeError(
                "the pool holds no non-empty, finished answer to fine-tune on "
                "(raise max_new_tokens, or set drop_unfinished: false)"
            )
        if self.rs_args.extra_dialogues:
            dialogs += load_training_dialogues(self.rs_args.extra_dialogues)
        sft_done = json.loads(marker.read_text()) if marker.exists() else None
        if sft_done is None:
            sft_done = run_sft(self.model_args, self.data_args, self.training_args, dialogs=dialogs)
        self.summary.update(sft=sft_done, empty_answers_dropped=empty)


def run_rejection_sampling(
    rs_args,
    model_args,
    data_args,
    training_args,
    *,
    scorers: tuple[Scorer, Scorer] | None = None,
    engine_factory: Callable[[str], tuple[SamplingEngine, object]] | None = None,
) -> dict:
    """Sample, score, select, pool, fine-tune; returns the summary also written to stage_complete.json."""
    return RejectionSampler(
        rs_args, model_args, data_args, training_args, scorers=scorers, engine_factory=engine_factory
    ).run()
