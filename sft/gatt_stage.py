"""The GAtt stage: (build a small world SFT model,) sample GAtt data, fine-tune through the SFT trainer, evaluate.

    python recipes/gatt.py --config recipes/tiny/gatt.yaml --output_dir DIR

Steps, each skipped when its output is complete, so a killed run resumes:

1. ``base_sft/``: the model without GAtt. With ``model_name_or_path`` empty, a tiny Llama initialised from
   scratch (the builtin tokenizer) is fine-tuned on ``instruction_demonstrations`` of the embedded world:
   instructions followed when they sit in the current turn, never kept over turns. Otherwise that model is used.
2. ``gatt_data.jsonl``: GAtt rows sampled with the base model (``sft.gatt.build_gatt_data``), append-only.
3. ``gatt_sft/``: the base model fine-tuned on the kept GAtt rows plus replayed base demonstrations (the paper's
   GAtt data joins the RLHF fine-tuning set rather than replacing it), through ``sft.trainer.run_sft``.
4. Evaluation on held-out world dialogues of ``eval_turns`` turns, the instruction (full form) as the system
   message of turn 1, each model answering greedily after its own earlier answers: adherence per turn (gold
   judge ``follows``), gold helpfulness of the content per turn, and the attention mass on the system-message
   tokens per layer and turn (the Figure 10 analogue). ``adherence.json``, ``adherence.md``,
   ``adherence.png``, ``attention.json``, ``attention.png``.

   With user dialogues (``source`` and ``eval_source`` files, e.g. a real model) there is no gold judge: each
   evaluation dialogue carries a checkable instruction (``sft.gatt.text_follows``), the answer quality reported
   is the share of well-formed answers (not ``sft.gatt.degenerate``), and the attention figure is drawn for the
   llama2 format only (it locates the ``<<SYS>>`` block).
"""

from __future__ import annotations

import json
import math
import random
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from matplotlib.figure import Figure
from tqdm.auto import tqdm

from alignment.chat import B_INST, B_SYS, E_INST, E_SYS, dialog_segments, encode_prompt, user_prompt
from alignment.config import RecipeError, config_to_dict, parse_recipe
from alignment.data import atomic_write_json, atomic_write_text
from alignment.models import load_causal_lm, load_tokenizer, resolve_model_path
from alignment.tiny import TinyLlamaSpec, init_llama
from alignment.world import ideal_response
from alignment.world.instructions import (
    INSTRUCTION_KINDS,
    follows,
    instruction_demonstrations,
    instruction_helpfulness,
    sample_dialogues,
    sample_instructions,
)
from rlhf.sampling import HFSamplingEngine, SamplingParams
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments
from sft.gatt import (
    build_gatt_data,
    check_word,
    load_user_dialogues,
    text_follows,
    training_dialogues,
    well_formed,
    world_dialogues,
)
from sft.trainer import run_sft

COMPLETE_MARKER = "stage_complete.json"


@dataclass
class GattConfig:
    output_dir: str = field(default="runs/gatt", metadata={"help": "Where every step writes."})
    model_name_or_path: str = field(
        default="",
        metadata={
            "help": "Model to apply GAtt to (the 'without GAtt' baseline); empty: build a tiny "
            "world SFT model from scratch."
        },
    )
    chat_format: str = field(default="llama2", metadata={"help": "llama2 or model."})
    seed: int = field(default=0, metadata={"help": "Seed of data, sampling and training."})
    dtype: str = field(
        default="float32",
        metadata={"help": "Weights' dtype when sampling and evaluating (float32, bfloat16 or float16)."},
    )
    source: str = field(
        default="builtin:world",
        metadata={"help": "builtin:world, or a JSONL of {'system': instruction, 'messages': [...], 'terse'?: str}."},
    )
    instruction_kinds: list[str] = field(
        default_factory=lambda: ["hobby", "end_word"],
        metadata={"help": "World instruction kinds (hobby, end_word, capitals, language)."},
    )
    max_instruction_parts: int = field(default=2, metadata={"help": "Instructions combine 1..this many kinds."})
    gatt_dialogues: int = field(
        default=400, metadata={"help": "Dialogues sampled for GAtt rows (world: drawn; file source: its first N)."}
    )
    min_turns: int = field(default=2, metadata={"help": "Shortest GAtt dialogue (turns)."})
    max_turns: int = field(default=8, metadata={"help": "Longest GAtt dialogue (turns)."})
    terse_share: float = field(default=0.5, metadata={"help": "Share of rows with the terse instruction (half)."})
    use_checker: bool = field(
        default=True, metadata={"help": "Drop dialogues whose answers fail the gold judge (or the row's 'check')."}
    )
    well_formed_only: bool = field(
        default=False,
        metadata={
            "help": "Also reject sampled answers that loop, have under 5 words, share no content word with the "
            "question or repeat an earlier answer (sft.gatt.well_formed)."
        },
    )
    keep_passed_turns: bool = field(
        default=False,
        metadata={"help": "Keep a dialogue whose turn no sample passed, cut after its last passed turn."},
    )
    num_samples: int = field(default=2, metadata={"help": "Samples per turn; the first passing the checker is kept."})
    temperature: float = field(default=0.7, metadata={"help": "Sampling temperature of GAtt answers."})
    top_p: float = field(default=0.9, metadata={"help": "Top-p of GAtt answers."})
    max_new_tokens: int = field(default=48, metadata={"help": "Longest answer sampled or evaluated."})
    generation_batch_size: int = field(default=64, metadata={"help": "Sequences decoded together."})
    chunk_size: int = field(default=64, metadata={"help": "Dialogues per append to gatt_data.jsonl."})
    replay_dialogues: int = field(default=400, metadata={"help": "Base demonstrations mixed into the GAtt fine-tune."})
    self_replay_dialogues: int = field(
        default=0,
        metadata={
            "help": "With a given model: dialogues of its own greedy answers to the source's questions (no "
            "instruction, well-formed only) mixed into the GAtt fine-tune, so it keeps answering the current "
            "question (the paper mixes GAtt data into the RLHF fine-tuning set; a model without its data at hand "
            "replays itself)."
        },
    )
    base_dialogues: int = field(default=3000, metadata={"help": "World demonstrations of the from-scratch base SFT."})
    base_hidden_size: int = field(default=128, metadata={"help": "Width of the from-scratch base model."})
    base_intermediate_size: int = field(default=352, metadata={"help": "SwiGLU width of the from-scratch base model."})
    base_layers: int = field(default=4, metadata={"help": "Layers of the from-scratch base model."})
    base_heads: int = field(default=4, metadata={"help": "Attention heads of the from-scratch base model."})
    base_kv_heads: int = field(default=2, metadata={"help": "KV heads of the from-scratch base model."})
    eval_source: str = field(
        default="",
        metadata={
            "help": "With a file source: held-out dialogues for the evaluation (JSONL like source; every row "
            "has a 'check' and at least eval_turns user turns)."
        },
    )
    eval_dialogues: int = field(default=100, metadata={"help": "Held-out dialogues per model in the evaluation."})
    eval_turns: int = field(default=8, metadata={"help": "Turns per evaluation dialogue (N)."})
    attention_dialogues: int = field(default=8, metadata={"help": "Dialogues averaged in the attention figure."})
    data_only: bool = field(
        default=False,
        metadata={
            "help": "Only sample gatt_data.jsonl with model_name_or_path (the pipeline joins it to an iteration's "
            "fine-tuning); no training, no evaluation."
        },
    )
    sft: dict = field(default_factory=dict, metadata={"help": "recipes/sft.py settings of the base SFT."})
    gatt_sft: dict = field(default_factory=dict, metadata={"help": "recipes/sft.py settings of the GAtt fine-tune."})

    def __post_init__(self) -> None:
        bad = [k for k in self.instruction_kinds if k not in INSTRUCTION_KINDS]
        if bad or not self.instruction_kinds:
            raise RecipeError(
                f"instruction_kinds: unknown kind '{bad[0] if bad else ''}' (use {', '.join(INSTRUCTION_KINDS)})"
            )
        if not 1 <= self.min_turns <= self.max_turns:
            raise RecipeError(f"need 1 <= min_turns <= max_turns, got {self.min_turns} and {self.max_turns}")
        if not 0.0 <= self.terse_share <= 1.0:
            raise RecipeError(f"terse_share must lie in [0, 1], got {self.terse_share}")
        if self.eval_turns < 1 or self.eval_dialogues < 1:
            raise RecipeError("eval_turns and eval_dialogues must be at least 1")
        if self.source != "builtin:world" and not self.data_only and not self.eval_source:
            raise RecipeError("eval_source: a file source needs held-out evaluation dialogues (or data_only: true)")


def sft_args(section: dict, model: str, output_dir: Path, chat_format: str, seed: int):
    """The SFT stage's dataclasses for one training step, from a recipe section (validated like recipes/sft.py)."""
    values = {
        **section,
        "model_name_or_path": model,
        "output_dir": str(output_dir),
        "chat_format": chat_format,
        "seed": seed,
    }
    return parse_recipe((ModelArguments, DataArguments, Llama2SFTConfig), argv=[], recipe=values)


def _done(folder: Path) -> bool:
    return (folder / COMPLETE_MARKER).exists()


def _train(section: dict, model: str, folder: Path, config: GattConfig, dialogs: list[list[dict]]) -> dict:
    if _done(folder):
        return json.loads((folder / COMPLETE_MARKER).read_text())
    model_args, data_args, training_args = sft_args(section, model, folder, config.chat_format, config.seed)
    return run_sft(model_args, data_args, training_args, dialogs=dialogs)


def build_base_model(config: GattConfig, out: Path) -> str:
    """The model without GAtt: the given one, or a tiny Llama SFT-trained from scratch on the world's demos."""
    if config.model_name_or_path:
        return config.model_name_or_path
    base = out / "base_sft"
    if _done(base):
        return str(base)
    init = out / "base_init"
    if not (init / "config.json").exists():
        tokenizer = load_tokenizer(resolve_model_path("builtin:tiny-llama"))
        spec = TinyLlamaSpec(
            vocab_size=len(tokenizer),
            hidden_size=config.base_hidden_size,
            intermediate_size=config.base_intermediate_size,
            num_hidden_layers=config.base_layers,
            num_attention_heads=config.base_heads,
            num_key_value_heads=config.base_kv_heads,
            max_position_embeddings=1024,
            seed=config.seed,
        )
        tmp = out / ".base_init.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        init_llama(tokenizer, spec).save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        tmp.rename(init)
    demos = instruction_demonstrations(
        config.base_dialogues,
        config.seed,
        config.max_turns,
        tuple(config.instruction_kinds),
        config.max_instruction_parts,
    )
    _train(config.sft, str(init), base, config, [d["messages"] for d in demos])
    return str(base)


def gatt_source(config: GattConfig):
    if config.source == "builtin:world":
        return world_dialogues(
            config.gatt_dialogues,
            (config.min_turns, config.max_turns),
            config.seed + 11,
            tuple(config.instruction_kinds),
            config.max_instruction_parts,
        )
    if not Path(config.source).is_file():
        raise RecipeError(f"source: file not found: {config.source}")
    return load_user_dialogues(config.source)[: config.gatt_dialogues]


def sample_gatt_data(
    config: GattConfig, model_path: str, out: Path, stop_after_chunks: int | None = None
) -> list[dict]:
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, dtype=config.dtype)
    engine = HFSamplingEngine(model, tokenizer, batch_size=config.generation_batch_size)
    params = SamplingParams(
        num_samples=config.num_samples,
        temperature=config.temperature,
        top_p=config.top_p,
        max_new_tokens=config.max_new_tokens,
    )
    return build_gatt_data(
        engine,
        tokenizer,
        gatt_source(config),
        out / "gatt_data.jsonl",
        params=params,
        chat_format=config.chat_format,
        terse_share=config.terse_share,
        use_checker=config.use_checker,
        chunk_size=config.chunk_size,
        seed=config.seed,
        well_formed_only=config.well_formed_only,
        keep_passed_turns=config.keep_passed_turns,
        stop_after_chunks=stop_after_chunks,
    )


def self_replay(config: GattConfig, model_path: str, out: Path) -> list[list[dict]]:
    """``self_replay_dialogues`` dialogues chaining the model's own greedy answers to single questions of the
    GAtt source (no system message, every answer trained), from its ``well_formed`` answers only. The answers are
    cached in ``self_replay_answers.json``, so a resumed run does not generate them again."""
    cache = out / "self_replay_answers.json"
    questions = list(dict.fromkeys(user for dialogue in gatt_source(config) for user in dialogue.users))
    if cache.exists():
        answers = json.loads(cache.read_text())
    else:
        tokenizer = load_tokenizer(model_path)
        model = load_causal_lm(model_path, dtype=config.dtype)
        engine = HFSamplingEngine(model, tokenizer, batch_size=config.generation_batch_size)
        params = SamplingParams(num_samples=1, temperature=0.0, max_new_tokens=config.max_new_tokens)
        prompts = [encode_prompt(tokenizer, user_prompt(q), config.chat_format) for q in questions]
        samples = sorted(engine.generate(prompts, params), key=lambda sample: sample.prompt_index)
        answers = {q: sample.text for q, sample in zip(questions, samples)}
        atomic_write_json(cache, answers)
    pairs = [(q, answers[q]) for q in questions if q in answers and well_formed(answers[q], q)]
    if not pairs:
        raise RecipeError(f"self-replay: none of the model's {len(questions)} answers is well formed")
    rng = random.Random(config.seed + 13)
    dialogs = []
    for _ in range(config.self_replay_dialogues):
        turns = rng.sample(pairs, min(len(pairs), rng.randint(config.min_turns, config.max_turns)))
        dialog = []
        for question, answer in turns:
            dialog += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        dialogs.append(dialog)
    return dialogs


def gatt_finetune_dialogues(config: GattConfig, rows: list[dict], out: Path) -> list[list[dict]]:
    dialogs = training_dialogues(rows)
    if config.self_replay_dialogues and config.model_name_or_path:
        dialogs += self_replay(config, config.model_name_or_path, out)
    if config.replay_dialogues and not config.model_name_or_path:
        replay = instruction_demonstrations(
            config.replay_dialogues,
            config.seed + 7,
            config.max_turns,
            tuple(config.instruction_kinds),
            config.max_instruction_parts,
        )
        dialogs += [d["messages"] for d in replay]
    return dialogs


# ------------------------------------------------------------------------------------------------ evaluation


def on_world(config: GattConfig) -> bool:
    return config.source == "builtin:world"


def eval_items(config: GattConfig) -> list[dict]:
    """Held-out dialogues of eval_turns turns with an instruction each: world dialogues (seeded apart from
    training), or the first eval_dialogues rows of eval_source, with their checks."""
    if on_world(config):
        prompts = sample_dialogues(config.eval_dialogues, config.eval_turns, config.seed + 101, split="heldout")
        instructions = sample_instructions(
            config.eval_dialogues, config.seed + 102, tuple(config.instruction_kinds), config.max_instruction_parts
        )
        return [{"prompts": p, "instruction": i} for p, i in zip(prompts, instructions)]
    if not Path(config.eval_source).is_file():
        raise RecipeError(f"eval_source: file not found: {config.eval_source}")
    items = []
    for dialogue in load_user_dialogues(config.eval_source)[: config.eval_dialogues]:
        if dialogue.check is None or len(dialogue.users) < config.eval_turns:
            raise RecipeError(
                f"eval_source {config.eval_source}: dialogue '{dialogue.id}' needs a 'check' and at least "
                f"{config.eval_turns} user turns (eval_turns)"
            )
        items.append(
            {
                "prompts": [{"prompt": user} for user in dialogue.users[: config.eval_turns]],
                "instruction": {"full": dialogue.instruction},
                "check": dialogue.check,
            }
        )
    return items


def item_follows(item: dict, answer: str) -> bool:
    if "check" in item:
        return text_follows(item["check"], answer)
    return follows(item["instruction"], answer)


def quality_key(items: list[dict]) -> str:
    """What the answer quality is: gold helpfulness on the world, the well-formed share on user dialogues."""
    return "well_formed" if items and "check" in items[0] else "helpfulness"


QUALITY_LABELS = {
    "helpfulness": "gold helpfulness of the content",
    "well_formed": "well-formed answers (on topic, no loop, no repeat)",
}


def answer_quality(item: dict, turn: int, answers: list[str]) -> float:
    """Quality of a dialogue's answer at ``turn`` (earlier answers matter on user dialogues: a repeat is not
    well formed)."""
    if "check" in item:
        question = item["prompts"][turn]["prompt"]
        return float(well_formed(answers[turn], question, answers[:turn], check_word(item["check"])))
    return instruction_helpfulness(item["prompts"][turn], item["instruction"], answers[turn])


def eval_messages(item: dict, answers: list[str], upto: int) -> list[dict]:
    messages = [{"role": "system", "content": item["instruction"]["full"]}]
    for t, prompt in enumerate(item["prompts"][:upto]):
        messages.append({"role": "user", "content": prompt["prompt"]})
        if t < len(answers):
            messages.append({"role": "assistant", "content": answers[t]})
    return messages


def rollout(model, tokenizer, items: list[dict], config: GattConfig) -> list[list[str]]:
    """Each model answers turn by turn, greedily, after its own earlier answers."""
    engine = HFSamplingEngine(model, tokenizer, batch_size=config.generation_batch_size)
    params = SamplingParams(num_samples=1, temperature=0.0, max_new_tokens=config.max_new_tokens)
    answers: list[list[str]] = [[] for _ in items]
    for turn in tqdm(range(config.eval_turns), desc="GAtt evaluation", unit="turn"):
        prompts = [
            encode_prompt(tokenizer, eval_messages(item, answers[i], turn + 1), config.chat_format)
            for i, item in enumerate(items)
        ]
        for sample in engine.generate(prompts, params):
            answers[sample.prompt_index].append(sample.text)
    return answers


def plain_context_adherence(model, tokenizer, items: list[dict], config: GattConfig) -> list[float]:
    """Per dialogue, whether the answer at the last turn follows the instruction when every earlier answer is the
    plain ideal one (not following it): the instruction can then only come from the system message, not from
    copying the model's own earlier answers."""
    engine = HFSamplingEngine(model, tokenizer, batch_size=config.generation_batch_size)
    params = SamplingParams(num_samples=1, temperature=0.0, max_new_tokens=config.max_new_tokens)
    prompts = []
    for item in items:
        plain = [ideal_response(p) for p in item["prompts"][: config.eval_turns - 1]]
        prompts.append(encode_prompt(tokenizer, eval_messages(item, plain, config.eval_turns), config.chat_format))
    samples = sorted(engine.generate(prompts, params), key=lambda s: s.prompt_index)
    return [float(follows(item["instruction"], s.text)) for item, s in zip(items, samples)]


def _mean_stderr(values: list[float]) -> tuple[float, float]:
    n = len(values)
    mean = sum(values) / n
    var = sum((v - mean) ** 2 for v in values) / (n - 1) if n > 1 else 0.0
    return mean, math.sqrt(var / n)


def dialogue_scores(
    items: list[dict], answers: list[list[str]], turns: int
) -> tuple[list[list[float]], list[list[float]]]:
    """Per turn, per dialogue: (adherence 0/1, answer quality: gold helpfulness of the content on the world, 1 for
    a well-formed answer on user dialogues)."""
    follow = [[float(item_follows(item, a[t])) for item, a in zip(items, answers)] for t in range(turns)]
    quality = [[answer_quality(item, t, a) for item, a in zip(items, answers)] for t in range(turns)]
    return follow, quality


def score_rollouts(items: list[dict], answers: list[list[str]], turns: int) -> dict:
    follow, helpful = dialogue_scores(items, answers, turns)
    adherence, adherence_se = zip(*(_mean_stderr(values) for values in follow))
    helpfulness, helpfulness_se = zip(*(_mean_stderr(values) for values in helpful))
    return {
        "adherence": list(adherence),
        "adherence_stderr": list(adherence_se),
        "helpfulness": list(helpfulness),
        "helpfulness_stderr": list(helpfulness_se),
    }


def paired_differences(items: list[dict], without: list[list[str]], with_: list[list[str]], turns: int) -> dict:
    """With minus without GAtt on the same dialogues, mean and standard error of the per-dialogue difference
    (pairing removes the dialogue-to-dialogue spread): turn-1 adherence, last-turn adherence, mean adherence over
    the turns from the tenth on (when there are ten), and the answer quality (``quality_key``) averaged over the
    turns."""
    follow_0, help_0 = dialogue_scores(items, without, turns)
    follow_1, help_1 = dialogue_scores(items, with_, turns)

    def difference(a: list[float], b: list[float]) -> dict:
        mean, stderr = _mean_stderr([y - x for x, y in zip(a, b)])
        return {"mean": mean, "stderr": stderr}

    def over_turns(values: list[list[float]]) -> list[float]:
        return [sum(column) / turns for column in zip(*values)]

    paired = {
        "turn_1_adherence": difference(follow_0[0], follow_1[0]),
        "last_turn_adherence": difference(follow_0[-1], follow_1[-1]),
        f"mean_{quality_key(items)}": difference(over_turns(help_0), over_turns(help_1)),
    }
    if turns >= 10:
        late = turns - 9
        without_late = [sum(column) / late for column in zip(*follow_0[9:])]
        with_late = [sum(column) / late for column in zip(*follow_1[9:])]
        paired["turns_10_on_adherence"] = difference(without_late, with_late)
    return paired


def system_token_span(tokenizer, item: dict, first_user: str) -> tuple[int, int]:
    """[start, end) of the system text's tokens inside the first llama2 segment (BOS included in positions)."""
    system = item["instruction"]["full"]
    text = f"{B_INST} {B_SYS}{system}{E_SYS}{first_user.strip()} {E_INST}"
    start_char = text.index(system)
    end_char = start_char + len(system)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    offset = 1 if tokenizer.bos_token_id is not None else 0
    inside = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if b > start_char and a < end_char]
    return offset + inside[0], offset + inside[-1] + 1


def attention_to_system(
    model_path: str, items: list[dict], answers: list[list[str]], config: GattConfig
) -> dict[str, list[list[float]]]:
    """Attention mass on the system-message tokens from the tokens of each turn's answer, [layer][turn], averaged
    over answer tokens and dialogues: "mean_heads" (all heads) and "max_heads" (the head that attends most, per
    answer token: the paper's Figure 10 shows such maxima). Eager attention, so the weights are returned."""
    if config.chat_format != "llama2":
        raise RecipeError("the attention figure needs chat_format llama2 (it locates the <<SYS>> block)")
    tokenizer = load_tokenizer(model_path)
    model = load_causal_lm(model_path, attn_implementation="eager").eval()
    layers = model.config.num_hidden_layers
    totals = {name: [[0.0] * config.eval_turns for _ in range(layers)] for name in ("mean_heads", "max_heads")}
    count = 0
    for item, dialogue_answers in list(zip(items, answers))[: config.attention_dialogues]:
        messages = eval_messages(item, dialogue_answers, config.eval_turns)
        segments = dialog_segments(tokenizer, messages, config.chat_format)
        ids, answer_spans, position = [], [], 0
        for seg_ids, is_answer in segments:
            if is_answer:
                answer_spans.append((position, position + len(seg_ids)))
            ids += seg_ids
            position += len(seg_ids)
        sys_start, sys_end = system_token_span(tokenizer, item, item["prompts"][0]["prompt"])
        with torch.no_grad():
            output = model(input_ids=torch.tensor([ids]), output_attentions=True)
        for layer, weights in enumerate(output.attentions):  # [1, heads, q, k]
            per_head = weights[0, :, :, sys_start:sys_end].sum(-1)  # [heads, q]
            for name, mass in (("mean_heads", per_head.mean(0)), ("max_heads", per_head.max(0).values)):
                for turn, (a, b) in enumerate(answer_spans):
                    totals[name][layer][turn] += float(mass[a:b].mean())
        count += 1
    return {name: [[v / count for v in row] for row in total] for name, total in totals.items()}


def write_figures(out: Path, result: dict, attention: dict | None) -> None:
    turns = list(range(1, result["turns"] + 1))
    quality = result["quality_measure"]
    fig = Figure(figsize=(11, 4))
    axes = fig.subplots(1, 2)
    for key, label, colour in (("without_gatt", "without GAtt", "tab:grey"), ("with_gatt", "with GAtt", "tab:blue")):
        axes[0].errorbar(
            turns, result[key], yerr=result[f"{key}_stderr"], fmt="-o", capsize=3, label=label, color=colour
        )
        axes[1].errorbar(
            turns,
            result[quality][key],
            yerr=result[quality][f"{key}_stderr"],
            fmt="-o",
            capsize=3,
            label=label,
            color=colour,
        )
    axes[0].set_ylabel("instruction adherence (gold judge)")
    axes[1].set_ylabel(QUALITY_LABELS[quality])
    for axis in axes:
        axis.set_xlabel("turn")
        axis.set_ylim(-0.02, 1.02)
        axis.grid(alpha=0.3)
        axis.legend()
    axes[0].set_title(f"System instruction kept over turns (n={result['n_dialogues']} dialogues, +-1 s.e.)")
    fig.tight_layout()
    fig.savefig(out / "adherence.png", dpi=110)
    if attention is None:
        return

    fig = Figure(figsize=(11, 7.5))
    axes = fig.subplots(2, 2, sharey="row", sharex=True)
    rows = ((axes[0], "max_heads", "most attentive head"), (axes[1], "mean_heads", "mean of heads"))
    for row_axes, name, what in rows:
        for axis, key, title in (
            (row_axes[0], "without_gatt", "without GAtt"),
            (row_axes[1], "with_gatt", "with GAtt"),
        ):
            for layer, values in enumerate(attention[key][name]):
                axis.plot(turns, values, "-o", label=f"layer {layer + 1}")
            axis.set_title(f"{title}: attention on the system message ({what})", fontsize=10)
            axis.grid(alpha=0.3)
        row_axes[0].set_ylabel(f"attention mass ({what})")
    for axis in axes[1]:
        axis.set_xlabel(f"turn (mean over its answer tokens, {attention['n_dialogues']} dialogues)")
    axes[0][1].legend()
    fig.tight_layout()
    fig.savefig(out / "attention.png", dpi=110)


def adherence_table(result: dict) -> str:
    quality = result["quality_measure"]
    name = quality.replace("_", "-")
    lines = [
        f"| turn | adherence without GAtt | adherence with GAtt | {name} without | {name} with |",
        "|---|---|---|---|---|",
    ]
    h = result[quality]
    for t in range(result["turns"]):
        lines.append(
            f"| {t + 1} | {result['without_gatt'][t]:.3f} +- {result['without_gatt_stderr'][t]:.3f} "
            f"| {result['with_gatt'][t]:.3f} +- {result['with_gatt_stderr'][t]:.3f} "
            f"| {h['without_gatt'][t]:.3f} +- {h['without_gatt_stderr'][t]:.3f} "
            f"| {h['with_gatt'][t]:.3f} +- {h['with_gatt_stderr'][t]:.3f} |"
        )
    plain = result.get("last_turn_plain_context")
    if plain:
        lines.append("")
        lines.append(
            f"Turn {result['turns']} after plain (non-following) earlier answers: without GAtt "
            f"{plain['without_gatt']['mean']:.3f} +- {plain['without_gatt']['stderr']:.3f}, with GAtt "
            f"{plain['with_gatt']['mean']:.3f} +- {plain['with_gatt']['stderr']:.3f} "
            f"(n={result['n_dialogues']})."
        )
    paired = result.get("with_minus_without")
    if paired:
        lines.append("")
        lines.append(f"With minus without GAtt, paired per dialogue (n={result['n_dialogues']}):")
        for key, label in (
            ("turn_1_adherence", "turn-1 adherence"),
            ("last_turn_adherence", f"turn-{result['turns']} adherence"),
            ("turns_10_on_adherence", f"adherence averaged over turns 10-{result['turns']}"),
            (f"mean_{quality}", f"{QUALITY_LABELS[quality]}, averaged over the turns"),
        ):
            if key not in paired:
                continue
            lines.append(f"- {label}: {paired[key]['mean']:+.3f} +- {paired[key]['stderr']:.3f}")
    return "\n".join(lines) + "\n"


def evaluate_models(config: GattConfig, out: Path, without_path: str, with_path: str) -> dict:
    items = eval_items(config)
    quality = quality_key(items)
    draw_attention = config.chat_format == "llama2"
    scores, attention, plain, answers = {}, {"n_dialogues": min(config.attention_dialogues, len(items))}, {}, {}
    for key, path in (("without_gatt", without_path), ("with_gatt", with_path)):
        cache = out / f"eval_{key}.json"
        if cache.exists():
            saved = json.loads(cache.read_text())
        else:
            tokenizer = load_tokenizer(path)
            model = load_causal_lm(path, dtype=config.dtype)
            rolled = rollout(model, tokenizer, items, config)
            saved = {
                "answers": rolled,
                "scores": score_rollouts(items, rolled, config.eval_turns),
                # The plain earlier answers are the world's ideal ones; user dialogues have none.
                "plain_context": (
                    plain_context_adherence(model, tokenizer, items, config) if on_world(config) else None
                ),
                "attention": attention_to_system(path, items, rolled, config) if draw_attention else None,
                "model": path,
            }
            atomic_write_json(cache, saved)
        scores[key], attention[key], plain[key] = saved["scores"], saved["attention"], saved["plain_context"]
        answers[key] = saved["answers"]
    result = {
        "turns": config.eval_turns,
        "n_dialogues": len(items),
        "with_gatt": scores["with_gatt"]["adherence"],
        "without_gatt": scores["without_gatt"]["adherence"],
        "with_gatt_stderr": scores["with_gatt"]["adherence_stderr"],
        "without_gatt_stderr": scores["without_gatt"]["adherence_stderr"],
        "quality_measure": quality,
        quality: {
            "with_gatt": scores["with_gatt"]["helpfulness"],
            "without_gatt": scores["without_gatt"]["helpfulness"],
            "with_gatt_stderr": scores["with_gatt"]["helpfulness_stderr"],
            "without_gatt_stderr": scores["without_gatt"]["helpfulness_stderr"],
        },
        "with_minus_without": paired_differences(
            items, answers["without_gatt"], answers["with_gatt"], config.eval_turns
        ),
        "models": {"without_gatt": without_path, "with_gatt": with_path},
    }
    if on_world(config):
        result["instruction_kinds"] = list(config.instruction_kinds)
        # Adherence at the last turn when every earlier answer is the plain (non-following) ideal answer.
        result["last_turn_plain_context"] = {
            key: dict(zip(("mean", "stderr"), _mean_stderr(plain[key]))) for key in plain
        }
    else:
        result["eval_source"] = config.eval_source
    atomic_write_json(out / "adherence.json", result)
    atomic_write_text(out / "adherence.md", adherence_table(result))
    if draw_attention:
        atomic_write_json(out / "attention.json", attention)
    write_figures(out, result, attention if draw_attention else None)
    return result


def run_gatt(config: GattConfig) -> dict:
    out = Path(config.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out / "gatt_config.json", config_to_dict(config))
    if config.data_only and not config.model_name_or_path:
        raise RecipeError("data_only needs model_name_or_path (the model that samples the GAtt answers)")
    base = build_base_model(config, out)
    rows = sample_gatt_data(config, base, out)
    kept = sum(1 for r in rows if r.get("kept"))
    if config.data_only:
        summary = {"gatt_rows": {"sampled": len(rows), "kept": kept}, "data": str(out / "gatt_data.jsonl")}
        atomic_write_json(out / COMPLETE_MARKER, summary)
        return summary
    if not kept:
        raise RecipeError(
            f"no GAtt dialogue passed the checker ({len(rows)} sampled): the base model does not "
            "follow the instruction when it is in the user message"
        )
    with_gatt = out / "gatt_sft"
    train_summary = _train(config.gatt_sft, base, with_gatt, config, gatt_finetune_dialogues(config, rows, out))
    result = evaluate_models(config, out, base, str(with_gatt))
    result["gatt_rows"] = {
        "sampled": len(rows),
        "kept": kept,
        "terse": sum(1 for r in rows if r.get("kept") and r.get("terse")),
    }
    result["gatt_train_dialogs"] = train_summary.get("train_dialogs")
    atomic_write_json(out / "adherence.json", result)
    return result
