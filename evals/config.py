"""The safety-eval stage's recipe: which model, which data files, how many prompts, how to generate."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from alignment.config import RecipeError

BENCHMARKS = ("truthfulqa", "toxigen", "bold")
PROMPT_FORMATS = ("plain", "llama2", "model")
MC_BACKENDS = ("own", "lm-eval")
JUDGES = ("minilm-tfidf-ensemble", "minilm-logreg", "tfidf-logreg")


@dataclass
class SafetyEvalConfig:
    model: str = field(default="builtin:tiny-llama", metadata={"help": "Checkpoint dir, GGUF or builtin:<name>."})
    model_name: str | None = field(default=None, metadata={"help": "Name in the results (default: `model`)."})
    benchmarks: list[str] = field(
        default_factory=lambda: list(BENCHMARKS), metadata={"help": "Any of truthfulqa, toxigen, bold."}
    )
    dtype: str = field(default="float32", metadata={"help": "float32, bfloat16 or float16."})
    prompt_format: str = field(
        default="plain",
        metadata={
            "help": "How generation prompts are shown: 'plain' text to continue (as for pretrained models), "
            "or inside a user turn of the 'llama2' or the tokenizer's own ('model') chat template. "
            "TruthfulQA MC always scores plain text, as lm-eval does."
        },
    )
    seed: int = field(default=0, metadata={"help": "Seed of the prompt samples (and of sampling, temperature > 0)."})
    batch_size: int = field(default=16, metadata={"help": "Prompts per generation batch."})
    temperature: float = field(default=0.0, metadata={"help": "0 = greedy, so versions compare without noise."})
    top_p: float = field(default=0.9, metadata={"help": "Nucleus sampling when temperature > 0."})
    # TruthfulQA
    truthfulqa_file: str = field(
        default="data/truthfulqa/truthfulqa.sample.jsonl",
        metadata={"help": "TruthfulQA JSONL (fields as ../shared/data/truthfulqa)."},
    )
    truthfulqa_questions: int = field(default=0, metadata={"help": "Seeded sample of questions; 0 = all 817."})
    truthfulqa_mc_backend: str = field(
        default="own",
        metadata={
            "help": "'own': lm-eval's truthfulqa_mc1/mc2 definition with the shared few-shot prompt computed "
            "once per question (a test checks it against lm-eval); 'lm-eval': run lm-eval itself."
        },
    )
    truthfulqa_max_new_tokens: int = field(default=48, metadata={"help": "Answer length cap (greedy QA generation)."})
    mc_batch_size: int = field(default=32, metadata={"help": "Answer choices scored per forward pass."})
    # ToxiGen
    toxigen_file: str = field(
        default="data/toxigen/toxigen_prompts.sample.jsonl",
        metadata={"help": "ToxiGen prompts JSONL[.gz] with group, kind, llama2_group."},
    )
    toxigen_per_group: int = field(
        default=4, metadata={"help": "Prompts per group (half hate, half neutral); 0 = all."}
    )
    toxigen_max_new_tokens: int = field(default=32, metadata={"help": "Continuation length cap."})
    toxigen_judge_file: str = field(
        default="data/toxigen/toxigen_hosseini2023_subset.sample.jsonl",
        metadata={"help": "Human-labelled sentences (hate/neutral) the toxicity judge is trained on."},
    )
    toxigen_judge: str = field(
        default="minilm-tfidf-ensemble",
        metadata={
            "help": "'minilm-tfidf-ensemble' (MiniLM-layer MLP + TF-IDF logistic regression), 'minilm-logreg' "
            "or 'tfidf-logreg' (evals/toxigen.py)."
        },
    )
    toxigen_judge_heldout: float = field(default=0.2, metadata={"help": "Share of the labelled rows held out."})
    toxigen_judge_min_accuracy: float = field(
        default=0.8, metadata={"help": "Below this held-out accuracy the ToxiGen figures are withheld."}
    )
    # BOLD
    bold_file: str = field(
        default="data/bold/bold_prompts.sample.jsonl",
        metadata={"help": "BOLD prompts JSONL[.gz] with domain, category, prompt."},
    )
    bold_per_group: int = field(default=2, metadata={"help": "Prompts per group (category); 0 = all."})
    bold_max_new_tokens: int = field(default=32, metadata={"help": "Continuation length cap."})
    bold_exclude: list[str] = field(
        default_factory=lambda: ["hinduism", "atheism"],
        metadata={"help": "Groups left out, as the paper does (12 and 29 prompts)."},
    )
    output_dir: str = field(default="runs/safety_eval", metadata={"help": "results.json, results.md, PNG, logs."})

    def __post_init__(self) -> None:
        for name in self.benchmarks:
            if name not in BENCHMARKS:
                raise RecipeError(f"unknown benchmark '{name}' (use any of {', '.join(BENCHMARKS)})")
        if self.prompt_format not in PROMPT_FORMATS:
            raise RecipeError(f"prompt_format must be one of {', '.join(PROMPT_FORMATS)}, got '{self.prompt_format}'")
        if self.truthfulqa_mc_backend not in MC_BACKENDS:
            raise RecipeError(f"truthfulqa_mc_backend must be one of {', '.join(MC_BACKENDS)}")
        if self.toxigen_judge not in JUDGES:
            raise RecipeError(f"toxigen_judge must be one of {', '.join(JUDGES)}, got '{self.toxigen_judge}'")
        if not 0.0 < self.toxigen_judge_heldout < 1.0:
            raise RecipeError("toxigen_judge_heldout must be between 0 and 1")

    def check_files(self) -> None:
        """A missing data file fails before any model loads, naming the file and its recipe key."""
        keys = {
            "truthfulqa": ["truthfulqa_file"],
            "toxigen": ["toxigen_file", "toxigen_judge_file"],
            "bold": ["bold_file"],
        }
        for benchmark in self.benchmarks:
            for key in keys[benchmark]:
                path = getattr(self, key)
                if not Path(path).is_file():
                    raise RecipeError(f"recipe key '{key}' points to a missing data file: {path}")
