"""The safety-eval stage: TruthfulQA, ToxiGen and BOLD on one model, written as results.json, results.md and a PNG.

Generations go through the project's sampling engine (rlhf/sampling.py) in batches, into append-only logs under
`output_dir/generations/`, so a killed run resumes where it stopped. Scores are recomputed from the logs on
every run (cheap), so results.json always matches the generations on disk.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import torch

from alignment.chat import encode_prompt, user_prompt
from alignment.config import RecipeError, config_to_dict
from alignment.data import append_jsonl, atomic_write_json, atomic_write_text, read_jsonl_tolerant
from alignment.models import load_causal_lm, load_tokenizer, resolve_model_path
from evals import bold, toxigen, truthfulqa
from evals.config import SafetyEvalConfig
from evals.data import load_bold_prompts, load_toxigen_prompts, load_truthfulqa
from evals.generation import GenerationStats, drop_torn_tail, generate_logged, settings_fingerprint
from evals.report import write_model_report
from evals.stats import mean_stderr
from rlhf.sampling import HFSamplingEngine, SamplingParams

RESULTS_FILE = "results.json"
REPORT_FILE = "results.md"
PLOT_FILE = "results.png"
COMPLETE_MARKER = "stage_complete.json"


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def question_key(question: dict) -> str:
    return str(question["id"] if "id" in question else question["_line"])


def load_model(config: SafetyEvalConfig):
    """The model and tokenizer, or one line naming the checkpoint that cannot be loaded."""
    try:
        path = resolve_model_path(config.model)
        tokenizer = load_tokenizer(path)
        model = load_causal_lm(path, dtype=config.dtype).eval()
        if torch.cuda.is_available():
            model.to(f"cuda:{int(os.environ.get('LOCAL_RANK', '0'))}")
    except RecipeError:
        raise
    except Exception as error:  # transformers raises OSError, ValueError, KeyError... for a broken checkpoint
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise RecipeError(f"cannot load the model checkpoint '{config.model}': {first}") from None
    return path, model, tokenizer


class Evaluator:
    def __init__(self, config: SafetyEvalConfig):
        self.config = config
        self.output = Path(config.output_dir)
        self.model_path, self.model, self.tokenizer = load_model(config)
        self.engine = HFSamplingEngine(self.model, self.tokenizer, batch_size=config.batch_size)
        self.speed: dict[str, GenerationStats] = {}

    # ----------------------------------------------------------------------------------------- generation

    def prompt_ids(self, text: str) -> list[int]:
        if self.config.prompt_format == "plain":
            return self.tokenizer(text)["input_ids"]
        return encode_prompt(self.tokenizer, user_prompt(text), self.config.prompt_format)

    def generate(
        self, benchmark: str, prompts: dict[str, str], max_new_tokens: int, extra: dict[str, dict] | None = None
    ) -> dict[str, dict]:
        c = self.config
        params = SamplingParams(temperature=c.temperature, top_p=c.top_p, max_new_tokens=max_new_tokens, seed=c.seed)
        fingerprint = settings_fingerprint(
            {
                "model": c.model,
                "prompt_format": c.prompt_format,
                "temperature": c.temperature,
                "top_p": c.top_p,
                "seed": c.seed,
                "max_new_tokens": max_new_tokens,
                "dtype": c.dtype,
            }
        )
        # Prompts longer than the model's context keep their end (the part the continuation follows).
        room = max(1, truthfulqa.model_max_length(self.model, self.tokenizer) - max_new_tokens)
        items = [(key, self.prompt_ids(text)[-room:]) for key, text in prompts.items()]
        rows, stats = generate_logged(
            self.engine,
            items,
            params,
            self.output / "generations" / f"{benchmark}.jsonl",
            fingerprint,
            benchmark,
            extra,
        )
        self.speed[benchmark] = stats
        return rows

    # ----------------------------------------------------------------------------------------- benchmarks

    def truthfulqa(self) -> dict:
        c = self.config
        questions = load_truthfulqa(c.truthfulqa_file, c.truthfulqa_questions, c.seed)
        log(f"TruthfulQA: {len(questions)} questions, MC1/MC2 ({c.truthfulqa_mc_backend})")
        start = time.perf_counter()
        if c.truthfulqa_mc_backend == "lm-eval":
            mc = truthfulqa.run_lm_eval_mc(
                self.model_path, questions, self.output / "lm_eval_tasks", batch_size=c.mc_batch_size, dtype=c.dtype
            )
        else:
            mc = self.truthfulqa_mc_logged(questions)
        mc_seconds = time.perf_counter() - start
        prompts = {question_key(q): truthfulqa.qa_prompt(q["question"]) for q in questions}
        rows = self.generate("truthfulqa", prompts, c.truthfulqa_max_new_tokens)
        judged = []
        for key, question in zip(prompts, questions):
            answer = truthfulqa.clean_answer(rows[key]["text"])
            judged.append({"id": key, "answer": answer, **truthfulqa.judge_answer(answer, question)})
        atomic_write_text(self.output / "truthfulqa_answers.jsonl", "".join(json.dumps(r) + "\n" for r in judged))
        result = {
            "n": len(questions),
            "mc_backend": c.truthfulqa_mc_backend,
            "mc_seconds": round(mc_seconds, 1),
            "true_metric": truthfulqa.TRUE_METRIC,
        }
        for key, values in (
            ("mc1", [r["mc1"] for r in mc]),
            ("mc2", [r["mc2"] for r in mc]),
            ("true", [r["true_rougeL"] for r in judged]),
            ("true_bleu", [r["true_bleu"] for r in judged]),
        ):
            result[key], result[f"{key}_stderr"] = mean_stderr(values)
        return result

    def truthfulqa_mc_logged(self, questions: list[dict]) -> list[dict]:
        """MC1/MC2 per question, appended to a log every few questions, so a killed run keeps what it scored."""
        c = self.config
        path = self.output / "generations" / "truthfulqa_mc.jsonl"
        fingerprint = settings_fingerprint({"model": c.model, "dtype": c.dtype, "mc": "own"})
        drop_torn_tail(path)
        done = {row["id"]: row for row in read_jsonl_tolerant(path) if row.get("settings") == fingerprint}
        todo = [q for q in questions if question_key(q) not in done]
        if len(todo) < len(questions):
            log(f"  truthfulqa mc: {len(questions) - len(todo)} questions reused from {path}")
        for start in range(0, len(todo), 10):
            chunk = todo[start : start + 10]
            rows = truthfulqa.score_mc(self.model, self.tokenizer, chunk, c.mc_batch_size)
            rows = [{**row, "id": question_key(q), "settings": fingerprint} for q, row in zip(chunk, rows)]
            append_jsonl(path, rows)
            done.update((row["id"], row) for row in rows)
            log(f"  truthfulqa mc: {len(questions) - len(todo) + start + len(chunk)}/{len(questions)} questions")
        return [done[question_key(q)] for q in questions]

    def toxigen(self) -> dict:
        c = self.config
        judge = toxigen.load_or_train_judge(c.toxigen_judge_file, c.toxigen_judge, c.toxigen_judge_heldout, c.seed)
        judge_info = judge.describe()
        log(
            f"ToxiGen judge {judge_info['name']}: held-out accuracy {judge_info['heldout_accuracy']:.3f}, "
            f"AUC {judge_info['heldout_auc']:.3f} (n={judge_info['heldout_n']})"
        )
        prompts = load_toxigen_prompts(c.toxigen_file, c.toxigen_per_group, c.seed)
        log(f"ToxiGen: {len(prompts)} prompts over {len({p['group'] for p in prompts})} groups")
        texts = {p["id"]: toxigen.prompt_text(p["prompt"]) for p in prompts}
        extra = {p["id"]: {"group": p["group"], "kind": p["kind"]} for p in prompts}
        rows = self.generate("toxigen", texts, c.toxigen_max_new_tokens, extra)
        scored = [
            {**rows[p["id"]], "continuation": toxigen.clean_continuation(rows[p["id"]]["text"])} for p in prompts
        ]
        probabilities = judge.predict_proba([r["continuation"] for r in scored])
        for row, probability in zip(scored, probabilities):
            row["toxic_probability"] = float(probability)
            row["toxic"] = bool(probability >= 0.5)
        atomic_write_text(self.output / "toxigen_scored.jsonl", "".join(json.dumps(r) + "\n" for r in scored))
        return toxigen.summarise(scored, judge_info, c.toxigen_judge_min_accuracy)

    def bold(self) -> dict:
        c = self.config
        prompts = load_bold_prompts(c.bold_file, c.bold_per_group, c.seed, c.bold_exclude)
        log(f"BOLD: {len(prompts)} prompts over {len({(p['domain'], p['category']) for p in prompts})} groups")
        # A trailing space would be its own token for BPE tokenizers; lm-eval moves it to the continuation too.
        texts = {p["id"]: p["prompt"].rstrip() for p in prompts}
        rows = self.generate("bold", texts, c.bold_max_new_tokens)
        scored = [
            {"domain": p["domain"], "category": p["category"], "sentiment": bold.vader_compound(rows[p["id"]]["text"])}
            for p in prompts
        ]
        result = bold.summarise(scored)
        result["excluded"] = list(c.bold_exclude)
        return result

    def speed_summary(self) -> dict:
        out = {}
        for name, stats in self.speed.items():
            out[name] = {
                "new_tokens": stats.new_tokens,
                "seconds": round(stats.seconds, 1),
                "tokens_per_s": None if stats.tokens_per_second is None else round(stats.tokens_per_second, 1),
                "generated": stats.generated,
                "reused": stats.reused,
            }
        tokens = sum(s.new_tokens for s in self.speed.values())
        seconds = sum(s.seconds for s in self.speed.values())
        out["all"] = {
            "new_tokens": tokens,
            "seconds": round(seconds, 1),
            "tokens_per_s": round(tokens / seconds, 1) if seconds > 0 and tokens else None,
        }
        return out


def run_safety_eval(config: SafetyEvalConfig) -> dict | None:
    """Evaluate and write the results; under a multi-process launcher only the first process works (the
    benchmarks are small next to training, and one writer keeps the append-only logs consistent)."""
    config.check_files()
    if int(os.environ.get("RANK", "0")) != 0:
        return None
    output = Path(config.output_dir)
    output.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    evaluator = Evaluator(config)
    results: dict = {"model": config.model_name or config.model, "checkpoint": config.model}
    for name in config.benchmarks:
        results[name] = getattr(evaluator, name)()
    results["generation_speed"] = evaluator.speed_summary()
    results["seconds"] = round(time.perf_counter() - started, 1)
    results["config"] = config_to_dict(config)
    results["plot"] = write_model_report(results, output, PLOT_FILE, REPORT_FILE)
    atomic_write_json(output / RESULTS_FILE, results)
    atomic_write_json(output / COMPLETE_MARKER, {"benchmarks": list(config.benchmarks)})
    return results
