"""Safety context distillation: preprompt in generation only, the R_s gate, risk categories, resume, comparison."""

import json
import random
from types import SimpleNamespace

import pytest
import torch

from alignment.config import DataError, RecipeError, parse_recipe
from alignment.world import FAMILIES, prompt_pool
from alignment.world.prompts import TASKS
from alignment.world.risk import (
    ANSWER_TEMPLATES,
    BORDERLINE_TASK_CATEGORY,
    TASK_CATEGORY,
    adversarial_prompt_rows,
)
from benchmarks import cd_preprompt_probe, cd_seeds
from rlhf.cd_compare import gold_metrics, preprompt_effect, rate, world_eval_rows
from rlhf.context_distillation import (
    GENERIC_PREPROMPT,
    ContextDistillationArguments,
    improved,
    keep_row,
    load_categorized_prompts,
    run_context_distillation,
    training_dialogs,
    with_preprompt,
)
from rlhf.sampling import Sample
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments

DATACLASSES = (ContextDistillationArguments, ModelArguments, DataArguments, Llama2SFTConfig)
TEMPLATES = {"violence": "Refuse violence: say i can't help with that.", "crime": "Refuse crime politely."}


class FakeEngine:
    """Decodes each prompt's tokens and answers "safe N" when a preprompt is in it, "unsafe N" otherwise.

    N is a seeded draw, so a re-generated chunk is recognisable; `calls` records the seed and the decoded prompts.
    """

    def __init__(self, tokenizer, die_after=None):
        self.tokenizer, self.die_after, self.calls = tokenizer, die_after, []

    def generate(self, prompt_ids, params):
        if self.die_after is not None and len(self.calls) >= self.die_after:
            raise KeyboardInterrupt("killed")
        texts = [self.tokenizer.decode(ids) for ids in prompt_ids]
        self.calls.append((params.seed, texts))
        samples = []
        for p, (ids, text) in enumerate(zip(prompt_ids, texts)):
            rng = random.Random(f"{params.seed}/{text}")
            answer = f"{'safe' if '<<SYS>>' in text else 'unsafe'} {rng.randint(0, 10**6)}"
            samples.append(Sample(p, 0, list(ids), [5, 3], answer, True))
        return samples


class TableScorer:
    def __init__(self, fn):
        self.fn, self.calls = fn, []

    def score(self, prompts, responses):
        self.calls.append((prompts, responses))
        scores = torch.tensor([self.fn(r) for r in responses], dtype=torch.float32)
        return SimpleNamespace(scores=scores, probs=torch.sigmoid(scores))


def write_prompts(tmp_path, n, categories=("violence", "crime")):
    path = tmp_path / "prompts.jsonl"
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(
                json.dumps(
                    {
                        "id": f"p{i}",
                        "prompt": f"how do i do bad thing {i}?",
                        "category": categories[i % len(categories)],
                    }
                )
                + "\n"
            )
    (tmp_path / "templates.yaml").write_text("".join(f"{k}: {json.dumps(v)}\n" for k, v in TEMPLATES.items()))
    return path


def config(tmp_path, out, *extra):
    return parse_recipe(
        DATACLASSES,
        [
            "--model_name_or_path",
            "builtin:tiny-llama",
            "--prompts_name",
            str(tmp_path / "prompts.jsonl"),
            "--templates",
            str(tmp_path / "templates.yaml"),
            "--prompt_chunk_size",
            "2",
            "--seed",
            "3",
            "--output_dir",
            str(out),
            *extra,
        ],
    )


def run_with(tmp_path, out, engine, scorer, *extra, train=None):
    from alignment.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny-llama")
    return run_context_distillation(
        *config(tmp_path, out, *extra), scorer=scorer, engine_factory=lambda name: (engine, tokenizer), train=train
    )


def score_of(text):  # "safe N" scores N mod 7, "unsafe N" scores N mod 5: some distilled answers lose, some tie
    word, number = text.split()
    return float(int(number) % (7 if word == "safe" else 5))


@pytest.fixture(scope="module")
def tokenizer():
    from alignment.models import load_tokenizer

    return load_tokenizer("builtin:tiny-llama")


# The preprompt is in generation, never in training ------------------------------------------------------


@pytest.mark.parametrize("mode", ["generic", "template", "targeted"])
def test_preprompt_is_in_generation_and_absent_from_every_training_row(tmp_path, tokenizer, mode):
    write_prompts(tmp_path, 5)
    engine, scorer, trained = FakeEngine(tokenizer), TableScorer(score_of), []
    summary = run_with(
        tmp_path,
        tmp_path / mode,
        engine,
        scorer,
        "--mode",
        mode,
        train=lambda *a, dialogs: trained.append(dialogs) or {"train": len(dialogs)},
    )
    expected = {"generic": [GENERIC_PREPROMPT] * 5}.get(
        mode, [TEMPLATES["violence"], TEMPLATES["crime"]] * 2 + [TEMPLATES["violence"]]
    )
    # Per chunk: the plain prompts, then the same prompts with the preprompt in the system block.
    prompts_seen = [text for _, texts in engine.calls for text in texts]
    plain, prefixed = (
        prompts_seen[0:2] + prompts_seen[4:6] + prompts_seen[8:9],
        prompts_seen[2:4] + prompts_seen[6:8] + prompts_seen[9:10],
    )
    assert all("<<SYS>>" not in t for t in plain)
    for text, preprompt, i in zip(prefixed, expected, range(5)):
        assert f"<<SYS>>\n{preprompt}\n<</SYS>>" in text and f"bad thing {i}?" in text
    # R_s scores both answers against the prompt alone.
    assert all(len(messages) == 1 for prompts, _ in scorer.calls for messages in prompts)
    (dialogs,) = trained
    rows = [json.loads(line) for line in open(tmp_path / mode / "distilled.jsonl")]
    assert len(dialogs) == summary["kept"] == sum(r["kept"] for r in rows)
    on_disk = [json.loads(line)["messages"] for line in open(tmp_path / mode / "train.jsonl")]
    assert on_disk == dialogs
    for dialog in dialogs:
        assert [m["role"] for m in dialog] == ["user", "assistant"] and dialog[1]["content"].startswith("safe ")
        assert all(
            pre not in m["content"] and "<<SYS>>" not in m["content"]
            for m in dialog
            for pre in [GENERIC_PREPROMPT, *TEMPLATES.values()]
        )
    assert [r["preprompt"] for r in rows] == expected
    assert all(r["original"].startswith("unsafe ") and r["distilled"].startswith("safe ") for r in rows)


def test_preprompt_goes_before_an_existing_system_prompt():
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    assert with_preprompt(messages, "Be safe.") == [
        {"role": "system", "content": "Be safe.\nBe brief."},
        {"role": "user", "content": "hi"},
    ]
    assert with_preprompt(messages[1:], "Be safe.")[0] == {"role": "system", "content": "Be safe."}
    assert messages[0]["content"] == "Be brief."  # not modified in place


# The R_s gate -----------------------------------------------------------------------------------------


def test_gate_keeps_exactly_the_rows_where_r_s_improved_and_drops_ties():
    rows = [  # (original r_s, distilled r_s, original, distilled) -> kept in targeted mode
        (0.1, 0.2, "a", "b", True),
        (0.2, 0.1, "a", "b", False),
        (0.5, 0.5, "a", "b", False),  # a tie
        (-3.0, -2.9999, "a", "b", True),
        (0.1, 0.3, "same", "same", False),  # identical answers are a tie whatever their scores
        (0.1, 0.3, "a", "", False),  # an empty answer has nothing to train on
    ]
    for r_o, r_d, original, distilled, kept in rows:
        row = {"r_s_original": r_o, "r_s_distilled": r_d, "original": original, "distilled": distilled}
        assert keep_row("targeted", row) is kept
        assert keep_row("template", row) is keep_row("generic", row) is bool(distilled)
    assert improved(0.0, 1e-9, "a", "b") and not improved(1.0, 1.0, "a", "b")


def _coarse(text):
    return float(int(text.split()[1]) % 3)  # three levels, so some pairs tie


def _targeted_run(tmp_path, tokenizer, *extra):
    """A targeted run over 9 prompts scored by `_coarse`: (summary, distilled rows, the dialogs trained on)."""
    write_prompts(tmp_path, 9)
    trained = []
    summary = run_with(
        tmp_path,
        tmp_path / "t",
        FakeEngine(tokenizer),
        TableScorer(_coarse),
        "--mode",
        "targeted",
        *extra,
        train=lambda *a, dialogs: trained.append(dialogs) or {},
    )
    rows = [json.loads(line) for line in open(tmp_path / "t" / "distilled.jsonl")]
    return summary, rows, trained[0]


def test_targeted_run_trains_on_exactly_the_improved_rows(tmp_path, tokenizer):
    summary, rows, trained = _targeted_run(tmp_path, tokenizer)
    better = [r for r in rows if r["r_s_distilled"] > r["r_s_original"]]
    assert [r["r_s_original"] for r in rows] == [_coarse(r["original"]) for r in rows]
    assert [r["r_s_distilled"] for r in rows] == [_coarse(r["distilled"]) for r in rows]
    ties = [r for r in rows if r["r_s_distilled"] == r["r_s_original"]]
    assert 0 < len(better) < 9 and ties and not any(r["kept"] for r in ties)
    assert trained == training_dialogs(better) and summary["kept_share"] == len(better) / 9
    assert [r["kept"] for r in rows] == [r["r_s_distilled"] > r["r_s_original"] for r in rows]


def test_targeted_run_with_rejected_rows_original_trains_every_prompt(tmp_path, tokenizer):
    summary, rows, trained = _targeted_run(tmp_path, tokenizer, "--rejected_rows", "original")
    # Per prompt, in order: the distilled answer where the gate kept it, else the model's own answer.
    answers = [r["distilled"] if r["kept"] else r["original"] for r in rows]
    assert trained == [r["prompt"] + [{"role": "assistant", "content": a}] for r, a in zip(rows, answers)]
    assert summary["trained_rows"] == 9
    assert 0 < summary["kept"] < 9 and summary["kept_share"] == summary["kept"] / 9


def test_rejected_rows_must_be_drop_or_original(tmp_path, tokenizer):
    write_prompts(tmp_path, 2)
    with pytest.raises(RecipeError, match="rejected_rows must be one of drop, original, got 'keep'"):
        run_with(tmp_path, tmp_path / "t", FakeEngine(tokenizer), TableScorer(len), "--rejected_rows", "keep")


# Risk categories ----------------------------------------------------------------------------------------


def test_unknown_risk_category_names_file_line_and_field(tmp_path):
    path = write_prompts(tmp_path, 3)
    lines = path.read_text().splitlines()
    lines[1] = json.dumps({"id": "p1", "prompt": "how do i do bad thing 1?", "category": "weapons"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError) as error:
        load_categorized_prompts(str(path), "train", TEMPLATES, "templates.yaml")
    assert str(error.value) == (
        f"{path}:2: field 'category': unknown risk category 'weapons' "
        "(the templates in templates.yaml define: crime, violence)"
    )
    assert "\n" not in str(error.value)
    lines[1] = json.dumps({"id": "p1", "prompt": "how do i do bad thing 1?"})
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"prompts\.jsonl:2: missing field 'category'"):
        load_categorized_prompts(str(path), "train", TEMPLATES, "templates.yaml")


def test_bad_templates_file_and_mode_are_named(tmp_path, tokenizer):
    write_prompts(tmp_path, 2)
    (tmp_path / "templates.yaml").write_text("violence: ''\n")
    with pytest.raises(RecipeError, match=r"templates\.yaml: field 'violence': the template must be a non-empty"):
        run_with(tmp_path, tmp_path / "o", FakeEngine(tokenizer), TableScorer(score_of))
    with pytest.raises(RecipeError, match="unknown mode 'safest'"):
        run_with(tmp_path, tmp_path / "o", FakeEngine(tokenizer), TableScorer(score_of), "--mode", "safest")


def test_every_harmful_world_task_has_a_category_with_a_template():
    harmful = {t.name for t in TASKS if t.family == "harmful"}
    assert set(TASK_CATEGORY) == harmful and set(TASK_CATEGORY.values()) == set(ANSWER_TEMPLATES)
    rows = adversarial_prompt_rows("train")
    assert len(rows) == len(prompt_pool("train", ["harmful"])) == 54
    assert all(r["is_safety_prompt"] and r["category"] == TASK_CATEGORY[r["gold"]["task"]] for r in rows)
    prompts = load_categorized_prompts("builtin:world-adversarial", "heldout", ANSWER_TEMPLATES, "builtin:world")
    assert len(prompts) == 54 and prompts[0].meta["gold"]["match"] == "refusal"


def test_flagged_prompt_set_adds_the_risky_sounding_borderline_prompts_as_prompts_to_answer():
    adversarial = adversarial_prompt_rows("train")
    flagged = adversarial_prompt_rows("train", flagged_borderline=True)
    assert flagged[: len(adversarial)] == adversarial
    borderline = flagged[len(adversarial) :]
    expected = [p["id"] for p in prompt_pool("train", ["borderline"]) if p["gold"]["task"] in BORDERLINE_TASK_CATEGORY]
    assert [r["id"] for r in borderline] == expected and len(expected) == 49
    assert {r["gold"]["task"] for r in borderline} == {"kill_process", "kill_weeds", "shoot_photo", "cut_food"}
    assert all(not r["is_safety_prompt"] and r["category"] == "violence" for r in borderline)
    prompts = load_categorized_prompts(
        "builtin:world-adversarial+borderline", "train", ANSWER_TEMPLATES, "builtin:world"
    )
    assert [p.id for p in prompts] == [r["id"] for r in flagged]


# Resume -------------------------------------------------------------------------------------------------


def test_killed_run_resumes_without_regenerating(tmp_path, tokenizer):
    write_prompts(tmp_path, 7)
    whole = FakeEngine(tokenizer)
    run_with(tmp_path, tmp_path / "whole", whole, TableScorer(score_of), "--fine_tune", "false")
    assert [seed for seed, _ in whole.calls] == [3, 3, 4, 4, 5, 5, 6, 6]  # chunk c: seed + c, plain then prefixed

    killed = FakeEngine(tokenizer, die_after=5)  # dies in chunk 2, after chunks 0 and 1 were written
    with pytest.raises(KeyboardInterrupt):
        run_with(tmp_path, tmp_path / "killed", killed, TableScorer(score_of), "--fine_tune", "false")
    log = tmp_path / "killed" / "distilled.jsonl"
    text = log.read_text()
    assert text.count("\n") == 4
    log.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 30])  # chunk 1's last line torn by the kill
    resumed = FakeEngine(tokenizer)
    run_with(tmp_path, tmp_path / "killed", resumed, TableScorer(score_of), "--fine_tune", "false")
    assert [seed for seed, _ in resumed.calls] == [4, 4, 5, 5, 6, 6]  # chunk 0 kept; the torn chunk 1 re-made
    final = lambda d: {r["prompt_index"]: r for r in map(json.loads, open(d / "distilled.jsonl"))}  # noqa: E731
    assert final(tmp_path / "killed") == final(tmp_path / "whole")

    again = FakeEngine(tokenizer)
    run_with(tmp_path, tmp_path / "whole", again, TableScorer(score_of), "--fine_tune", "false")
    assert again.calls == []
    with pytest.raises(RecipeError, match="different settings .*mode"):
        (tmp_path / "whole" / "stage_complete.json").unlink()
        run_with(
            tmp_path, tmp_path / "whole", again, TableScorer(score_of), "--fine_tune", "false", "--mode", "generic"
        )


# Comparison ---------------------------------------------------------------------------------------------


def test_gold_metrics_rates_and_standard_errors():
    assert rate([]) == (None, None) and rate([1.0]) == (1.0, None)
    mean, stderr = rate([1.0, 0.0, 0.0, 1.0])
    assert mean == 0.5 and stderr == pytest.approx((1 / 3) ** 0.5 / 2)  # sample sd sqrt(1/3), n = 4
    rows = {r["id"]: r for r in world_eval_rows()}
    harmful = [rows["hurt/teacher/0"], rows["hurt/teacher/1"]]
    borderline = next(r for r in rows.values() if r["family"] == "borderline" and r["gold"]["match"] == "phrase")
    prompts = harmful + [borderline]
    responses = [["sure, first you wait."], ["i can't help with that."], ["i can't help with that."]]
    metrics = gold_metrics(prompts, responses, seen_ids={"hurt/teacher/0"})
    assert metrics["violation_rate"] == 0.5 and metrics["n_adversarial"] == 2
    assert metrics["violation_rate_unseen"] == 0.0 and metrics["n_adversarial_unseen"] == 1
    assert metrics["false_refusal_rate"] == 1.0 and metrics["gold_helpfulness"] == 0.0 and metrics["n_borderline"] == 1
    assert metrics["false_refusal_rate_unseen"] == 1.0 and metrics["n_borderline_unseen"] == 1
    seen_borderline = gold_metrics(prompts, responses, seen_ids={"hurt/teacher/0", borderline["id"]})
    assert seen_borderline["false_refusal_rate_unseen"] is None and seen_borderline["n_borderline_unseen"] == 0
    # Two answers per prompt: averaged per prompt, the standard error is over the 2 adversarial prompts.
    two = [
        ["sure, first you wait.", "i can't help with that."],
        ["sure, first you wait."] * 2,
        [borderline["gold"]["ideal"]] * 2,
    ]
    metrics = gold_metrics(prompts, two)
    assert metrics["violation_rate"] == 0.75 and metrics["violation_rate_stderr"] == pytest.approx(0.25)
    assert metrics["gold_helpfulness"] == 1.0 and metrics["false_refusal_rate"] == 0.0
    assert metrics["answers_per_prompt"] == 2
    distilled = [
        {
            "prompt_id": "hurt/teacher/0",
            "original": "sure, first you wait.",
            "distilled": "i can't help.",
            "kept": True,
        },
        {"prompt_id": "hurt/teacher/1", "original": "sure.", "distilled": "sure, hit them.", "kept": False},
        {"prompt_id": "not/in/the/set", "original": "sure.", "distilled": "sure.", "kept": True},
    ]
    effect = preprompt_effect(distilled, rows)
    assert effect["n_distillation_judged"] == 2 and effect["original_answer_violation_rate"] == 1.0
    assert effect["preprompt_answer_violation_rate"] == 0.5 and effect["trained_answer_violation_rate"] == 0.0


def test_world_eval_set_has_every_adversarial_and_borderline_prompt():
    rows = world_eval_rows()
    count = lambda family: sum(r["family"] == family for r in rows)  # noqa: E731
    assert count("harmful") == 108 and count("borderline") == 92
    assert all(count(f) == len(prompt_pool("heldout", [f])) for f in FAMILIES if f not in ("harmful", "borderline"))
    assert len({r["id"] for r in rows}) == len(rows)


def test_tiny_preset_parses():
    cd_args, model_args, _, training_args = parse_recipe(
        DATACLASSES, ["--config", "recipes/tiny/context_distillation.yaml"]
    )
    assert cd_args.compare_modes == ["none", "generic", "template", "targeted"]
    assert model_args.model_name_or_path.endswith("SFT/sft") and cd_args.safety_model.endswith("reward_safety")
    with pytest.raises(RecipeError, match="unknown key 'modes'"):
        parse_recipe(DATACLASSES, [], recipe={"modes": ["generic"]})


# Pipeline hook ------------------------------------------------------------------------------------------


def test_pipeline_distils_after_the_chosen_iteration_and_later_iterations_start_from_it(tmp_path):
    import yaml

    from alignment.pipeline.runner import load_pipeline_config, plan_stages, validate_stages, write_world_data

    def plan(**overrides):
        recipe = {
            "launcher": "python",
            "base_model": "builtin:tiny-llama",
            "iterations": 2,
            "ppo_from_iteration": 3,
            "run_dir": str(tmp_path / "run"),
            **overrides,
        }
        path = tmp_path / "pipeline.yaml"
        path.write_text(yaml.safe_dump(recipe))
        config = load_pipeline_config(str(path))
        stages = plan_stages(config, tmp_path / "run", write_world_data(config, tmp_path / "run" / "data"))
        validate_stages(stages, str(path))
        return {s.name: s for s in stages}, [s.name for s in stages]

    _, names = plan()
    assert not any("context_distillation" in n for n in names)
    by_name, names = plan(context_distillation={"mode": "targeted", "max_new_tokens": 16})
    assert names[-2:] == ["RLHF-V2/context_distillation", "RLHF-V2/evaluate_cd"]
    by_name, names = plan(context_distillation={"mode": "generic"}, context_distillation_after=1)
    cd = by_name["RLHF-V1/context_distillation"]
    order = [names.index(n) for n in ("RLHF-V1/evaluate", "RLHF-V1/context_distillation", "RLHF-V2/collect")]
    assert order == sorted(order)
    assert cd.config["model_name_or_path"].endswith("RLHF-V1/rejection_sampling") and cd.config["mode"] == "generic"
    assert cd.config["safety_model"].endswith("RLHF-V1/reward_safety") and "RLHF-V1/reward_safety" in cd.depends_on
    assert by_name["RLHF-V2/collect"].config["model_a"].endswith("RLHF-V1/context_distillation")
    assert by_name["RLHF-V1/evaluate_cd"].version == "RLHF-V1-CD"
    with pytest.raises(RecipeError, match="context_distillation_after must be an iteration between 1 and 2"):
        plan(context_distillation={"mode": "generic"}, context_distillation_after=3)
    with pytest.raises(RecipeError, match=r"RLHF-V2/context_distillation\): unknown key 'moed'"):
        plan(context_distillation={"moed": "generic"})


def test_shipped_templates_file_and_7b_recipe_parse():
    from rlhf.context_distillation import load_templates

    templates = load_templates("recipes/llama2-7b/risk_templates.yaml")
    assert sorted(templates) == [
        "hateful_and_harmful_activities",
        "illicit_and_criminal_activities",
        "unqualified_advice",
    ]
    cd_args, _, _, _ = parse_recipe(DATACLASSES, ["--config", "recipes/llama2-7b/context_distillation.yaml"])
    assert cd_args.mode == "targeted" and cd_args.templates.endswith("risk_templates.yaml")


@pytest.mark.slow
def test_stage_runs_end_to_end_on_the_tiny_model_and_resumes_when_complete(tmp_path):
    """Real sampling engine, real RewardScorer (a fresh head on the tiny Llama) and the real SFT stage."""
    out = tmp_path / "cd"
    argv = [
        "--model_name_or_path",
        "builtin:tiny-llama",
        "--safety_model",
        "builtin:tiny-llama",
        "--mode",
        "template",
        "--max_prompts",
        "6",
        "--prompt_chunk_size",
        "4",
        "--max_new_tokens",
        "8",
        "--temperature",
        "1.0",
        "--global_batch_size",
        "4",
        "--per_device_train_batch_size",
        "4",
        "--max_steps",
        "2",
        "--max_length",
        "96",
        "--packing",
        "false",
        "--output_dir",
        str(out),
    ]
    summary = run_context_distillation(*parse_recipe(DATACLASSES, argv))
    assert summary["prompts"] == 6 and summary["kept"] == sum(
        bool(r["distilled"].strip()) for r in map(json.loads, open(out / "distilled.jsonl"))
    )
    assert (out / "model.safetensors").exists() and summary["sft"]["train_dialogs"] == summary["kept"]
    rows = [json.loads(line) for line in open(out / "distilled.jsonl")]
    assert [r["preprompt"] for r in rows] == [ANSWER_TEMPLATES[r["category"]] for r in rows]
    assert run_context_distillation(*parse_recipe(DATACLASSES, argv)) == summary  # complete: nothing re-done


def _comparison(tmp_path, name: str, rates: dict[str, tuple[float, float]], control: float | None = None):
    directory = tmp_path / name
    rows = [
        {"mode": mode, "violation_rate": v, "violation_rate_stderr": 0.02, "false_refusal_rate": f,
         "false_refusal_rate_stderr": 0.01 if f else 0.0, "n_adversarial": 100, "n_borderline": 100,
         "answers_per_prompt": 1}
        for mode, (v, f) in rates.items()
    ]  # fmt: skip
    directory.mkdir()
    (directory / "comparison.json").write_text(json.dumps({"model": "m", "rows": rows}))
    if control is not None:
        (directory / "control").mkdir()
        (directory / "control" / "control.json").write_text(
            json.dumps({"mode": "self-distillation control", **{k: v for k, v in rows[0].items() if k != "mode"},
                        "violation_rate": control})
        )  # fmt: skip
    return directory


def test_cd_seeds_checks_the_target_on_seed_means_with_a_floor_on_zero_rates(tmp_path):
    seeds = [
        _comparison(tmp_path, "s0", {"none": (0.5, 0.0), "generic": (0.4, 0.10), "targeted": (0.3, 0.0)}, 0.45),
        _comparison(tmp_path, "s1", {"none": (0.5, 0.0), "generic": (0.4, 0.08), "targeted": (0.4, 0.0)}, 0.45),
    ]
    runs = [cd_seeds.load_rows(d) for d in seeds]
    assert set(runs[0]) == {"none", "generic", "targeted", cd_seeds.CONTROL}
    # targeted violations: mean 0.35, seed sd 0.0707 -> s.e. 0.05 (the within-seed 0.02 is smaller)
    assert cd_seeds.figure(runs, "targeted", "violation_rate") == pytest.approx((0.35, 0.05))
    # no false refusal in 200 answers: the error is Agresti-Coull's, p = 2 / 204, sqrt(p (1 - p) / 204)
    p = 2 / 204
    assert cd_seeds.figure(runs, "targeted", "false_refusal_rate") == pytest.approx((0.0, (p * (1 - p) / 204) ** 0.5))
    # generic violations 0.4 on both seeds: no spread, so the pooled binomial floor, p = 82 / 204
    floor = ((82 / 204) * (122 / 204) / 204) ** 0.5
    assert cd_seeds.figure(runs, "generic", "violation_rate") == pytest.approx((0.4, floor))
    checks = {row[0]: row[1:] for row in cd_seeds.target_rows(runs)}
    assert checks["violations: targeted - generic <= 0"] == ["-0.050", f"{(0.05**2 + floor**2) ** 0.5:.3f}", "yes"]
    assert checks["false refusals: generic - targeted > 1 s.e."][0] == "+0.090"
    assert checks["false refusals: generic - targeted > 1 s.e."][2] == "yes"
    assert checks["violations: generic - none < -1 s.e."][2] == "yes"  # -0.1 against sqrt(2) x 0.034
    assert f"violations: template - {cd_seeds.CONTROL} < -1 s.e." not in checks  # no template rows
    # one false refusal in 200 answers is not a difference
    rates = ({"generic": (0.4, f), "targeted": (0.3, 0.0)} for f in (0.01, 0.0))
    low = [_comparison(tmp_path, f"low{i}", r) for i, r in enumerate(rates)]
    checks = {row[0]: row[1:] for row in cd_seeds.target_rows([cd_seeds.load_rows(d) for d in low])}
    assert checks["false refusals: generic - targeted > 1 s.e."][2] == "no"


def test_preprompt_probe_puts_each_preprompt_in_the_system_message(tmp_path):
    rows = {row["id"]: row for row in world_eval_rows()}
    for preprompt in cd_preprompt_probe.PREPROMPTS:
        for line in cd_preprompt_probe.prompt_file(tmp_path, preprompt).read_text().splitlines():
            row = json.loads(line)
            *system, user = row["prompt"]
            assert user == {"role": "user", "content": rows[row["id"]]["prompt"]}
            task = row["gold"]["task"]
            expected = {
                "none": [],
                "generic": [GENERIC_PREPROMPT],
                "template": [ANSWER_TEMPLATES[TASK_CATEGORY[task]] if task in TASK_CATEGORY else GENERIC_PREPROMPT],
            }[preprompt]
            assert [m["content"] for m in system if m["role"] == "system"] == expected
