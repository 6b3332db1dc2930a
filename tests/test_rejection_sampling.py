"""Rejection sampling: the R_c rule on samples, best-of-K, pooling, the fig. 7/8 statistics, resume, learning."""

import json
import math
import random
from types import SimpleNamespace

import pytest
import torch

from alignment.config import DataError, RecipeError, parse_recipe
from rlhf.rejection_sampling import (
    RejectionSamplingArguments,
    load_previous_top,
    load_reward_scorers,
    rescore,
    run_rejection_sampling,
)
from rlhf.rs_select import (
    best_of_k,
    default_ks,
    expected_max_and_median,
    pick_temperature,
    pool_best,
    reward_vs_k,
    reward_vs_temperature,
)
from rlhf.sampling import Sample
from rlhf.scoring import combine_scores, score_samples
from sft.config import DataArguments, Llama2SFTConfig, ModelArguments

DATACLASSES = (RejectionSamplingArguments, ModelArguments, DataArguments, Llama2SFTConfig)


class TableScorer:
    """A RewardScorer stand-in: a score per response text from a dict, or from a function of the text."""

    def __init__(self, table=None, fn=None):
        self.table, self.fn, self.calls = table, fn, 0

    def score(self, prompts, responses):
        self.calls += 1
        scores = torch.tensor([self.table[r] if self.table else self.fn(r) for r in responses], dtype=torch.float32)
        return SimpleNamespace(scores=scores, probs=torch.sigmoid(scores))


def user(text):
    return [{"role": "user", "content": text}]


def row(prompt, index, r_c, response=None):
    return {
        "messages": user(prompt),
        "sample_index": index,
        "r_c": r_c,
        "response": response or f"{prompt}-{index}",
        "is_safety_prompt": False,
    }


# The combined reward on samples --------------------------------------------------------------------------


def test_rc_rule_around_the_015_threshold():
    at = torch.logit(torch.tensor(0.15))
    while torch.sigmoid(at) != torch.tensor(0.15):  # the float32 score whose sigmoid is exactly 0.15
        at = torch.nextafter(at, torch.tensor(math.inf if torch.sigmoid(at) < 0.15 else -math.inf))
    below, above = torch.nextafter(at, torch.tensor(-math.inf)), torch.nextafter(at, torch.tensor(math.inf))
    safety = torch.stack([below, at, above, torch.logit(torch.tensor(0.1)), torch.logit(torch.tensor(0.2))])
    helpfulness = torch.tensor([7.0, 7.0, 7.0, 7.0, 7.0])
    scores = combine_scores(helpfulness, safety, [False] * 5)
    assert scores.use_safety.tolist() == [True, False, False, True, False]  # strict "R_s < 0.15"
    assert scores.combined.tolist() == [below.item(), 7.0, 7.0, safety[3].item(), 7.0]
    assert torch.allclose(scores.safety_prob, torch.sigmoid(safety))


def test_rc_uses_safety_on_safety_prompts_whatever_the_safety_score():
    scorers = (TableScorer({"a": 1.0, "b": 2.0, "c": -1.0}), TableScorer({"a": 3.0, "b": -2.0, "c": 0.5}))
    scores = score_samples(*scorers, [user("x")] * 3, ["a", "b", "c"], [False, False, True])
    # p_s: sigmoid(3) = 0.953 -> R_h; sigmoid(-2) = 0.119 < 0.15 -> R_s; safety prompt -> R_s even at p_s 0.62.
    assert scores.use_safety.tolist() == [False, True, True]
    assert scores.combined.tolist() == [1.0, -2.0, 0.5]
    rows = scores.rows()
    assert rows[1] == {"r_h": 2.0, "r_s": -2.0, "p_s": pytest.approx(0.11920292), "r_c": -2.0, "use_safety": True}


# Selection and pooling -----------------------------------------------------------------------------------


def test_best_of_k_keeps_the_highest_rc_and_breaks_ties_by_sample_index():
    rows = [row("p", 0, 0.5), row("q", 0, -1.0), row("p", 2, 0.9), row("p", 1, 0.9), row("q", 1, -3.0)]
    best = best_of_k(rows)
    assert [(b["messages"][0]["content"], b["sample_index"]) for b in best] == [("p", 1), ("q", 0)]


def test_pool_takes_the_best_per_prompt_across_iterations():
    current = [row("p", 0, 1.0, "new-p"), row("q", 0, 0.2, "new-q")]
    older = [row("p", 3, 1.0, "old-p"), row("q", 1, 0.7, "old-q"), row("r", 0, -5.0, "old-r")]
    pool = pool_best([current, older])
    assert {p["messages"][0]["content"]: p["response"] for p in pool} == {"p": "new-p", "q": "old-q", "r": "old-r"}


def test_previous_best_is_rescored_by_the_current_reward_models(tmp_path):
    path = tmp_path / "samples.jsonl"
    lines = [row("p", 0, 5.0, "old-high"), row("p", 1, 1.0, "old-low")]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    previous = load_previous_top(tmp_path)  # a run directory works as well as its file
    assert [p["response"] for p in previous] == ["old-high"]  # chosen by that iteration's own scores
    current_rms = (TableScorer({"old-high": -1.0, "mine": 0.5}), TableScorer({"old-high": 4.0, "mine": 4.0}))
    rescored = rescore(previous, current_rms, 0.15, str(path))
    assert rescored[0]["r_c"] == -1.0 and rescored[0]["source"] == str(path)
    pool = pool_best([[{**row("p", 0, 0.5, "mine"), "source": "current"}], rescored])
    assert pool[0]["response"] == "mine"  # old score 5.0 no longer counts


def test_unfinished_samples_never_win_best_of_k_or_the_pool():
    """A cut answer would be scored as if it had ended: it must not be selected, here or from earlier iterations."""
    cut = {**row("p", 0, 9.0, "half an"), "finished": False}
    rows = [cut, row("p", 1, 0.1, "whole"), {**row("q", 0, 5.0, "cut too"), "finished": False}]
    assert [b["response"] for b in best_of_k(rows)] == ["whole"]  # q had no finished sample: no winner
    assert [b["response"] for b in best_of_k(rows, drop_unfinished=False)] == ["half an", "cut too"]
    older = [{**row("p", 0, 50.0, "old cut"), "finished": False}]
    assert [b["response"] for b in pool_best([best_of_k(rows), older])] == ["whole"]


def test_an_answer_the_safety_gate_flagged_wins_only_when_every_answer_was_flagged():
    """R_c mixes scales: a flagged answer's R_s (-1.8) would beat an unflagged one's R_h (-2.5)."""
    flagged = {**row("p", 0, -1.8, "flagged"), "use_safety": True}
    safe = {**row("p", 1, -2.5, "safe"), "use_safety": False}
    assert [b["response"] for b in best_of_k([flagged, safe])] == ["safe"]
    assert [b["response"] for b in best_of_k([flagged, {**safe, "use_safety": True, "r_c": -2.5}])] == ["flagged"]
    on_safety_prompt = [{**r, "is_safety_prompt": True, "use_safety": True} for r in (flagged, safe)]
    assert [b["response"] for b in best_of_k(on_safety_prompt)] == ["flagged"]  # R_s is the score there
    assert [b["response"] for b in pool_best([[flagged], [safe]])] == ["safe"]


def test_earlier_iterations_offer_their_top_samples_to_the_current_reward_models(tmp_path):
    """The current RMs may prefer an earlier iteration's runner-up to the answer its own RMs picked."""
    path = tmp_path / "samples.jsonl"
    lines = [
        row("p", 0, 5.0, "old-first"),
        row("p", 1, 3.0, "old-second"),
        row("p", 2, 1.0, "old-third"),
        {**row("p", 3, 9.0, "old-cut"), "finished": False},
    ]
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    top = load_previous_top(path, 2)
    assert [r["response"] for r in top] == ["old-first", "old-second"]
    current_rms = (
        TableScorer({"old-first": -1.0, "old-second": 2.0, "mine": 0.5}),
        TableScorer({"old-first": 4.0, "old-second": 4.0, "mine": 4.0}),
    )
    pool = pool_best([[{**row("p", 0, 0.5, "mine"), "source": "current"}], rescore(top, current_rms, 0.15, "it1")])
    assert [(r["response"], r["r_c"]) for r in pool] == [("old-second", 2.0)]
    # With only each iteration's winner re-scored (the old rule), the better runner-up was lost.
    winner_only = pool_best(
        [[{**row("p", 0, 0.5, "mine")}], rescore(load_previous_top(path, 1), current_rms, 0.15, "")]
    )
    assert [r["response"] for r in winner_only] == ["mine"]


def test_bad_previous_samples_name_file_line_and_field(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(row("p", 0, 1.0)) + "\n" + json.dumps({"messages": user("q"), "response": "x"}) + "\n")
    with pytest.raises(DataError, match=r"s\.jsonl:2: missing field 'r_c'"):
        load_previous_top(path)
    path.write_text(json.dumps(row("p", 0, 1.0)) + "\n{not json\n")
    with pytest.raises(DataError, match=r"s\.jsonl:2: malformed JSON"):
        load_previous_top(path)


# Figures 7 and 8 ------------------------------------------------------------------------------------------


def test_expected_max_and_median_of_k_subsets():
    assert expected_max_and_median([1, 2, 3], 1) == (2.0, 2.0)
    assert expected_max_and_median([3, 1, 2], 2) == (pytest.approx(8 / 3), pytest.approx(2.0))
    assert expected_max_and_median([4, 1, 3, 2], 3) == (pytest.approx(3.75), pytest.approx(2.5))
    assert expected_max_and_median([4, 1, 3, 2], 4) == (4.0, 2.5)
    with pytest.raises(ValueError):
        expected_max_and_median([1, 2], 3)


def test_reward_curves_and_temperature_pick():
    rows = [row("p", i, float(v)) for i, v in enumerate([1, 2, 3, 4])] + [row("q", i, 0.0) for i in range(4)]
    curve = reward_vs_k(rows, [1, 2, 4, 8])
    assert curve["k"] == [1, 2, 4] and curve["num_prompts"] == 2
    assert curve["max"] == [pytest.approx(1.25), pytest.approx((20 / 6) / 2), pytest.approx(2.0)]
    assert curve["median"] == [pytest.approx(1.25), pytest.approx(1.25), pytest.approx(1.25)]
    assert default_ks(10) == [1, 2, 4, 8, 10] and default_ks(1) == [1]
    sweep = reward_vs_temperature(
        {
            1.2: [row("p", 0, 1.0), row("p", 1, 3.0)],
            0.6: [row("p", 0, 2.0), row("p", 1, 2.0)],
            1.4: [row("p", 0, 3.0), row("p", 1, -9.0)],
        }
    )
    assert sweep["temperature"] == [0.6, 1.2, 1.4] and sweep["max"] == [2.0, 3.0, 3.0]
    assert sweep["mean"] == [2.0, 2.0, -3.0]
    assert pick_temperature(sweep) == 1.2  # tie on max: the lower temperature


# The stage: resume, distillation ----------------------------------------------------------------------------


class FakeEngine:
    """Deterministic in (seed, prompt, sample); can die after a number of generate calls, like a killed run."""

    def __init__(self, die_after=None):
        self.calls, self.die_after = [], die_after

    def generate(self, prompt_ids, params):
        if self.die_after is not None and len(self.calls) >= self.die_after:
            raise KeyboardInterrupt("killed")
        self.calls.append((len(prompt_ids), params.seed, params.temperature))
        samples = []
        for p, ids in enumerate(prompt_ids):
            for k in range(params.num_samples):
                rng = random.Random(f"{params.seed}/{ids}/{k}/{params.temperature}")
                text = f"answer {rng.randint(0, 10**6)}"
                samples.append(Sample(p, k, list(ids), [5, 6, 3], text, True))
        return samples


def text_score(text):
    return (int(text.split()[-1]) % 1000) / 100.0


def write_prompts(path, n, safety_every=0):
    with open(path, "w") as handle:
        for i in range(n):
            handle.write(
                json.dumps(
                    {
                        "prompt": f"Question number {i}?",
                        "id": f"q{i}",
                        "is_safety_prompt": bool(safety_every) and i % safety_every == 0,
                    }
                )
                + "\n"
            )
    return str(path)


def rs_config(tmp_path, out, *extra):
    return parse_recipe(
        DATACLASSES,
        [
            "--model_name_or_path",
            "builtin:tiny-llama",
            "--prompts_name",
            str(tmp_path / "prompts.jsonl"),
            "--num_samples",
            "3",
            "--prompt_chunk_size",
            "2",
            "--fine_tune",
            "false",
            "--seed",
            "7",
            "--output_dir",
            str(out),
            *extra,
        ],
    )


def run_with(tmp_path, out, engine, *extra):
    from alignment.models import load_tokenizer

    tokenizer = load_tokenizer("builtin:tiny-llama")
    scorers = (TableScorer(fn=text_score), TableScorer(fn=lambda t: 2.0 if int(t.split()[-1]) % 2 else -3.0))
    return run_rejection_sampling(
        *rs_config(tmp_path, out, *extra), scorers=scorers, engine_factory=lambda name: (engine, tokenizer)
    )


def test_killed_run_resumes_without_regenerating_finished_prompts(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 7, safety_every=3)
    whole = FakeEngine()
    reference = run_with(tmp_path, tmp_path / "whole", whole)
    assert [c[0] for c in whole.calls] == [2, 2, 2, 1] and [c[1] for c in whole.calls] == [7, 8, 9, 10]

    killed = FakeEngine(die_after=2)
    with pytest.raises(KeyboardInterrupt):
        run_with(tmp_path, tmp_path / "killed", killed)
    samples = tmp_path / "killed" / "samples.jsonl"
    text = samples.read_text()
    samples.write_text(text[: text.rindex("\n", 0, len(text) - 1) + 20])  # a torn last line, as a kill leaves
    resumed_engine = FakeEngine()
    resumed = run_with(tmp_path, tmp_path / "killed", resumed_engine)
    assert [c[1] for c in resumed_engine.calls] == [8, 9, 10]  # chunk 0 kept; the torn chunk 1 re-made
    assert resumed["pool_size"] == reference["pool_size"] == 7

    def pool(run_dir):
        return [(r["prompt_id"], r["response"], r["r_c"]) for r in map(json.loads, open(run_dir / "pool.jsonl"))]

    assert pool(tmp_path / "killed") == pool(tmp_path / "whole")

    rows = [json.loads(line) for line in open(tmp_path / "whole" / "samples.jsonl")]
    assert len(rows) == 21 and {r["prompt_id"] for r in rows if r["is_safety_prompt"]} == {"q0", "q3", "q6"}
    for r in rows:  # R_c follows the gate: safety prompts and unsafe answers take R_s
        assert r["use_safety"] == (r["is_safety_prompt"] or r["p_s"] < 0.15)
        assert r["r_c"] == (r["r_s"] if r["use_safety"] else r["r_h"])
    best = {r["prompt_id"]: r for r in best_of_k(rows)}
    assert {r[0]: r[2] for r in pool(tmp_path / "whole")} == {k: v["r_c"] for k, v in best.items()}

    again = FakeEngine()
    assert run_with(tmp_path, tmp_path / "whole", again)["pool_size"] == 7 and again.calls == []  # done: nothing


def test_changed_settings_in_the_same_output_dir_are_refused(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 2)
    run_with(tmp_path, tmp_path / "out", FakeEngine(), "--fine_tune", "false", "--max_prompts", "1")
    (tmp_path / "out" / "pool.jsonl").unlink()
    with pytest.raises(RecipeError, match="different settings .*temperature"):
        run_with(tmp_path, tmp_path / "out", FakeEngine(), "--temperature", "1.3", "--max_prompts", "1")


def test_temperature_sweep_picks_t_and_distillation_pools_previous_runs(tmp_path):
    write_prompts(tmp_path / "prompts.jsonl", 4)
    engine = FakeEngine()
    first = run_with(
        tmp_path,
        tmp_path / "it1",
        engine,
        "--temperature_sweep",
        "0.7",
        "1.3",
        "--pick_temperature",
        "true",
        "--sweep_num_prompts",
        "2",
    )
    sweep = json.loads((tmp_path / "it1" / "reward_vs_temperature.json").read_text())
    assert (
        first["temperature"] == pick_temperature(sweep) and (tmp_path / "it1" / "reward_vs_temperature.png").exists()
    )
    assert (tmp_path / "it1" / "reward_vs_k.png").exists()
    # Distillation: no sampling, the pool is the earlier run's best, re-scored.
    student = FakeEngine()
    distilled = run_with(
        tmp_path, tmp_path / "student", student, "--num_samples", "0", "--previous_samples", str(tmp_path / "it1")
    )
    assert student.calls == [] and distilled["pool_size"] == 4
    old = {r["prompt_id"]: r["response"] for r in map(json.loads, open(tmp_path / "it1" / "pool.jsonl"))}
    new = {r["prompt_id"]: r["response"] for r in map(json.loads, open(tmp_path / "student" / "pool.jsonl"))}
    assert new == old


def test_recipes_parse_and_bad_keys_are_named():
    for preset in ("tiny", "smollm2", "llama2-7b"):
        rs_args, model_args, _, training_args = parse_recipe(
            DATACLASSES, ["--config", f"recipes/{preset}/rejection_sampling.yaml"]
        )
        assert rs_args.num_samples >= 4 and training_args.output_dir.endswith("rejection_sampling")
    with pytest.raises(RecipeError, match="unknown key 'num_sample' .*num_samples"):
        parse_recipe(DATACLASSES, [], recipe={"num_sample": 3})  # [], not pytest's own argv


# Learning on the tiny model -------------------------------------------------------------------------------


def digits_and_vowels(text):
    """A reward the tiny model can learn: +1 per digit, plus up to 2 for the share of vowels among letters."""
    letters = [c for c in text.lower() if c.isalpha()]
    return sum(c.isdigit() for c in text) + (
        2.0 * sum(c in "aeiou" for c in letters) / len(letters) if letters else 0.0
    )


@pytest.mark.slow
def test_rs_fine_tuning_raises_held_out_reward_on_the_tiny_model(tmp_path):
    from alignment.data import load_prompts
    from alignment.paths import DEMO_SFT_DATA

    questions = [p for p in load_prompts(str(DEMO_SFT_DATA)) if len(p.messages) == 1]
    for name, chosen in (("train", questions[:64]), ("held_out", questions[200:])):
        with open(tmp_path / f"{name}.jsonl", "w") as handle:
            handle.writelines(json.dumps({"prompt": p.messages[0]["content"], "id": p.id}) + "\n" for p in chosen)
    scorers = (TableScorer(fn=digits_and_vowels), TableScorer(fn=lambda t: 3.0))
    args = parse_recipe(
        DATACLASSES,
        [
            "--model_name_or_path",
            "builtin:tiny-llama",
            "--prompts_name",
            str(tmp_path / "train.jsonl"),
            "--eval_prompts_name",
            str(tmp_path / "held_out.jsonl"),
            "--num_samples",
            "8",
            "--temperature",
            "1.0",
            "--top_p",
            "1.0",
            # An untrained model within 12 tokens seldom stops: keep its cut answers (this test is about learning).
            "--drop_unfinished",
            "false",
            "--max_new_tokens",
            "12",
            "--generation_batch_size",
            "128",
            "--prompt_chunk_size",
            "32",
            "--eval_num_samples",
            "4",
            "--eval_temperature",
            "1.0",
            "--eval_top_p",
            "1.0",
            "--global_batch_size",
            "16",
            "--per_device_train_batch_size",
            "16",
            "--learning_rate",
            "3e-3",
            "--num_train_epochs",
            "8",
            "--max_length",
            "128",
            "--bf16",
            "false",
            "--save_steps",
            "1000",
            "--seed",
            "0",
            "--report_to",
            "none",
            "--disable_tqdm",
            "true",
            "--output_dir",
            str(tmp_path / "rs"),
        ],
    )
    summary = run_rejection_sampling(*args, scorers=scorers)
    curve = summary["reward_vs_k"]
    assert curve["k"] == [1, 2, 4, 8]
    assert all(b > a + 0.05 for a, b in zip(curve["max"], curve["max"][1:]))  # max over K rises with K
    assert max(curve["median"]) - min(curve["median"]) < 0.25 * (curve["max"][-1] - curve["max"][0])  # median flat
    start, tuned = summary["eval"]["start"]["mean_r_c"], summary["eval"]["tuned"]["mean_r_c"]
    print(f"reward vs K: {curve}; held-out mean R_c {start:.3f} -> {tuned:.3f}")
    assert tuned > start + 0.1, (start, tuned)


def test_builtin_world_names_load_the_gold_judges_as_reward_models():
    rs_args = SimpleNamespace(
        reward_chat_format=None,
        helpfulness_model="builtin:world-helpfulness",
        safety_model="builtin:world-safety",
        reward_dtype="float32",
        reward_batch_size=8,
    )
    helpful, safety = load_reward_scorers(rs_args, SimpleNamespace(chat_format="llama2"))
    prompt = [{"role": "user", "content": "what is 3 plus 4?"}]
    scores = helpful.score([prompt, prompt], ["3 plus 4 is 7.", "3 plus 4 is 8."]).scores
    assert scores[0] > scores[1]
    assert safety.kind == "safety"
    with pytest.raises(RecipeError, match="unknown builtin judge"):
        load_reward_scorers(
            SimpleNamespace(**{**vars(rs_args), "safety_model": "builtin:world-x"}),
            SimpleNamespace(chat_format="llama2"),
        )
