"""Ghost Attention (arXiv 2307.09288, sec. 3.3): loss masks, data construction, terse share, judges, resumption."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alignment.chat import IGNORE_INDEX, encode_dialog
from alignment.config import DataError, RecipeError
from alignment.world import prompt_pool
from alignment.world.instructions import (
    END_WORDS,
    HOBBIES,
    LANGUAGE,
    LEXICON,
    comply,
    content,
    follows,
    instruction_demonstrations,
    instruction_helpfulness,
    make_instruction,
    sample_dialogues,
    sample_instructions,
)
from rlhf.sampling import Sample, SamplingParams
from sft.gatt import (
    GattDialogue,
    build_gatt_data,
    check_error,
    degenerate,
    load_user_dialogues,
    text_follows,
    training_row,
    well_formed,
    world_dialogues,
)

P, A = "prompt", "answer"
ROOT = Path(__file__).resolve().parents[1]


def test_gatt_row_masks_every_earlier_turn_and_the_instruction(tiny_tokenizer):
    # Digits only: the tiny tokenizer has single-character pieces for them (see test_chat.py).
    row = training_row("7", ["1", "3", "5"], ["2", "4", "6 8"])
    encoded = encode_dialog(tiny_tokenizer, row, "llama2")
    expected = [
        ("<s>", P),
        ("[INST]", P),
        ("▁", P),
        ("<<SYS>>", P),
        ("\n", P),
        ("7", P),
        ("\n", P),
        ("<</SYS>>", P),
        ("\n\n", P),
        ("1", P),
        ("▁", P),
        ("[/INST]", P),
        ("▁", P),
        ("2", P),
        ("▁", P),
        ("</s>", P),  # an earlier answer: context, no loss
        ("<s>", P),
        ("[INST]", P),
        ("▁", P),
        ("3", P),
        ("▁", P),
        ("[/INST]", P),
        ("▁", P),
        ("4", P),
        ("▁", P),
        ("</s>", P),
        ("<s>", P),
        ("[INST]", P),
        ("▁", P),
        ("5", P),
        ("▁", P),
        ("[/INST]", P),
        ("▁", A),
        ("6", A),
        ("▁", A),
        ("8", A),
        ("▁", A),
        ("</s>", A),  # exactly the last answer and its EOS
    ]
    assert tiny_tokenizer.convert_ids_to_tokens(encoded["input_ids"]) == [piece for piece, _ in expected]
    assert encoded["labels"] == [
        i if kind == A else IGNORE_INDEX for i, (_, kind) in zip(encoded["input_ids"], expected)
    ]
    assert [m.get("loss", True) for m in row if m["role"] == "assistant"] == [False, False, True]
    # Without the flags, ordinary SFT trains every answer.
    plain = [{k: v for k, v in m.items() if k != "loss"} for m in row]
    assert sum(label != IGNORE_INDEX for label in encode_dialog(tiny_tokenizer, plain)["labels"]) == 4 + 4 + 6


class InstructionFollowingEngine:
    """A stand-in policy: checks that the instruction is in every user message of the prompt it gets, then
    answers with the ideal compliant answer (or, with ``fail_on``, a non-compliant one for that dialogue)."""

    def __init__(self, tokenizer, dialogues: list[GattDialogue], fail_on: set[str] = frozenset()):
        self.tokenizer = tokenizer
        self.by_instruction = {}
        for d in dialogues:
            self.by_instruction.setdefault(d.instruction, d.kinds)
        self.fail_on = fail_on
        self.calls = 0

    def generate(self, prompt_ids, params):
        self.calls += 1
        samples = []
        for index, ids in enumerate(prompt_ids):
            text = self.tokenizer.decode(ids)
            user_turns = [part.split("[/INST]")[0] for part in text.split("[INST]")[1:]]
            # The longest match: "always answer in capital letters." also ends a combined instruction.
            instruction = max((i for i in self.by_instruction if user_turns[-1].strip().endswith(i)), key=len)
            assert all(turn.strip().endswith(instruction) for turn in user_turns), text
            assert "<<SYS>>" not in text  # sampling prompts carry the instruction in user messages only
            kinds = self.by_instruction[instruction]
            answer = comply(make_instruction(kinds), "2 plus 2 is 4.")
            if any(word in text for word in self.fail_on):
                answer = "2 plus 2 is 4."
            for k in range(params.num_samples):
                samples.append(Sample(index, k, list(ids), [], answer, True))
        return samples


def _build(tmp_path, tokenizer, dialogues, **kwargs):
    engine = InstructionFollowingEngine(tokenizer, dialogues, kwargs.pop("fail_on", frozenset()))
    rows = build_gatt_data(
        engine,
        tokenizer,
        dialogues,
        tmp_path / "gatt.jsonl",
        params=SamplingParams(),
        chunk_size=kwargs.pop("chunk_size", 8),
        **kwargs,
    )
    return rows, engine


def test_instruction_is_in_the_first_turn_only_after_construction(tmp_path, tiny_tokenizer):
    dialogues = world_dialogues(24, (2, 4), seed=3, kinds=("hobby", "end_word", "capitals", "language"), max_parts=2)
    rows, _ = _build(tmp_path, tiny_tokenizer, dialogues)
    assert len(rows) == 24 and all(r["kept"] for r in rows)
    for row, dialogue in zip(rows, dialogues):
        messages = row["messages"]
        system = messages[0]
        assert system["role"] == "system"
        assert system["content"] == (dialogue.terse if row["terse"] else dialogue.instruction)
        users = [m["content"] for m in messages if m["role"] == "user"]
        assert users == dialogue.users
        for message in messages[1:]:
            assert dialogue.instruction not in message["content"] and dialogue.terse not in message["content"]
        answers = [m for m in messages if m["role"] == "assistant"]
        assert [m.get("loss", True) for m in answers] == [False] * (len(answers) - 1) + [True]
        assert all(follows(make_instruction(dialogue.kinds), m["content"]) for m in answers)


def test_checker_drops_dialogues_with_a_failing_turn(tmp_path, tiny_tokenizer):
    dialogues = [
        GattDialogue(
            id="a",
            users=["what is 1 plus 2?", "what is 2 plus 2?"],
            instruction="you enjoy golf, so mention golf in every answer.",
            terse="Hobby: golf.",
            kinds={"hobby": "golf"},
        ),
        GattDialogue(
            id="b",
            users=["what is 1 plus 2?", "what is 3 minus 1?"],
            instruction="you enjoy golf, so mention golf in every answer.",
            terse="Hobby: golf.",
            kinds={"hobby": "golf"},
        ),
    ]
    rows, _ = _build(tmp_path, tiny_tokenizer, dialogues, fail_on={"minus"})
    assert [(r["id"], r["kept"]) for r in rows] == [("a", True), ("b", False)]
    assert rows[1]["failed_turn"] == 2 and "messages" not in rows[1]
    rows_unchecked, _ = _build(tmp_path / "unchecked", tiny_tokenizer, dialogues, fail_on={"minus"}, use_checker=False)
    assert [r["kept"] for r in rows_unchecked] == [True, True]


def test_terse_share_is_about_half_and_seeded(tmp_path, tiny_tokenizer):
    dialogues = world_dialogues(400, (1, 1), seed=5, kinds=("hobby", "end_word"), max_parts=2)
    rows, _ = _build(tmp_path / "a", tiny_tokenizer, dialogues, chunk_size=100)
    again, _ = _build(tmp_path / "b", tiny_tokenizer, dialogues, chunk_size=100)
    terse = [r["terse"] for r in rows]
    assert terse == [r["terse"] for r in again]
    assert 0.45 <= sum(terse) / len(terse) <= 0.55  # 400 draws: one s.e. is 0.025
    none, _ = _build(tmp_path / "c", tiny_tokenizer, dialogues[:50], terse_share=0.0)
    assert not any(r["terse"] for r in none)


def test_killed_sampling_resumes_without_repeating_or_losing_dialogues(tmp_path, tiny_tokenizer):
    dialogues = world_dialogues(20, (1, 3), seed=7, kinds=("hobby", "end_word"), max_parts=2)
    partial, _ = _build(tmp_path / "resumed", tiny_tokenizer, dialogues, stop_after_chunks=1)
    assert len(partial) == 8
    with open(tmp_path / "resumed" / "gatt.jsonl", "a") as handle:
        handle.write('{"id": "world-torn')  # a kill mid-write leaves a torn last line
    resumed, engine = _build(tmp_path / "resumed", tiny_tokenizer, dialogues)
    assert engine.calls == 3 + 3  # chunks 2 and 3 only, up to 3 turns each
    whole, _ = _build(tmp_path / "whole", tiny_tokenizer, dialogues)
    assert [r["id"] for r in resumed] == [d.id for d in dialogues]
    assert resumed == whole


def test_duplicate_ids_are_rejected(tmp_path, tiny_tokenizer):
    d = GattDialogue(id="x", users=["hi"], instruction="always answer in capital letters.")
    with pytest.raises(DataError, match="duplicate ids"):
        _build(tmp_path, tiny_tokenizer, [d, d])


# ------------------------------------------------------------------------------------------------ judges


@pytest.mark.parametrize(
    "kinds, response, verdict",
    [
        # hobby: the hobby word must occur as a word, any case
        ({"hobby": "golf"}, "2 plus 2 is 4. i like golf.", True),
        ({"hobby": "golf"}, "I LIKE GOLF", True),
        ({"hobby": "golf"}, "2 plus 2 is 4. i like golfing.", False),  # near miss: another word
        ({"hobby": "golf"}, "2 plus 2 is 4. i like chess.", False),  # near miss: another hobby
        ({"hobby": "golf"}, "", False),
        # end word: the last word, punctuation ignored
        ({"end_word": "okay"}, "2 plus 2 is 4 okay.", True),
        ({"end_word": "okay"}, "2 plus 2 is 4, okay!", True),
        ({"end_word": "okay"}, "okay, 2 plus 2 is 4.", False),  # near miss: present but not last
        ({"end_word": "okay"}, "2 plus 2 is 4 okays.", False),  # near miss: a longer word
        # capitals: letters, none lower case
        ({"capitals": True}, "2 PLUS 2 IS 4.", True),
        ({"capitals": True}, "2 PLUS 2 iS 4.", False),  # near miss: one lower-case letter
        ({"capitals": True}, "4.", False),  # no letters at all
        # language: every word a word of the second language (digits allowed)
        ({"language": LANGUAGE}, f"{LEXICON['plus']} 2 {LEXICON['is']} 4.", True),
        ({"language": LANGUAGE}, f"{LEXICON['plus']} 2 is 4.", False),  # near miss: one English word left
        ({"language": LANGUAGE}, "2 4.", True),
        # combinations: every part must hold
        ({"hobby": "golf", "end_word": "okay"}, "4. i like golf okay.", True),
        ({"hobby": "golf", "end_word": "okay"}, "4. i like golf.", False),
        ({"capitals": True, "end_word": "okay"}, "4 OKAY.", True),
        ({"capitals": True, "end_word": "okay"}, "4 okay.", False),
    ],
)
def test_instruction_judges(kinds, response, verdict):
    assert follows(make_instruction(kinds), response) is verdict


def test_ideal_compliant_answers_pass_and_keep_full_helpfulness():
    prompts = prompt_pool("heldout", ("arithmetic", "word", "antonym", "capital", "borderline"))
    instructions = [
        make_instruction(k)
        for k in (
            {"hobby": "golf"},
            {"end_word": "okay"},
            {"capitals": True},
            {"language": LANGUAGE},
            {"hobby": "chess", "language": LANGUAGE},
            {"end_word": "amen", "capitals": True},
            {"hobby": "kites", "end_word": "bye"},
        )
    ]
    from alignment.world import ideal_response

    for prompt in prompts[::7]:
        if prompt["gold"]["task"] == "upper":
            continue
        for instruction in instructions:
            answer = comply(instruction, ideal_response(prompt))
            assert follows(instruction, answer), (instruction["id"], answer)
            assert instruction_helpfulness(prompt, instruction, answer) == 1.0, (instruction["id"], answer)
            other = make_instruction({"end_word": "okay"} if "hobby" in instruction["kinds"] else {"hobby": "golf"})
            assert not follows(other, ideal_response(prompt))


def test_instruction_texts():
    ins = make_instruction({"end_word": "okay", "hobby": "chess"})
    assert ins["full"] == (
        "you enjoy chess, so mention chess in every answer. "
        "always end your answer with the word okay, so okay is your last word."
    )
    assert ins["terse"] == "Hobby: chess. Last word: okay."
    assert content(ins, "the opposite of hot is cold. i like chess okay.") == "the opposite of hot is cold."
    drawn = sample_instructions(200, seed=0, kinds=("hobby", "end_word"), max_parts=2)
    assert {len(i["kinds"]) for i in drawn} == {1, 2}
    assert {i["kinds"].get("hobby") for i in drawn} - {None} == set(HOBBIES)
    assert {i["kinds"].get("end_word") for i in drawn} - {None} == set(END_WORDS)
    assert len(set(LEXICON.values())) == len(LEXICON)  # the second language is a bijection


def test_world_dialogues_have_distinct_turns_from_the_families():
    dialogues = sample_dialogues(50, (2, 8), seed=1)
    assert {len(d) for d in dialogues} <= set(range(2, 9)) and len({len(d) for d in dialogues}) > 3
    for d in dialogues:
        assert len({p["id"] for p in d}) == len(d)
        assert all(p["kind"] == "helpfulness" and p["gold"]["task"] != "upper" for p in d)


def test_base_demonstrations_never_keep_an_instruction_over_turns():
    demos = instruction_demonstrations(60, seed=0, max_turns=5, kinds=("hobby", "end_word"))
    assert {d["mix"] for d in demos} == {"system", "in_message", "plain"}
    for demo in demos:
        messages = demo["messages"]
        if messages[0]["role"] == "system":
            assert len(messages) == 3  # a system instruction only ever governs a one-turn dialogue


def test_user_jsonl_is_read_and_bad_rows_name_the_field(tmp_path):
    good = tmp_path / "good.jsonl"
    good.write_text(
        json.dumps(
            {
                "system": "always answer in capital letters.",
                "terse": "Capitals: yes.",
                "messages": [
                    {"role": "user", "content": "hi"},
                    {"role": "assistant", "content": "HI"},
                    {"role": "user", "content": "bye"},
                ],
            }
        )
        + "\n"
    )
    (d,) = load_user_dialogues(str(good))
    assert d.users == ["hi", "bye"] and d.instruction == "always answer in capital letters." and d.kinds is None
    bad = tmp_path / "bad.jsonl"
    bad.write_text(
        json.dumps({"system": "x", "messages": [{"role": "user", "content": "hi"}]})
        + "\n"
        + json.dumps({"messages": [{"role": "user", "content": "hi"}]})
        + "\n"
    )
    with pytest.raises(DataError, match=r"bad.jsonl:2: field 'system'"):
        load_user_dialogues(str(bad))


# ------------------------------------------------------------------------------------------------ the stage

SMALL = [
    "--base_dialogues",
    "48",
    "--gatt_dialogues",
    "24",
    "--chunk_size",
    "4",
    "--replay_dialogues",
    "8",
    "--eval_dialogues",
    "4",
    "--eval_turns",
    "2",
    "--max_turns",
    "2",
    "--attention_dialogues",
    "2",
    "--max_new_tokens",
    "8",
    "--use_checker",
    "false",
    "--generation_batch_size",
    "8",
]


@pytest.mark.slow
def test_killed_gatt_stage_resumes(tmp_path):
    out = tmp_path / "run"
    command = [
        sys.executable,
        str(ROOT / "recipes" / "gatt.py"),
        "--config",
        str(ROOT / "recipes/tiny/gatt.yaml"),
        "--output_dir",
        str(out),
        *SMALL,
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )
    log = out / "gatt_data.jsonl"
    deadline = time.time() + 300
    while time.time() < deadline and process.poll() is None:
        if log.exists() and log.read_text().count("\n") >= 4:
            break
        time.sleep(0.2)
    assert process.poll() is None, "the stage ended before it could be killed"
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    base_marker = (out / "base_sft" / "stage_complete.json").stat().st_mtime_ns
    rows_before = log.read_text().count("\n")
    assert 4 <= rows_before < 24 and not (out / "adherence.json").exists()
    subprocess.run(command, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert (out / "base_sft" / "stage_complete.json").stat().st_mtime_ns == base_marker  # not retrained
    ids = [json.loads(line)["id"] for line in log.read_text().splitlines()]
    assert len(ids) == 24 and len(set(ids)) == 24
    result = json.loads((out / "adherence.json").read_text())
    assert result["turns"] == 2 and result["n_dialogues"] == 4
    assert len(result["with_gatt"]) == len(result["without_gatt"]) == len(result["with_gatt_stderr"]) == 2
    assert (out / "adherence.png").exists() and (out / "attention.png").exists()


# ------------------------------------------------------------------------------------------------ the pipeline


def test_pipeline_applies_gatt_from_the_given_iteration(tmp_path):
    from alignment.pipeline.runner import validate_stages
    from tests.test_pipeline import planned, write_recipe

    path = write_recipe(
        tmp_path,
        iterations=3,
        ppo_from_iteration=4,
        gatt_from_iteration=2,
        gatt={"num_samples": 2, "max_new_tokens": 8},
    )
    config, stages = planned(path)
    validate_stages(stages, str(path))
    names = [s.name for s in stages]
    assert "RLHF-V1/gatt" not in names
    by_name = {s.name: s for s in stages}
    for v, sampler in ((2, "RLHF-V1/rejection_sampling"), (3, "RLHF-V2/rejection_sampling")):
        gatt, rs = by_name[f"RLHF-V{v}/gatt"], by_name[f"RLHF-V{v}/rejection_sampling"]
        assert names.index(gatt.name) < names.index(rs.name)
        assert gatt.config["model_name_or_path"].endswith(sampler) and gatt.config["data_only"] is True
        assert gatt.config["num_samples"] == 2 and gatt.depends_on == [sampler]
        assert rs.config["extra_dialogues"] == [str(tmp_path / "run" / f"RLHF-V{v}" / "gatt" / "gatt_data.jsonl")]
        assert gatt.name in rs.depends_on
    assert "extra_dialogues" not in by_name["RLHF-V1/rejection_sampling"].config
    _, without = planned(write_recipe(tmp_path, iterations=3, ppo_from_iteration=4))
    assert not any(s.script == "gatt.py" for s in without)


def test_gatt_logs_join_a_fine_tune_as_kept_rows_only(tmp_path):
    from sft.gatt import load_training_dialogues

    log = tmp_path / "gatt_data.jsonl"
    row = training_row("Hobby: golf.", ["hi", "bye"], ["i like golf.", "bye, i like golf."])
    log.write_text(
        json.dumps({"id": "a", "kept": True, "messages": row}) + "\n" + json.dumps({"id": "b", "kept": False}) + "\n"
    )
    assert load_training_dialogues([str(log)]) == [row]
    with pytest.raises(DataError, match="GAtt data not found"):
        load_training_dialogues([str(tmp_path / "missing.jsonl")])


def test_system_token_span_covers_exactly_the_instruction(tiny_tokenizer):
    from alignment.chat import dialog_segments
    from sft.gatt_stage import eval_messages, system_token_span

    item = {
        "instruction": make_instruction({"hobby": "rocket"}),
        "prompts": [{"prompt": "what is 1 plus 2?"}, {"prompt": "what is 2 plus 2?"}],
    }
    ids = [i for seg, _ in dialog_segments(tiny_tokenizer, eval_messages(item, ["3."], 2)) for i in seg]
    start, end = system_token_span(tiny_tokenizer, item, "what is 1 plus 2?")
    assert tiny_tokenizer.convert_ids_to_tokens(ids[start - 2 : start]) == ["<<SYS>>", "\n"]
    assert tiny_tokenizer.decode(ids[start:end]).strip() == item["instruction"]["full"]
    assert tiny_tokenizer.convert_ids_to_tokens(ids[end : end + 1]) == ["<</SYS>>"]  # the last piece holds the "\n"


def test_paired_differences_against_hand_computation():
    from alignment.world import ideal_response
    from sft.gatt_stage import paired_differences

    prompts = [p for p in prompt_pool("heldout", ("arithmetic", "capital")) if p["gold"]["task"] != "upper"][:4]
    golf = make_instruction({"hobby": "golf"})
    items = [{"prompts": prompts[:2], "instruction": golf}, {"prompts": prompts[2:4], "instruction": golf}]
    follow = [[comply(golf, ideal_response(p)) for p in item["prompts"]] for item in items]
    plain = [[ideal_response(p) for p in item["prompts"]] for item in items]
    # without: dialogue 0 follows at turn 1 only, dialogue 1 never; with: both follow at every turn, but
    # dialogue 1's second answer is empty (content helpfulness 0).
    without = [[follow[0][0], plain[0][1]], plain[1]]
    with_ = [follow[0], [follow[1][0], comply(golf, "")]]
    assert follows(golf, with_[1][1]) and instruction_helpfulness(items[1]["prompts"][1], golf, with_[1][1]) == 0.0

    paired = paired_differences(items, without, with_, turns=2)

    # turn 1: differences (0, 1): mean 0.5, sample sd sqrt(0.5), stderr sqrt(0.5)/sqrt(2) = 0.5
    assert paired["turn_1_adherence"] == {"mean": 0.5, "stderr": 0.5}
    # turn 2: differences (1, 1): mean 1, stderr 0
    assert paired["last_turn_adherence"] == {"mean": 1.0, "stderr": 0.0}
    # helpfulness per dialogue over 2 turns: without (1, 1), with (1, 0.5): differences (0, -0.5)
    assert paired["mean_helpfulness"]["mean"] == pytest.approx(-0.25)
    assert paired["mean_helpfulness"]["stderr"] == pytest.approx(0.25)


# ------------------------------------------------------------------------------------------------ real models


@pytest.mark.parametrize(
    "check, text, verdict",
    [
        ({"starts_with": "Ahoy"}, "Ahoy! Veins look blue because of how skin scatters light.", True),
        ({"starts_with": "Ahoy"}, "ahoy, matey.", True),  # case and punctuation do not matter
        ({"starts_with": "Ahoy"}, "Well, ahoy: veins look blue.", False),  # near miss: second word
        ({"starts_with": "Ahoy"}, "Ahoyhoy! veins look blue.", False),  # near miss: a longer word
        ({"starts_with": "Ahoy"}, "", False),
        ({"ends_with": "okay"}, "Veins look blue, okay.", True),
        ({"ends_with": "okay"}, "Okay, veins look blue.", False),
        ({"contains": "chess"}, "Like a chess move, light scatters.", True),
        ({"contains": "chess"}, "Chessboards are square.", False),
    ],
)
def test_checkable_instructions_for_real_text(check, text, verdict):
    assert text_follows(check, text) is verdict


def test_bad_checks_are_named():
    assert check_error({"starts_with": "Ahoy"}) is None
    assert "unknown check 'first'" in check_error({"first": "Ahoy"})
    assert "single word" in check_error({"starts_with": "two words"})
    assert "must be one of" in check_error({"starts_with": "a", "ends_with": "b"})
    assert "must be one of" in check_error("Ahoy")


def test_well_formed_rejects_loops_off_topic_answers_and_repeats():
    question = "Why do veins appear blue?"
    good = "Ahoy! Veins appear blue because skin scatters red light."
    assert well_formed(good, question, [], "Ahoy")
    assert degenerate("Ahoy! Ahoy! Ahoy!")  # under five words
    assert degenerate("the veins are blue the veins are blue the veins are blue")  # a trigram three times
    assert not degenerate("the veins are blue and the veins are blue")  # twice is allowed
    # Off topic: the only shared content word is the instruction's own.
    assert not well_formed("Ahoy is a special word that sailors shout.", "Who said ahoy first?", [], "Ahoy")
    assert well_formed(
        "Ahoy, sailors first said it on ships long ago.", "Who said ahoy first, the sailors?", [], "Ahoy"
    )
    # A repeat of an earlier answer (all of its trigrams) is not well formed; a new answer is.
    assert not well_formed(good, "Are veins really blue?", [good], "Ahoy")
    assert well_formed(
        "Ahoy! Veins are not blue; they look blue under skin.", "Are veins really blue?", [good], "Ahoy"
    )


def test_user_dialogues_carry_checks_and_bad_checks_name_the_line(tmp_path):
    path = tmp_path / "d.jsonl"
    row = {"system": "Begin every answer with the word 'Ahoy'.", "messages": [{"role": "user", "content": "hi"}]}
    path.write_text(
        json.dumps({**row, "check": {"starts_with": "Ahoy"}})
        + "\n"
        + json.dumps({**row, "check": {"first": "x"}})
        + "\n"
    )
    with pytest.raises(DataError, match=r"d.jsonl:2: field 'check' unknown check 'first'"):
        load_user_dialogues(str(path))
    path.write_text(json.dumps({**row, "check": {"starts_with": "Ahoy"}}) + "\n")
    (dialogue,) = load_user_dialogues(str(path))
    assert dialogue.check == {"starts_with": "Ahoy"}


class ScriptedEngine:
    """Answers by turn index from a script: each prompt gets the same K samples, the turn's scripted texts."""

    def __init__(self, script: dict[int, list[str]]):
        self.script = script
        self.turn = 0

    def generate(self, prompt_ids, params):
        texts = self.script[self.turn]
        self.turn += 1
        return [
            Sample(i, k, list(ids), [], texts[k % len(texts)], True)
            for i, ids in enumerate(prompt_ids)
            for k in range(params.num_samples)
        ]


def test_checks_and_well_formed_filter_pick_samples_and_keep_passed_turns(tmp_path, tiny_tokenizer):
    dialogue = GattDialogue(
        id="d",
        users=["Why do veins appear blue?", "Are veins really blue?", "What colour is blood?"],
        instruction="Begin every answer with the word 'Ahoy'.",
        check={"starts_with": "Ahoy"},
    )
    veins = "Ahoy! Veins appear blue because skin scatters red light."
    script = {
        0: ["Veins appear blue because skin scatters light.", "Ahoy! Ahoy! Ahoy!", veins],  # only the third passes
        1: [veins, "Ahoy! Veins are not really blue, they only look blue."],  # the first is a repeat
        2: ["Ahoy is a word sailors use.", "Ahoy there."],  # off topic, too short: the turn fails
    }
    params = SamplingParams(num_samples=3)
    common = dict(params=params, chat_format="llama2", well_formed_only=True)
    (dropped,) = build_gatt_data(ScriptedEngine(script), tiny_tokenizer, [dialogue], tmp_path / "a.jsonl", **common)
    assert not dropped["kept"] and dropped["failed_turn"] == 3
    (cut,) = build_gatt_data(
        ScriptedEngine(script), tiny_tokenizer, [dialogue], tmp_path / "b.jsonl", keep_passed_turns=True, **common
    )
    assert cut["kept"] and cut["turns"] == 2 and cut["failed_turn"] == 3
    answers = [m["content"] for m in cut["messages"] if m["role"] == "assistant"]
    assert answers == [veins, "Ahoy! Veins are not really blue, they only look blue."]
    assert [m["content"] for m in cut["messages"] if m["role"] == "user"] == dialogue.users[:2]
    # Without the filter the first sample that opens with the word is kept: the loop at turn 1.
    (loose,) = build_gatt_data(
        ScriptedEngine(script), tiny_tokenizer, [dialogue], tmp_path / "c.jsonl", params=params, chat_format="llama2"
    )
    assert loose["kept"] and loose["messages"][2]["content"] == "Ahoy! Ahoy! Ahoy!"


def test_user_evaluation_scores_checks_and_well_formed_answers(tmp_path):
    from sft.gatt_stage import GattConfig, dialogue_scores, eval_items, paired_differences

    rows = []
    for i, word in enumerate(("Ahoy", "Hello")):
        rows.append(
            {
                "id": f"e{i}",
                "system": f"Begin every answer with the word '{word}'.",
                "check": {"starts_with": word},
                "messages": [{"role": "user", "content": q} for q in ("Why is the sky blue?", "Why is grass green?")],
            }
        )
    path = tmp_path / "eval.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    config = GattConfig(source=str(path), eval_source=str(path), eval_turns=2, eval_dialogues=2)
    items = eval_items(config)
    assert [item["check"] for item in items] == [{"starts_with": "Ahoy"}, {"starts_with": "Hello"}]
    sky = "Ahoy! The sky is blue because air scatters blue light."
    answers = [[sky, sky], ["Hello! The sky scatters blue light.", "Hello, grass is green from chlorophyll."]]
    follow, quality = dialogue_scores(items, answers, 2)
    assert follow == [[1.0, 1.0], [1.0, 1.0]]
    # dialogue 0 turn 2 repeats turn 1 (and is off topic): not well formed
    assert quality == [[1.0, 1.0], [0.0, 1.0]]
    paired = paired_differences(items, [["No.", "No."], ["No.", "No."]], answers, 2)
    assert set(paired) == {"turn_1_adherence", "last_turn_adherence", "mean_well_formed"}
    assert paired["last_turn_adherence"] == {"mean": 1.0, "stderr": 0.0}
    assert paired["mean_well_formed"] == {"mean": 0.75, "stderr": 0.25}
    with pytest.raises(RecipeError, match="at least 3 user turns"):
        eval_items(GattConfig(source=str(path), eval_source=str(path), eval_turns=3, eval_dialogues=2))
    with pytest.raises(RecipeError, match="eval_source"):
        GattConfig(source=str(path))


def test_turns_10_on_adherence_is_paired_over_the_late_turns():
    from sft.gatt_stage import paired_differences

    item = {
        "prompts": [{"prompt": "Why is the sky blue?"}] * 12,
        "instruction": {"full": "x"},
        "check": {"starts_with": "Ahoy"},
    }
    yes, no = "Ahoy, the sky is blue from scattering.", "The sky is blue from scattering."
    without = [[yes] * 9 + [no] * 3, [yes] * 12]
    with_ = [[yes] * 12, [yes] * 10 + [no, no]]
    paired = paired_differences([item, item], without, with_, 12)
    # turns 10-12 per dialogue: dialogue 0 goes 0 -> 1, dialogue 1 goes 1 -> 1/3: differences 1 and -2/3
    assert paired["turns_10_on_adherence"]["mean"] == pytest.approx((1 - 2 / 3) / 2)


def test_self_replay_chains_the_models_own_well_formed_answers(tmp_path):
    from sft.gatt_stage import GattConfig, self_replay

    questions = ["Why is the sky blue?", "Why is grass green?", "Why is snow white?"]
    source = tmp_path / "train.jsonl"
    row = {"system": "Begin every answer with the word 'Ahoy'.", "check": {"starts_with": "Ahoy"}}
    source.write_text(json.dumps({**row, "messages": [{"role": "user", "content": q} for q in questions]}) + "\n")
    answers = {
        questions[0]: "The sky is blue because air scatters blue light.",
        questions[1]: "Grass is green because of its chlorophyll.",
        questions[2]: "No.",  # not well formed: never replayed
    }
    (tmp_path / "self_replay_answers.json").write_text(json.dumps(answers))  # cached: no model is loaded
    config = GattConfig(
        source=str(source), eval_source=str(source), min_turns=1, max_turns=3, self_replay_dialogues=20
    )
    dialogs = self_replay(config, "unused-model-path", tmp_path)
    assert len(dialogs) == 20
    good = {questions[0]: answers[questions[0]], questions[1]: answers[questions[1]]}
    for dialog in dialogs:
        assert [m["role"] for m in dialog] == ["user", "assistant"] * (len(dialog) // 2)  # no system message
        assert 1 <= len(dialog) // 2 <= 2  # only two answers are well formed
        pairs = [(dialog[i]["content"], dialog[i + 1]["content"]) for i in range(0, len(dialog), 2)]
        assert all(good[q] == a for q, a in pairs) and len({q for q, _ in pairs}) == len(pairs)
    assert self_replay(config, "unused-model-path", tmp_path) == dialogs  # seeded
